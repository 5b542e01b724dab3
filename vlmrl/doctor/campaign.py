"""Cases, outcomes and the tally of the reliability campaign.

A case is a function ``fn(work: Path) -> Result`` that does one bad thing in its own
scratch directory ``work`` and checks what the project did about it. It returns:

- ``REJECTED``: refused with a clear reason (naming the file / row / field / key) and
  nothing lost;
- ``HANDLED``: accepted and done right (e.g. a bad row counted and reported while the
  rest of the build goes on, a resumed run that ends exactly where it should);
- ``CRASHED``: an unexpected exception or traceback (target 0);
- ``SILENT``: a wrong result or data loss that nothing reported (target 0).

Any exception a case lets escape counts as ``CRASHED``; a case decides everything else
itself. Kill cases also say how many were tried, how many outputs looked complete but
were not (``corrupt``) and how much work a kill cost (``lost_steps``).
"""

from __future__ import annotations

import enum
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Outcome(enum.StrEnum):
    REJECTED = "rejected"
    HANDLED = "handled"
    CRASHED = "crashed"
    SILENT = "silent"

    @property
    def good(self) -> bool:
        return self in (Outcome.REJECTED, Outcome.HANDLED)


@dataclass
class Result:
    """What one case observed. ``detail`` is the message or the evidence, for the report."""

    outcome: Outcome
    detail: str = ""
    kills: int = 0
    corrupt: int = 0
    lost_steps: list[int] = field(default_factory=list)
    save_interval: int | None = None

    @classmethod
    def rejected(cls, detail: str, **kw: Any) -> Result:
        return cls(Outcome.REJECTED, detail, **kw)

    @classmethod
    def handled(cls, detail: str = "", **kw: Any) -> Result:
        return cls(Outcome.HANDLED, detail, **kw)

    @classmethod
    def silent(cls, detail: str, **kw: Any) -> Result:
        return cls(Outcome.SILENT, detail, **kw)

    @classmethod
    def crashed(cls, detail: str, **kw: Any) -> Result:
        return cls(Outcome.CRASHED, detail, **kw)


@dataclass(frozen=True)
class Case:
    """One campaign case: ``area`` groups the report (outputs, rows, media, ...)."""

    name: str
    area: str
    fn: Callable[[Path], Result]
    slow: bool = False  # trains or kills real processes; the CI suite runs fewer of these


@dataclass
class CaseReport:
    case: Case
    result: Result
    seconds: float


def expect_rejection(action: Callable[[], Any], *must_name: str,
                     errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> Result:
    """Run ``action``; a clean error of ``errors`` whose message names every ``must_name``
    is ``REJECTED``. An error that names none of them is ``CRASHED`` (the user cannot tell
    what to fix); no error at all is ``SILENT``; any other exception is ``CRASHED``."""
    try:
        value = action()
    except errors as exc:
        msg = str(exc)
        missing = [m for m in must_name if m not in msg]
        if missing:
            return Result.crashed(f"{type(exc).__name__} does not name {missing}: {msg}")
        return Result.rejected(f"{type(exc).__name__}: {msg}")
    return Result.silent(f"accepted without complaint (returned {value!r:.200})")


def run_case(case: Case, root: Path) -> CaseReport:
    work = Path(tempfile.mkdtemp(prefix=f"{case.name[:40]}-", dir=root))
    started = time.perf_counter()
    try:
        result = case.fn(work)
    except Exception as exc:  # noqa: BLE001 - an escaped exception is the CRASHED outcome
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        result = Result.crashed(f"uncaught {tb}")
    return CaseReport(case, result, time.perf_counter() - started)


@dataclass
class Tally:
    reports: list[CaseReport]

    @property
    def counts(self) -> Counter[str]:
        return Counter(r.result.outcome.value for r in self.reports)

    @property
    def kills(self) -> int:
        return sum(r.result.kills for r in self.reports)

    @property
    def corrupt(self) -> int:
        return sum(r.result.corrupt for r in self.reports)

    @property
    def lost_steps(self) -> list[int]:
        return [s for r in self.reports for s in r.result.lost_steps]

    @property
    def lost_beyond_interval(self) -> int:
        """Kills that lost more than one save interval of work (target 0)."""
        return sum(
            1 for r in self.reports if r.result.save_interval is not None
            for s in r.result.lost_steps if s > r.result.save_interval
        )

    @property
    def ok(self) -> bool:
        c = self.counts
        return (c[Outcome.CRASHED.value] == 0 and c[Outcome.SILENT.value] == 0
                and self.corrupt == 0 and self.lost_beyond_interval == 0)

    def summary(self) -> dict[str, Any]:
        c = self.counts
        return {
            "cases": len(self.reports),
            **{o.value: c[o.value] for o in Outcome},
            "kills": self.kills,
            "corrupt_outputs": self.corrupt,
            "max_lost_steps": max(self.lost_steps, default=0),
            "kills_losing_more_than_one_save_interval": self.lost_beyond_interval,
            "ok": self.ok,
        }

    def table(self) -> str:
        """A markdown table per area, then the totals."""
        areas: dict[str, Counter[str]] = {}
        for r in self.reports:
            areas.setdefault(r.case.area, Counter())[r.result.outcome.value] += 1
        head = "| area | cases | " + " | ".join(o.value for o in Outcome) + " |"
        lines = [head, "|" + "---|" * (len(Outcome) + 2)]
        for area, c in areas.items():
            lines.append(f"| {area} | {sum(c.values())} | "
                         + " | ".join(str(c[o.value]) for o in Outcome) + " |")
        s = self.summary()
        lines.append(f"| **all** | {s['cases']} | "
                     + " | ".join(str(s[o.value]) for o in Outcome) + " |")
        lines.append("")
        lines.append(f"kills tried {s['kills']}, corrupt outputs {s['corrupt_outputs']}, "
                     f"most steps lost to one kill {s['max_lost_steps']} "
                     f"(kills losing more than one save interval: "
                     f"{s['kills_losing_more_than_one_save_interval']})")
        return "\n".join(lines)


def run_campaign(cases: Iterable[Case], root: Path,
                 on_report: Callable[[CaseReport], None] | None = None) -> Tally:
    root.mkdir(parents=True, exist_ok=True)
    reports = []
    for case in cases:
        report = run_case(case, root)
        reports.append(report)
        if on_report:
            on_report(report)
    return Tally(reports)

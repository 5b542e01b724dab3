"""`vlmrl doctor`: every campaign case, one line each as it runs, then the tally.

    vlmrl doctor                 # the full campaign (about 6 min on 2 cores)
    vlmrl doctor --quick         # fewer kills, as the test suite runs it
    vlmrl doctor --area kills --json tally.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from vlmrl.doctor.campaign import Case, CaseReport, Tally, run_campaign

# One module per area of the campaign, each with CASES (kills are built by count instead).
AREAS = ("outputs", "data", "validation", "lineage", "rewards")


def all_cases(quick: bool = False, areas: tuple[str, ...] | None = None, kills: int | None = None,
              seed: int = 0) -> list[Case]:
    """The campaign's cases; ``quick`` keeps one kill per kind and no other slow case."""
    from vlmrl.doctor.cases_kills import kill_cases

    wanted = areas or (*AREAS, "kills")
    cases: list[Case] = []
    for area in AREAS:
        if area in wanted:
            module = importlib.import_module(f"vlmrl.doctor.cases_{area}")
            cases += [c for c in module.CASES if not (quick and c.slow)]
    if "kills" in wanted:
        if quick:
            cases += kill_cases(extract=0, sft=0, rl=1, at_write=("extract", "rl"), seed=seed)
        else:
            n = 3 if kills is None else kills
            cases += kill_cases(extract=n, sft=n, rl=n, seed=seed)
    return cases


def _line(report: CaseReport) -> str:
    r = report.result
    return f"{r.outcome.value:>8}  {report.seconds:6.1f}s  [{report.case.area}] {report.case.name}: {r.detail[:160]}"


def main_doctor(args: argparse.Namespace) -> int:
    cases = all_cases(quick=args.quick, areas=tuple(args.area) if args.area else None,
                      kills=args.kills, seed=args.seed)
    root = Path(tempfile.mkdtemp(prefix="vlmrl-doctor-"))
    print(f"vlmrl doctor: {len(cases)} cases in {root}", flush=True)
    try:
        tally = run_campaign(cases, root, on_report=lambda r: print(_line(r), flush=True))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(tally.table())
    bad = [r for r in tally.reports if not r.result.outcome.good]
    for r in bad:
        print(f"\n{r.result.outcome.value.upper()}: [{r.case.area}] {r.case.name}\n  {r.result.detail}")
    if args.json:
        Path(args.json).write_text(json.dumps(tally_json(tally), indent=1) + "\n", encoding="utf-8")
    return 0 if tally.ok else 1


def tally_json(tally: Tally) -> dict:
    return {**tally.summary(), "cases_detail": [
        {"name": r.case.name, "area": r.case.area, "outcome": r.result.outcome.value,
         "detail": r.result.detail, "seconds": round(r.seconds, 2), "kills": r.result.kills,
         "corrupt": r.result.corrupt, "lost_steps": r.result.lost_steps}
        for r in tally.reports]}


def add_doctor_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="run the reliability campaign (bad inputs, kills, tampering) "
                                      "and print the tally")
    p.add_argument("--quick", action="store_true", help="one kill per kind, no other slow case")
    p.add_argument("--kills", type=int, default=None, help="kills per kind (default 3)")
    p.add_argument("--area", action="append", choices=(*AREAS, "kills"),
                   help="only these areas (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kill times")
    p.add_argument("--json", metavar="FILE", help="write the tally and every case's outcome here")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.set_defaults(func=main_doctor)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="vlmrl-doctor")
    add_doctor_command(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["doctor", *sys.argv[1:]])
    raise SystemExit(ns.func(ns))

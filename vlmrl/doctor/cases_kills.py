"""SIGKILL at random points of extraction, SFT, RL and checkpoint writing, then a rerun.

Each kill case runs the real ``vlmrl`` command in a subprocess, kills it with SIGKILL (no
clean-up handler runs) at a random moment, or the moment a checkpoint's staging directory
appears, and then checks what a user would find:

- the output is absent, or complete and equal to an uninterrupted run's (otherwise it is
  counted ``corrupt``: it looks complete but is not);
- the rerun (resume for training) finishes: a dataset byte-equal to the reference, a
  checkpoint at exactly ``max_steps`` whose training log covers every step once and whose
  lineage audit passes;
- the work lost to the kill (steps done before the kill minus the step resumed from) is
  at most one save interval.

The stage inputs (synthetic data, frames, a tiny base checkpoint: the parent of both the
SFT and the RL runs here) are built once per campaign root and shared by the kill cases.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmrl.doctor.campaign import Case, Result

SAVE_STEPS = 2
MAX_STEPS = 6
# The tiny-cpu recipe cut to seconds: no curriculum, 6 steps, a checkpoint every 2.
SHORT = ["--set", "frames.train.max_frames=4", "--set", "sft.curriculum=[]",
         "--set", "sft.per_device_train_batch_size=4", "--set", "sft.logging_steps=1",
         "--set", f"sft.max_steps={MAX_STEPS}", "--set", f"sft.save_steps={SAVE_STEPS}",
         "--set", "rl.per_device_train_batch_size=8", "--set", "rl.max_completion_length=8",
         "--set", "rl.logging_steps=1", "--set", f"rl.max_steps={MAX_STEPS}",
         "--set", f"rl.save_steps={SAVE_STEPS}"]
STEP_LINE = re.compile(r"\{'loss'")  # the trainer prints one dict per logged step


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlmrl.cli", *args]


def _run(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=timeout)


@dataclass
class Killed:
    returncode: int | None
    stdout: str
    seconds: float

    @property
    def was_killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def _run_and_kill(args: list[str], when: Callable[[float, str], bool], log: Path,
                  timeout: float = 900) -> Killed:
    """Start ``args`` (output to ``log``); SIGKILL it as soon as ``when(elapsed_s, output)``
    is true (checked every 10 ms)."""
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(args, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None and time.monotonic() - started < timeout:
            if when(time.monotonic() - started, log.read_text(encoding="utf-8", errors="replace")):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait()
    return Killed(proc.returncode, log.read_text(encoding="utf-8", errors="replace"),
                  time.monotonic() - started)


# --- shared stage inputs ---------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _stage(root: Path) -> dict[str, Any]:
    """Synthetic data, the RL split's frames (timed: the extraction reference) and a tiny
    base checkpoint (the parent of both SFT and RL here), built once per campaign root."""
    from vlmrl.data.synth import SynthSizes, generate

    stage = root / "kill-stage"
    if not (stage / "done.json").is_file():
        data = stage / "data"
        generate(data, seed=0, sizes=SynthSizes(sft=16, rl=16, bench=4), progress=False)
        started = time.monotonic()
        _frames(stage, "rl")
        info = {"extract_rl_s": time.monotonic() - started}
        proc = _run(_cli("train", "base", "--recipe", "tiny-cpu", *SHORT, "--frames",
                         str(stage / "frames" / "rl"), "--out", str(stage / "base")))
        if proc.returncode != 0:
            raise RuntimeError(f"building the base checkpoint failed: {proc.stderr[-2000:]}")
        (stage / "done.json").write_text(json.dumps(info), encoding="utf-8")
    return {"dir": stage, **json.loads((stage / "done.json").read_text(encoding="utf-8"))}


def _frames(stage: Path, split: str) -> Path:
    """The split's frame dataset in the stage, extracted on first use."""
    out = stage / "frames" / split
    if not out.is_dir():
        data = stage / "data"
        proc = _run(_cli("data", "extract", "--annotations", str(data / f"{split}.json"),
                         "--media-root", str(data), "--out", str(out), "--workers", "1",
                         "--max-frames", "4"))
        if proc.returncode != 0:
            raise RuntimeError(f"extracting the {split} split failed: {proc.stderr[-2000:]}")
    return out


def _root_of(work: Path) -> Path:
    return work.parent  # every case's scratch dir lies in the campaign root


# --- checks ------------------------------------------------------------------------------

def _arrow_hashes(path: Path) -> dict[str, str]:
    from vlmrl.hashing import sha256_file

    return {p.name: sha256_file(p) for p in sorted(path.glob("*.arrow"))}


def _dataset_problem(out: Path, reference: Path) -> str | None:
    """None if ``out`` is a complete dataset equal to ``reference``; else what is wrong."""
    from vlmrl.data.extract import load_frame_dataset

    try:
        ds, manifest = load_frame_dataset(out)
        _, ref_manifest = load_frame_dataset(reference, open_dataset=False)
        n = len(ds)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
        return f"does not open: {type(exc).__name__}: {exc}"
    if manifest["fingerprint"] != ref_manifest["fingerprint"] or n != ref_manifest["counts"]["kept"]:
        return f"differs from the reference ({n} rows, fingerprint {manifest['fingerprint'][:12]})"
    if _arrow_hashes(out) != _arrow_hashes(reference):
        return "its Arrow files differ from the reference's"
    return None


def _checkpoint_problem(out: Path) -> str | None:
    """None if ``out`` is a complete checkpoint at MAX_STEPS with a whole-run log."""
    from vlmrl.lineage import audit, read_manifest

    try:
        metrics = read_manifest(out)["metrics"]
        report = audit(out, check_media=False)
        log = json.loads((out / "train_log.json").read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001
        return f"does not open: {type(exc).__name__}: {exc}"
    if not report.ok:
        return f"lineage audit fails: {report.problems[:3]}"
    if metrics.get("global_step") != MAX_STEPS:
        return f"ends at step {metrics.get('global_step')}, not {MAX_STEPS}"
    steps = [e["step"] for e in log if "loss" in e]
    if steps != list(range(1, MAX_STEPS + 1)):
        return f"its training log has steps {steps}, not 1..{MAX_STEPS} once each"
    return None


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*-*"))


# --- the cases -----------------------------------------------------------------------------

def _kill_with_retries(args: list[str], out: Path, log: Path,
                       attempts: list[tuple[Callable[[float, str], bool], str]]) -> tuple[Killed, str]:
    """Run and kill at each moment in turn until a kill lands before the run ends (a run
    that finished first leaves a complete output of its own, removed before the next try)."""
    for i, (when, where) in enumerate(attempts):
        killed = _run_and_kill(args, when, log)
        if killed.was_killed or i == len(attempts) - 1:
            return killed, where
        shutil.rmtree(out, ignore_errors=True)  # written by this case's own finished run
    raise ValueError("no attempts")


def _fresh_leftovers(out: Path) -> list[str]:
    """Staging / trash next to ``out`` and a trainer work directory that should be gone."""
    from vlmrl.stages.training import work_dir_for

    work_dir = work_dir_for(out)
    return _leftovers(out) + ([work_dir.name] if work_dir.exists() else [])


def _extract_kill(seed: int, at_write: bool = False) -> Callable[[Path], Result]:
    def case(work: Path) -> Result:
        stage = _stage(_root_of(work))
        data, reference = stage["dir"] / "data", stage["dir"] / "frames" / "rl"
        out = work / "frames"
        args = _cli("data", "extract", "--annotations", str(data / "rl.json"), "--media-root",
                    str(data), "--out", str(out), "--workers", "2", "--max-frames", "4")
        rng = random.Random(seed)
        if at_write:  # a random moment (up to 0.5 s) after the staging directory appears
            attempts = [_after_staging(out, rng.uniform(0.0, 0.5) / 2**i) for i in range(3)]
        else:
            first = rng.uniform(0.1, 0.6) * stage["extract_rl_s"]
            attempts = [((lambda t, _out, at=at: t >= at), f"at {at:.1f}s")
                        for at in (first, first / 2, first / 4)]
        killed, where = _kill_with_retries(args, out, work / "extract.log", attempts)
        if not killed.was_killed:
            return Result.handled(f"finished before every kill ({where} last): no kill")
        if out.exists() and (problem := _dataset_problem(out, reference)):
            return Result.silent(f"killed {where} left {out.name} that looks complete: {problem}",
                                 kills=1, corrupt=1)
        done = out.exists()
        rerun = _run([*args, *(["--overwrite"] if done else [])])
        if rerun.returncode != 0:
            return Result.crashed(f"rerun failed: {rerun.stderr.strip()[-500:]}", kills=1)
        if problem := _dataset_problem(out, reference):
            return Result.silent(f"rerun: {problem}", kills=1)
        if stale := _leftovers(out):
            return Result.silent(f"staging left behind after the rerun: {stale}", kills=1)
        return Result.handled(f"killed {where} ({'output complete' if done else 'no output'}); "
                              "the rerun equals the reference", kills=1)
    return case


def _train_kill(kind: str, seed: int, at_write: bool = False) -> Callable[[Path], Result]:
    def case(work: Path) -> Result:
        sdir = _stage(_root_of(work))["dir"]
        parent = ["--base" if kind == "sft" else "--sft", str(sdir / "base")]
        frames = _frames(sdir, kind)
        out = work / kind
        args = _cli("train", kind, "--recipe", "tiny-cpu", *SHORT, *parent,
                    "--frames", str(frames), "--out", str(out))
        if at_write:  # the moment the final checkpoint's staging directory appears
            def writing(_t: float, _out: str) -> bool:
                return any(out.parent.glob(f".{out.name}.staging-*"))
            attempts = [(writing, "while writing the checkpoint")] * 3
        else:  # a random moment after a random number of logged steps; then earlier ones
            rng = random.Random(seed)
            after, delay = rng.randrange(0, MAX_STEPS), rng.uniform(0.0, 0.3)
            attempts = [_after_steps(n, d) for n, d in ((after, delay), (after // 2, 0.0), (0, 0.0))]
        killed, where = _kill_with_retries(args, out, work / f"{kind}.log", attempts)
        if not killed.was_killed:
            return Result.handled(f"finished before every kill ({where} last): no kill")
        done_steps = len(STEP_LINE.findall(killed.stdout))
        if out.exists() and (problem := _checkpoint_problem(out)):
            return Result.silent(f"killed {where} left {out.name} that looks complete: {problem}",
                                 kills=1, corrupt=1)
        if out.exists():  # the kill came after the checkpoint was complete: nothing to redo
            if stale := _fresh_leftovers(out):
                return Result.silent(f"complete, but left behind: {stale}", kills=1)
            return Result.handled(f"killed {where}, after the checkpoint was complete", kills=1,
                                  lost_steps=[0], save_interval=SAVE_STEPS)
        rerun = _run(args)
        if rerun.returncode != 0:
            return Result.crashed(f"resume failed: {rerun.stderr.strip()[-500:]}", kills=1)
        if problem := _checkpoint_problem(out):
            return Result.silent(f"resumed run: {problem}", kills=1)
        if stale := _fresh_leftovers(out):
            return Result.silent(f"resumed run left behind: {stale}", kills=1)
        from vlmrl.lineage import read_manifest

        resumed = read_manifest(out)["metrics"].get("resumed_from_step", 0)
        lost = max(done_steps - resumed, 0)
        return Result.handled(f"killed {where} after {done_steps} steps; resumed from step "
                              f"{resumed}; ends at {MAX_STEPS}", kills=1, lost_steps=[lost],
                              save_interval=SAVE_STEPS)
    return case


def _after_staging(out: Path, delay: float) -> tuple[Callable[[float, str], bool], str]:
    """Kill ``delay`` seconds after ``out``'s staging directory has appeared."""
    seen: list[float] = []

    def when(t: float, _output: str) -> bool:
        if not seen and any(out.parent.glob(f".{out.name}.staging-*")):
            seen.append(t)
        return bool(seen) and t >= seen[0] + delay
    return when, f"{delay:.2f}s into writing the dataset"


def _after_steps(steps: int, delay: float) -> tuple[Callable[[float, str], bool], str]:
    """Kill ``delay`` seconds after the trainer has logged ``steps`` steps."""
    seen: list[float] = []

    def when(t: float, output: str) -> bool:
        if not seen and len(STEP_LINE.findall(output)) >= steps:
            seen.append(t)
        return bool(seen) and t >= seen[0] + delay
    return when, f"{delay:.1f}s after step {steps}"


def kill_cases(extract: int = 3, sft: int = 2, rl: int = 2,
               at_write: tuple[str, ...] = ("extract", "sft", "rl"), seed: int = 0) -> list[Case]:
    """``extract`` / ``sft`` / ``rl`` kills at random moments, plus one kill of each stage in
    ``at_write`` while its output (the dataset, the final checkpoint) is being written."""
    cases = [Case(f"kill extract #{i}", "kills", _extract_kill(seed + i), slow=True)
             for i in range(extract)]
    if "extract" in at_write:
        cases.append(Case("kill extract while writing the dataset", "kills",
                          _extract_kill(seed, at_write=True), slow=True))
    for kind, n in (("sft", sft), ("rl", rl)):
        cases += [Case(f"kill {kind} #{i}", "kills", _train_kill(kind, seed + 100 + i), slow=True)
                  for i in range(n)]
        if kind in at_write:
            cases.append(Case(f"kill {kind} while writing the checkpoint", "kills",
                              _train_kill(kind, seed, at_write=True), slow=True))
    return cases


CASES = kill_cases()

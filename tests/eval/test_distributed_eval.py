"""Evaluation on two processes through the CLI, as a step pod runs it: `vlmrl eval
--recipe-settings` with a recipe whose launch section asks for 2 processes re-runs itself under
`accelerate launch`, each process answers its share of the batches (gloo on CPU), and the one
report equals the single-process report answer for answer.
"""

import json
import socket
import subprocess
import sys

import pytest
import yaml

from vlmrl.eval.report import PREDICTIONS

pytestmark = pytest.mark.slow

LIMIT, BATCH = 12, 4  # 3 batches: process 0 answers batches 0 and 2, process 1 batch 1
# fields that differ between any two runs (timing), or that describe the split itself
RUN_FIELDS = ("created_at", "throughput", "processes", "file_sha256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str], cwd, ok: bool = True) -> subprocess.CompletedProcess:
    extra = f"--main_process_ip 127.0.0.1 --main_process_port {free_port()}"
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                               "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                               "VLMRL_ACCELERATE_ARGS": extra})
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def setup(synth_dir, tmp_path_factory):
    """A recipe file (tiny-cpu, short), the benchmark frame dataset named as the
    benchmark_frames asset names it, and a 2-step SFT checkpoint (SFT: the sampled pass runs)."""
    from vlmrl.data.extract import extract_dataset
    from vlmrl.recipes import load_recipe
    from vlmrl.stages.training import build_base_model, train_sft

    root = tmp_path_factory.mktemp("dist-eval")
    recipe = load_recipe("tiny-cpu", {"sft": {"max_steps": 2, "per_device_train_batch_size": 4,
                                               "curriculum": [], "save_strategy": "no"}})
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe.to_dict()))
    bench = root / "frames" / "bench-synthetic"
    extract_dataset(synth_dir / "bench.json", synth_dir, bench, recipe.frames.eval, workers=1, progress=False)
    sft_frames = root / "frames" / "sft"
    extract_dataset(synth_dir / "sft.json", synth_dir, sft_frames, recipe.frames.train, workers=1, progress=False)
    base = build_base_model(recipe, root / "base", [sft_frames, bench])
    sft = train_sft(recipe, base, sft_frames, root / "sft")
    return {"recipe": recipe_file, "bench": bench, "sft": sft, "root": root}


def eval_args(setup, out, processes: int, checkpoint=None) -> list[str]:
    return ["-m", "vlmrl.cli", "eval", "--checkpoint", str(checkpoint or setup["sft"]),
            "--benchmark", str(setup["bench"]), "--name", "synthetic", "--out", str(out),
            "--recipe", str(setup["recipe"]), "--recipe-settings", "--limit", str(LIMIT),
            "--set", "eval.max_new_tokens=8", "--set", f"eval.batch_size={BATCH}",
            "--set", "launch.accelerate_config=ddp", "--set", f"launch.num_processes={processes}"]


def without_run_fields(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in RUN_FIELDS}


@pytest.fixture(scope="module")
def one_process(setup, tmp_path_factory):
    """The report of the same evaluation in one process (launch.num_processes=1); at the depth
    of a test's tmp_path/x, so that the report's relative references compare equal too."""
    out = tmp_path_factory.mktemp("one-process") / "report"
    proc = run(eval_args(setup, out, 1), out.parent)
    assert "processes:" not in proc.stdout  # one process: no accelerate launch
    return out


def test_two_processes_give_the_one_process_report(setup, one_process, tmp_path):
    one, two = one_process, tmp_path / "two"
    proc2 = run(eval_args(setup, two, 2), tmp_path)
    assert "vlmrl: 2 processes: -m accelerate.commands.launch" in proc2.stdout
    # only the main process prints the report
    assert proc2.stdout.count("# synthetic: sft checkpoint") == 1, proc2.stdout[-2000:]

    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert r1["processes"] == {"world_size": 1, "rows_per_rank": [LIMIT]}
    assert r2["processes"] == {"world_size": 2, "rows_per_rank": [2 * BATCH, LIMIT - 2 * BATCH]}
    assert r1["benchmark"]["name"] == "synthetic" and r1["summary"]["n"] == LIMIT
    assert r1["checkpoint"]["kind"] == "sft" and "sampled" in r1  # stage from the lineage
    assert r1["settings"]["generation"]["max_new_tokens"] == 8
    assert without_run_fields(r2) == without_run_fields(r1)

    p1, p2 = ((d / PREDICTIONS).read_text().splitlines() for d in (one, two))
    assert p1 == p2  # ordered and shuffled answers, in row order
    preds = [json.loads(line) for line in p1]
    ordered = [p["problem_id"] for p in preds if not p["shuffled"]]
    assert len(ordered) == LIMIT and any(p["shuffled"] for p in preds)
    assert len({p["completion"] for p in preds}) > 1  # not one answer everywhere (an empty gather)
    # the sampled answers (seeded per batch) are in the report as a digest, in row order
    assert r2["sampled"]["completions_sha256"] == r1["sampled"]["completions_sha256"]

    # what the main process printed (and sent to Dagster, if one launched it)
    line = json.loads(proc2.stdout.strip().splitlines()[-1])
    assert line["world_size"] == 2 and line["accuracy"] == r1["summary"]["accuracy"]["mean"]


def test_existing_report_is_refused_before_any_work(setup, one_process, tmp_path):
    out = one_process
    before = (out / "report.json").read_bytes()
    missing = tmp_path / "no-such-checkpoint"  # loading it would fail with another error

    # the command refuses before it starts any process
    proc = run(eval_args(setup, out, 2, checkpoint=missing), tmp_path, ok=False)
    assert "already holds a benchmark report" in proc.stderr, proc.stderr[-2000:]
    assert "processes:" not in proc.stdout

    # started by an explicit accelerate launch, every process refuses (none waits for the other)
    from vlmrl.recipes import ACCELERATE_DIR

    launch = ["-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_DIR / "ddp.yaml"),
              "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    proc = run([*launch, *eval_args(setup, out, 2, checkpoint=missing)], tmp_path, ok=False)
    # (counted, not split into lines: the two processes' lines may interleave)
    assert proc.stderr.count("vlmrl: error:") == 2, proc.stderr[-3000:]
    assert proc.stderr.count("already holds a benchmark report") == 2, proc.stderr[-3000:]
    assert (out / "report.json").read_bytes() == before


@pytest.mark.parametrize(("args", "message"), [
    (["--recipe-settings"], "--recipe-settings needs --recipe"),
    (["--set", "eval.batch_size=2"], "--set needs --recipe"),
    (["--recipe", "tiny-cpu", "--recipe-settings", "--temperature", "0"],
     "--temperature: with --recipe-settings the recipe decides: use --set eval.temperature="),
    (["--recipe", "tiny-cpu", "--recipe-settings", "--frames", "4"], "--set frames.eval.max_frames="),
    (["--recipe", "tiny-cpu", "--recipe-settings", "--no-shuffled-control"], "always on"),
])
def test_recipe_mode_refuses_flags_it_would_ignore(args, message, tmp_path, capsys):
    from vlmrl.cli import main

    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--benchmark", str(tmp_path),
                 "--out", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

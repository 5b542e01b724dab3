import json
import subprocess
import sys

from vlmrl.cli import main


def test_importing_vlmrl_does_not_import_dagster():
    code = (
        "import sys, vlmrl, vlmrl.data, vlmrl.data.extract, vlmrl.data.synth, vlmrl.cli, vlmrl.hashing;"
        "import pkgutil, importlib;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(vlmrl.__path__, 'vlmrl.')];"
        "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_synth_then_extract(tmp_path, capsys, fixtures_dir):
    assert main(["data", "synth", "--out", str(tmp_path / "raw"), "--sizes", "sft=4,rl=4,bench=4"]) == 0
    rc = main(["data", "extract", "--annotations", str(tmp_path / "raw" / "rl.json"),
               "--media-root", str(tmp_path / "raw"), "--out", str(tmp_path / "rl"),
               "--max-pixels", "3136", "--workers", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "kept 4/4 rows, rejected 0" in out
    manifest = json.loads((tmp_path / "rl" / "manifest.json").read_text())
    assert manifest["options"]["max_pixels"] == 3136


def test_cli_reject_rate_gate_and_errors(tmp_path, capsys, fixtures_dir):
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps([{"problem_id": "x", "problem": "q", "data_type": "video",
                                "problem_type": "numerical", "solution": "<answer>1</answer>",
                                "path": "missing.mp4"}]))
    args = ["data", "extract", "--annotations", str(ann), "--media-root", str(fixtures_dir),
            "--out", str(tmp_path / "o"), "--workers", "1"]
    assert main([*args, "--max-reject-rate", "0.5"]) == 1
    assert "rejected row 0 (x): path: media file 'missing.mp4' not found" in capsys.readouterr().out
    assert main(["data", "extract", "--annotations", str(ann), "--media-root", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "media root" in capsys.readouterr().err

"""Outputs replace only previous outputs of their own kind, only when asked, never an input."""

import json
import os
import subprocess
import sys

import pytest

from vlmrl.atomic import OutputKind, atomic_directory, check_output, clean_stale, stale_siblings
from vlmrl.cli import main

KIND = OutputKind("test output", "marker.json", keys=("id",), values=(("format", "t/1"),))


def write_output(path, ident="a"):
    with atomic_directory(path, overwrite=path.exists(), kind=KIND) as staging:
        (staging / "data.txt").write_text(ident)
        (staging / "marker.json").write_text(json.dumps({"format": "t/1", "id": ident}))
    return path


def test_replaces_only_its_own_kind_and_only_when_asked(tmp_path):
    out = write_output(tmp_path / "out")
    with pytest.raises(FileExistsError, match="already holds a test output; pass overwrite"), \
            atomic_directory(out, kind=KIND):
        pass
    write_output(out, "b")
    assert (out / "data.txt").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging / trash left

    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    (user / "marker.json").write_text(json.dumps({"format": "other", "id": "x"}))  # wrong kind
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=f"refusing to replace {user}: .*not a test output"), \
                atomic_directory(user, overwrite, kind=KIND):
            pass
    assert (user / "thesis.tex").read_text() == "years of work"

    afile = tmp_path / "file.txt"
    afile.write_text("keep")
    with pytest.raises(FileExistsError, match="file.txt"):
        check_output(afile, KIND, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, KIND) == empty  # nothing to lose


@pytest.mark.parametrize("target, relation", [
    ("media", "is"), ("media/sub/out", "lies inside"), (".", "contains"), ("ann.json", "is"),
])
def test_outputs_never_touch_their_inputs(tmp_path, target, relation):
    (tmp_path / "media").mkdir()
    (tmp_path / "ann.json").write_text("[]")
    protected = [("media root", tmp_path / "media"), ("annotations", tmp_path / "ann.json")]
    out = (tmp_path / target).resolve()
    with pytest.raises(ValueError, match=f"to {out}: it (.*, )?{relation} the "), \
            atomic_directory(out, True, kind=KIND, protected=protected):
        pass
    # inputs untouched
    assert (tmp_path / "media").is_dir() and (tmp_path / "ann.json").read_text() == "[]"


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_and_trash_of_dead_processes_are_cleaned(tmp_path):
    from vlmrl.atomic import HOST_TAG

    out = write_output(tmp_path / "out")
    dead, alive = dead_pid(), os.getpid()
    stale = tmp_path / f".out.staging-p{dead}-h{HOST_TAG}-abc"
    live = tmp_path / f".out.staging-p{alive}-h{HOST_TAG}-def"
    legacy = tmp_path / ".out.staging-k3j2h1"  # an older version: owner unknown
    other = tmp_path / ".outer.staging-p1-hx-zz"  # another target's
    for p in (stale, live, legacy, other):
        (p / "x").mkdir(parents=True)
    removable, unknown = stale_siblings(out)
    assert removable == [stale] and sorted(unknown) == sorted([live, legacy])
    write_output(out, "b")
    assert not stale.exists() and live.exists() and legacy.exists() and other.exists()


def test_a_kill_mid_swap_is_repaired_from_the_trash(tmp_path):
    from vlmrl.atomic import HOST_TAG

    out = write_output(tmp_path / "out")
    trash = tmp_path / f".out.old-p{dead_pid()}-h{HOST_TAG}-abc"
    trash.mkdir()
    os.replace(out, trash / "out")  # killed after moving the old output aside
    assert clean_stale(out) == [trash]
    assert (out / "data.txt").read_text() == "a" and not trash.exists()


def test_a_restored_output_is_decided_on_before_the_build(tmp_path):
    """The restore happens before the decision: a writer without overwrite is refused up
    front, not after it has built its output (which would then be thrown away)."""
    from vlmrl.atomic import HOST_TAG

    out = write_output(tmp_path / "out")
    trash = tmp_path / f".out.old-p{dead_pid()}-h{HOST_TAG}-abc"
    trash.mkdir()
    os.replace(out, trash / "out")
    built = []
    with pytest.raises(FileExistsError, match="already holds"), atomic_directory(out, kind=KIND):
        built.append(True)
    assert not built and (out / "data.txt").read_text() == "a"
    write_output(out, "b")  # with overwrite (write_output passes it), replaced as usual
    assert (out / "data.txt").read_text() == "b"


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from vlmrl.data.synth import SynthSizes, generate

    root = tmp_path_factory.mktemp("small")
    generate(root / "raw", seed=0, sizes=SynthSizes(sft=2, rl=2, bench=2), progress=False)
    return root / "raw"


def extract(raw, out, *extra):
    return main(["data", "extract", "--annotations", str(raw / "bench.json"), "--media-root",
                 str(raw), "--out", str(out), "--workers", "1", "--max-frames", "4", *extra])


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("target, says", [
    (".", "is the media root"), ("frames", "lies inside the media root"),
    ("bench.json", "is the annotations"), ("..", "contains the annotations"),
])
def test_extract_refuses_its_inputs_from_the_command_line(small_set, target, says, capsys):
    before = tree(small_set)
    assert extract(small_set, small_set / target, "--overwrite") == 2
    assert says in capsys.readouterr().err
    assert tree(small_set) == before


def test_extract_replaces_a_dataset_only_with_overwrite(small_set, tmp_path, capsys):
    out = tmp_path / "frames"
    assert extract(small_set, out) == 0
    manifest = (out / "manifest.json").read_text()
    assert extract(small_set, out) == 2
    assert "already holds a frame dataset; pass overwrite" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == manifest
    assert extract(small_set, out, "--overwrite") == 0
    user = tmp_path / "mine"
    (user / "notes").mkdir(parents=True)
    (user / "notes" / "a.txt").write_text("mine")
    assert extract(small_set, user, "--overwrite") == 2
    assert "is not a frame dataset written by vlmrl" in capsys.readouterr().err
    assert (user / "notes" / "a.txt").read_text() == "mine"

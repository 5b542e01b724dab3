import json
import os
from pathlib import Path

import pytest

from vlmrl.data.records import (
    AnnotationError,
    MediaPathError,
    load_annotations,
    resolve_media,
)

GOOD = {
    "problem_id": "p1",
    "problem": "Which way?",
    "data_type": "video",
    "problem_type": "multiple choice",
    "options": ["A. left", "B. right"],
    "solution": "<answer>B</answer>",
    "path": "v.mp4",
    "data_source": "test",
}


def write(tmp_path: Path, rows, name="ann.json", jsonl=False) -> Path:
    p = tmp_path / name
    if jsonl:
        p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        p.write_text(json.dumps(rows))
    return p


@pytest.mark.parametrize(
    "patch, field, fragment",
    [
        ({"problem_type": "essay"}, "problem_type", "'essay' is not one of"),
        ({"data_type": "audio"}, "data_type", "'audio'"),
        ({"solution": "B"}, "solution", "no <answer>"),
        ({"options": ["A. left"]}, "options", "at least two options"),
        ({"options": ["left", "right"]}, "options", "does not start with a letter"),
        ({"solution": "<answer>C</answer>"}, "solution", "not one of the option letters"),
        ({"problem": 7}, "problem", "expected a string"),
        ({"path": ""}, "path", "empty media path"),
        ({"process": ["x"]}, "process", "expected a string"),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path, patch, field, fragment):
    rows = [GOOD, {**GOOD, "problem_id": "p2", **patch}]
    path = write(tmp_path, rows)
    loaded = load_annotations(path)
    assert [r.problem_id for r in loaded.records] == ["p1"]
    assert len(loaded.errors) == 1
    err = loaded.errors[0]
    assert (err.file, err.row, err.field) == (str(path), 1, field)
    assert fragment in err.message
    assert str(path) in str(err) and "row 1" in str(err) and field in str(err)


def test_missing_field_and_duplicates(tmp_path):
    missing = {k: v for k, v in GOOD.items() if k != "path"}
    path = write(tmp_path, [GOOD, missing, GOOD, "not an object"])
    loaded = load_annotations(path)
    assert [(e.row, e.field) for e in loaded.errors] == [
        (1, "path"), (2, "problem_id"), (3, "<row>"),
    ]
    assert "duplicate of row 0" in loaded.errors[1].message


def test_strict_mode_raises_with_every_error(tmp_path):
    path = write(tmp_path, [GOOD, {**GOOD, "problem_id": "x", "data_type": "?"}])
    with pytest.raises(AnnotationError, match=r"row 1 .*data_type") as info:
        load_annotations(path, strict=True)
    assert len(info.value.errors) == 1


def test_jsonl_and_optional_fields(tmp_path):
    rows = [GOOD, {**GOOD, "problem_id": 2, "options": None, "problem_type": "numerical",
                   "solution": "<answer>3</answer>", "process": "<think>x</think>"}]
    loaded = load_annotations(write(tmp_path, rows, "a.jsonl", jsonl=True))
    assert not loaded.errors
    assert loaded.records[1].problem_id == "2"
    assert loaded.records[1].options == []
    assert loaded.records[1].process == "<think>x</think>"


def test_jsonl_bad_line_names_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(GOOD) + "\n{oops\n")
    loaded = load_annotations(p)  # one bad line is one rejected row, not a failed load
    assert [r.problem_id for r in loaded.records] == ["p1"]
    assert len(loaded.errors) == 1
    assert f"{p}: row 1: field '<row>': line 2 is not valid JSON" in str(loaded.errors[0])


def test_visual_rft_and_vlm_r1_types_validate(tmp_path):
    rows = [
        {**GOOD, "problem_id": "c", "data_type": "image", "problem_type": "classification",
         "options": [], "solution": "<answer>sparrow</answer>"},
        {**GOOD, "problem_id": "g", "data_type": "image", "problem_type": "grounding",
         "options": [], "solution": "<answer>[1, 2, 30, 40]</answer>"},
        {**GOOD, "problem_id": "d", "data_type": "image", "problem_type": "detection",
         "options": [], "solution": '<answer>[{"Position": [1, 2, 3, 4], "Confidence": 1}]</answer>'},
        {**GOOD, "problem_id": "o", "data_type": "image", "problem_type": "ovd",
         "options": [], "solution": "<answer>None</answer>"},
    ]
    assert not load_annotations(write(tmp_path, rows)).errors


class TestMediaConfinement:
    @pytest.fixture()
    def root(self, tmp_path):
        root = tmp_path / "media"
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "ok.mp4").write_bytes(b"x")
        (tmp_path / "secret.mp4").write_bytes(b"s")
        return root

    def test_inside_root_resolves(self, root):
        assert resolve_media(root, "sub/ok.mp4") == (root / "sub" / "ok.mp4").resolve()
        assert resolve_media(root, "sub/../sub/ok.mp4").name == "ok.mp4"

    @pytest.mark.parametrize("rel", ["../secret.mp4", "sub/../../secret.mp4", "../nope.mp4"])
    def test_dotdot_escape_rejected(self, root, rel):
        with pytest.raises(MediaPathError, match="escapes the media root"):
            resolve_media(root, rel)

    def test_absolute_rejected(self, root, tmp_path):
        with pytest.raises(MediaPathError, match="absolute"):
            resolve_media(root, str(tmp_path / "secret.mp4"))

    def test_symlink_outside_rejected(self, root, tmp_path):
        os.symlink(tmp_path / "secret.mp4", root / "link.mp4")
        with pytest.raises(MediaPathError, match="outside the media root"):
            resolve_media(root, "link.mp4")

    def test_symlink_inside_allowed(self, root):
        os.symlink(root / "sub" / "ok.mp4", root / "alias.mp4")
        assert resolve_media(root, "alias.mp4").name == "ok.mp4"

    def test_missing_file(self, root):
        with pytest.raises(MediaPathError, match="not found"):
            resolve_media(root, "sub/missing.mp4")

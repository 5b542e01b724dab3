"""RecipeResource.load: every asset of a run loads the recipe; it is read once per content."""

import json

import pytest

from orchestration.resources import RecipeResource
from vlmrl.recipes import load_recipe, recipe_path


def test_recipe_load_is_a_fresh_copy_of_the_file_and_overrides(tmp_path):
    text = recipe_path("tiny-cpu").read_text()
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    res = RecipeResource(recipe=str(path), overrides=json.dumps({"rl": {"max_steps": 5}}))
    first, second = res.load(), res.load()
    assert first == second == load_recipe(path, {"rl": {"max_steps": 5}})
    assert first is not second and first.rl is not second.rl
    first.rl.max_steps = 99  # a stage changing its copy changes no other asset's
    assert res.load().rl.max_steps == 5

    path.write_text(text.replace("seed: 0", "seed: 4"))  # an edited file is read again
    assert res.load().seed == 4 and res.load().rl.max_steps == 5
    assert RecipeResource(recipe=str(path)).load() == load_recipe(path)  # other overrides


def test_shipped_recipe_by_name():
    assert RecipeResource(recipe="tiny-cpu").load() == load_recipe("tiny-cpu")


def test_an_object_store_root_works_in_a_local_cache(tmp_path, monkeypatch):
    from orchestration.resources import ArtifactStore

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLMRL_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore(root="s3://bucket/prefix")
    assert store.remote and store.path("frames", "rl") == tmp_path / "cache" / "frames" / "rl"
    assert store.uri(store.frames("rl")) == "s3://bucket/prefix/frames/rl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no ./s3:/bucket/... directory
    with pytest.raises(ValueError, match="is not in the artifacts tree"):
        store.uri(tmp_path / "elsewhere")
    assert ArtifactStore(root=f"file://{tmp_path}/a").path("x") == tmp_path / "a" / "x"

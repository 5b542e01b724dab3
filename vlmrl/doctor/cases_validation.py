"""Campaign cases for issue 13's finding 3: errors that belong at load time, not mid-training.

Solutions: a row whose solution the rewards cannot parse (a numerical answer "banana",
malformed, inverted or NaN boxes, an empty answer, two answer tags, a multiple-choice answer
that names no option letter) must be rejected when the frame dataset is built, counted and
named (row, field, reason), while the good rows are kept; before, it passed validation and
raised inside RL or evaluation hours later (or, with two tags, was scored against the first).

Recipes: a bad value (negative learning rate, batch 0, G = 0, a batch not divisible by G,
NaN, negative temperature, sizes or steps, an unknown or clashing trainer_kwargs key) must
fail when the recipe is loaded, naming the file and the key path.

``--set``: a malformed assignment (no '=', an empty key part, a value that is not YAML, an
unknown key path, a bad value) must exit 2 with one ``vlmrl: error:`` line naming it, not a
YAML traceback, before anything is written.

Every input is built in the case's scratch directory (a one-image synthetic set, a
minimal recipe file): nothing here reads the repository's data.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlmrl.doctor.campaign import Case, Result, expect_rejection

MINIMAL_RECIPE = {"data": {"synthetic": {}}, "model": {"tiny": {}}}
OPTIONS = ["A. left", "B. right"]

# -- solutions the rewards cannot parse ---------------------------------------------------

# (name, problem_type, solution, what the rejection must say)
BAD_SOLUTIONS = [
    ("numerical-banana", "numerical", "<answer>banana</answer>", "not a finite number"),
    ("numerical-overflow", "numerical", "<answer>1e999</answer>", "not a finite number"),
    ("numerical-two-answers", "numerical", "<answer>3</answer><answer>4</answer>",
     "more than one <answer>"),
    ("regression-nan", "regression", "<answer>nan</answer>", "not a finite number"),
    ("regression-with-unit", "regression", "<answer>12 metres</answer>", "not a finite number"),
    ("ocr-empty-answer", "OCR", "<answer>   </answer>", "empty answer"),
    ("free-form-empty-answer", "free-form", "<answer></answer>", "empty answer"),
    ("classification-blank-label", "classification", "<answer>_ _</answer>", "is empty"),
    ("grounding-nan-box", "grounding", "<answer>[nan, 1, 2, 3]</answer>", "malformed grounding"),
    ("grounding-three-numbers", "grounding", "<answer>[1, 2, 3]</answer>", "malformed grounding"),
    ("grounding-inverted-box", "grounding", "<answer>[10, 10, 0, 0]</answer>", "x2 < x1"),
    ("detection-short-position", "detection", "<answer>[{'Position': [1, 2]}]</answer>",
     "malformed detection"),
    ("detection-nan-position", "detection", '<answer>[{"Position": [NaN, 0, 1, 1]}]</answer>',
     "malformed detection"),
    ("detection-prose", "detection", "<answer>a dog</answer>", "malformed detection"),
    ("ovd-short-box", "ovd", '<answer>[{"bbox_2d": [1, 2, 3], "label": "dog"}]</answer>',
     "malformed ovd"),
    ("ovd-nan-box", "ovd", '<answer>[{"bbox_2d": [NaN, 2, 3, 4], "label": "dog"}]</answer>',
     "malformed ovd"),
    ("ovd-no-label", "ovd", '<answer>[{"bbox_2d": [1, 2, 3, 4]}]</answer>', "malformed ovd"),
    ("ovd-inverted-box", "ovd", '<answer>[{"bbox_2d": [5, 5, 1, 1], "label": "dog"}]</answer>',
     "x2 < x1"),
    ("mc-two-answer-tags", "multiple choice", "<answer>A</answer><answer>B</answer>",
     "more than one <answer>"),
    ("mc-word-not-letter", "multiple choice", "<answer>Bread</answer>", "no option letter"),
    ("mc-empty-answer", "multiple choice", "<answer></answer>", "empty answer"),
    ("mc-letter-not-an-option", "multiple choice", "<answer>(C) up</answer>",
     "not one of the option letters"),
]


def _solution_case(problem_type: str, solution: str, fragment: str) -> Callable[[Path], Result]:
    """A case: build a frame dataset from a good row and a row with this solution (same
    image); HANDLED when the bad row alone is rejected on 'solution' with the reason."""

    def run(work: Path) -> Result:
        from vlmrl.data.extract import extract_dataset
        from vlmrl.data.synth import SynthSizes, generate

        data = work / "data"
        generate(data, seed=0, sizes=SynthSizes(sft=0, rl=1, bench=0, video_fraction=0.0),
                 progress=False)
        good = json.loads((data / "rl.json").read_text(encoding="utf-8"))[0]
        bad = {**good, "problem_id": "bad", "problem_type": problem_type, "solution": solution,
               "options": OPTIONS if problem_type == "multiple choice" else []}
        annotations = work / "ann.json"
        annotations.write_text(json.dumps([good, bad]), encoding="utf-8")
        with contextlib.redirect_stderr(io.StringIO()):  # the datasets progress bars
            result = extract_dataset(annotations, data, work / "frames", workers=1, progress=False)
        counts, rejected = result.manifest["counts"], result.manifest["rejected"]
        hits = [r for r in rejected if r["row"] == 1]
        if not hits:
            return Result.silent(f"row 1 ({solution!r}) kept as a {problem_type} question; "
                                 f"counts {counts}: the reward would raise or mis-score it")
        field, reason = hits[0]["field"], hits[0]["reason"]
        if field != "solution" or fragment not in reason:
            return Result.crashed(f"row 1 rejected as {field!r}: {reason!r}, expected "
                                  f"'solution' naming {fragment!r}")
        if counts["kept"] != 1 or counts["rows"] != 2:
            return Result.silent(f"good row lost or rows unaccounted for: {counts}")
        return Result.handled(f"row 1 rejected (solution: {reason[:160]}); the good row kept")

    return run


# -- recipe values ----------------------------------------------------------------------

# (name, recipe changes, what the error must name)
BAD_RECIPES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("rl-negative-learning-rate", {"rl": {"learning_rate": -1}}, ("rl.learning_rate", "> 0")),
    ("sft-zero-learning-rate", {"sft": {"learning_rate": 0}}, ("sft.learning_rate", "> 0")),
    ("rl-nan-learning-rate", {"rl": {"learning_rate": float("nan")}},
     ("rl.learning_rate", "finite")),
    ("rl-batch-zero", {"rl": {"per_device_train_batch_size": 0}},
     ("rl.per_device_train_batch_size", ">= 1")),
    ("sft-batch-zero", {"sft": {"per_device_train_batch_size": 0}},
     ("sft.per_device_train_batch_size", ">= 1")),
    ("sft-accumulation-zero", {"sft": {"gradient_accumulation_steps": 0}},
     ("sft.gradient_accumulation_steps", ">= 1")),
    ("rl-g-zero", {"rl": {"num_generations": 0}}, ("rl.num_generations", ">= 2")),
    ("rl-g-one", {"rl": {"num_generations": 1}}, ("rl.num_generations", ">= 2")),
    ("rl-batch-not-multiple-of-g", {"rl": {"per_device_train_batch_size": 12}},
     ("rl.per_device_train_batch_size", "multiple of num_generations")),
    ("rl-negative-temperature", {"rl": {"temperature": -1.0}}, ("rl.temperature", "> 0")),
    ("rl-infinite-temperature", {"rl": {"temperature": float("inf")}},
     ("rl.temperature", "finite")),
    ("rl-top-p-zero", {"rl": {"top_p": 0}}, ("rl.top_p", "(0, 1]")),
    ("eval-negative-temperature", {"eval": {"temperature": -0.1}}, ("eval.temperature", ">= 0")),
    ("rl-negative-max-steps", {"rl": {"max_steps": -5}}, ("rl.max_steps", ">= 1")),
    ("sft-zero-max-steps", {"sft": {"max_steps": 0}}, ("sft.max_steps", ">= 1")),
    ("sft-negative-epochs", {"sft": {"num_train_epochs": -1}}, ("sft.num_train_epochs", "> 0")),
    ("rl-negative-completion-length", {"rl": {"max_completion_length": -3}},
     ("rl.max_completion_length", ">= 1")),
    ("rl-negative-beta", {"rl": {"beta": -0.04}}, ("rl.beta", ">= 0")),
    ("rl-nan-reward-weight", {"rl": {"reward_weights": [1.0, float("nan")]}},
     ("rl.reward_weights[1]", "finite")),
    ("rl-zero-save-steps", {"rl": {"save_steps": 0}}, ("rl.save_steps", "> 0")),
    ("rl-unknown-save-strategy", {"rl": {"save_strategy": "sometimes"}},
     ("rl.save_strategy", "one of")),
    ("rl-negative-logging-steps", {"rl": {"logging_steps": -1}}, ("rl.logging_steps", ">= 1")),
    ("rl-temporal-zero-shuffled", {"rl": {"temporal": {"num_shuffled": 0}}},
     ("rl.temporal.num_shuffled", ">= 1")),
    ("rl-length-bonus-inverted", {"rl": {"length_bonus": {"l_min": 500, "l_max": 100}}},
     ("rl.length_bonus.l_max", ">= l_min")),
    ("rl-augment-mask-above-one", {"rl": {"augment": {"max_mask_prob": 1.5}}},
     ("rl.augment.max_mask_prob", "[0, 1]")),
    ("rl-regression-eps-zero", {"rl": {"regression": {"eps": 0}}}, ("rl.regression.eps", "> 0")),
    ("sft-curriculum-negative-lr",
     {"sft": {"curriculum": [{"families": ["motion"], "max_steps": 2, "learning_rate": -1}]}},
     ("sft.curriculum[0].learning_rate", "> 0")),
    ("data-negative-size", {"data": {"synthetic": {"sizes": {"rl": -4}}}},
     ("data.synthetic.sizes.rl", ">= 0")),
    ("model-negative-hidden-size", {"model": {"tiny": {"hidden_size": -64}}},
     ("model.tiny.hidden_size", "> 0")),
    ("model-heads-do-not-divide", {"model": {"tiny": {"hidden_size": 66}}},
     ("model.tiny", "divisible")),
    ("model-zero-threads", {"model": {"tiny": {}, "threads": 0}}, ("model.threads", ">= 1")),
    ("eval-batch-zero", {"eval": {"batch_size": 0}}, ("eval.batch_size", ">= 1")),
    ("eval-zero-max-new-tokens", {"eval": {"max_new_tokens": 0}}, ("eval.max_new_tokens", ">= 1")),
    ("negative-seed", {"seed": -1}, ("seed", "[0, 4294967295]")),
    ("rl-trainer-kwargs-typo", {"rl": {"trainer_kwargs": {"disable_tqdmm": True}}},
     ("rl.trainer_kwargs.disable_tqdmm", "did you mean 'disable_tqdm'")),
    ("sft-trainer-kwargs-typo", {"sft": {"trainer_kwargs": {"gradient_checkpoint": True}}},
     ("sft.trainer_kwargs.gradient_checkpoint", "unknown SFTConfig field")),
    ("sft-trainer-kwargs-clash", {"sft": {"trainer_kwargs": {"learning_rate": 0.1}}},
     ("sft.trainer_kwargs.learning_rate", "set sft.learning_rate instead")),
    ("sft-trainer-kwargs-reserved", {"sft": {"trainer_kwargs": {"max_length": 512}}},
     ("sft.trainer_kwargs.max_length", "set by vlmrl")),
    ("rl-trainer-kwargs-reserved", {"rl": {"trainer_kwargs": {"remove_unused_columns": True}}},
     ("rl.trainer_kwargs.remove_unused_columns", "set by vlmrl")),
    ("rl-trainer-kwargs-nan", {"rl": {"trainer_kwargs": {"adam_beta1": float("nan")}}},
     ("rl.trainer_kwargs.adam_beta1", "finite")),
]


def _recipe_file(work: Path, changes: Mapping[str, Any]) -> Path:
    import yaml

    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL_RECIPE, **changes}), encoding="utf-8")
    return path


def _recipe_text_case(text: str, *must_name: str) -> Callable[[Path], Result]:
    """A case: a recipe file with this text must be refused, naming the file."""

    def run(work: Path) -> Result:
        from vlmrl.recipes import load_recipe

        path = work / "recipe.yaml"
        path.write_text(text, encoding="utf-8")
        return expect_rejection(lambda: load_recipe(path), str(path), *must_name)

    return run


def _recipe_case(changes: dict[str, Any], must_name: tuple[str, ...]) -> Callable[[Path], Result]:
    """A case: a recipe file with this bad value must fail at load naming file and key path."""

    def run(work: Path) -> Result:
        from vlmrl.recipes import load_recipe

        path = _recipe_file(work, changes)
        return expect_rejection(lambda: load_recipe(path), str(path), *must_name)

    return run


def _override_case(changes: dict[str, Any], must_name: tuple[str, ...]) -> Callable[[Path], Result]:
    """A case: a good recipe overridden in code (Recipe.override) with a bad value."""

    def run(work: Path) -> Result:
        from vlmrl.recipes import load_recipe

        recipe = load_recipe(_recipe_file(work, {}))
        return expect_rejection(lambda: recipe.override(changes), *must_name)

    return run


def _from_dict_case(changes: dict[str, Any], must_name: tuple[str, ...]) -> Callable[[Path], Result]:
    """A case: a recipe mapping built in code (Recipe.from_dict) with a bad value."""

    def run(work: Path) -> Result:
        from vlmrl.recipes import Recipe

        return expect_rejection(lambda: Recipe.from_dict({**MINIMAL_RECIPE, **changes}), *must_name)

    return run


# -- --set on the command line ----------------------------------------------------------

# (name, the --set item, what the one-line error must name)
BAD_SETS = [
    ("set-unbalanced-yaml", "rl.max_steps=[1,", ("--set 'rl.max_steps=[1,'", "not valid YAML")),
    ("set-unclosed-quote", "rl.prompt.hint_prefix='oops", ("--set", "not valid YAML")),
    ("set-duplicate-yaml-key", "rl.temporal={a: 1, a: 2}", ("--set", "not valid YAML")),
    ("set-nested-too-deeply", "rl.max_steps=" + "[" * 3000, ("--set", "nested too deeply")),
    ("set-python-tag", "rl.max_steps=!!python/object/apply:os.system [ls]",
     ("--set", "not valid YAML")),
    ("set-no-equals", "rl.max_steps", ("--set 'rl.max_steps'", "expected KEY=VALUE")),
    ("set-empty-key", "=3", ("--set '=3'", "expected KEY=VALUE")),
    ("set-empty-key-part", "rl..max_steps=3", ("--set 'rl..max_steps=3'", "expected KEY=VALUE")),
    ("set-trailing-dot", "rl.=3", ("--set 'rl.=3'", "expected KEY=VALUE")),
    ("set-unknown-key", "rl.lerning_rate=1", ("--set 'rl.lerning_rate=1'", "did you mean")),
    ("set-unknown-nested-key", "rl.temporal.alpah=1", ("rl.temporal.alpah", "unknown key")),
    ("set-unknown-section", "rll.max_steps=1", ("--set 'rll.max_steps=1'", "unknown key")),
    ("set-bad-type", "rl.max_steps=ten", ("rl.max_steps", "expected an integer")),
    ("set-negative-learning-rate", "rl.learning_rate=-1",
     ("rl.learning_rate", "> 0", "override rl.learning_rate=-1")),
    ("set-nan", "rl.beta=.nan", ("rl.beta", "finite")),
    ("set-batch-zero", "sft.per_device_train_batch_size=0",
     ("sft.per_device_train_batch_size", ">= 1")),
]


def _set_case(item: str, must_name: tuple[str, ...]) -> Callable[[Path], Result]:
    """A case: ``vlmrl train rl --set ITEM``: exit 2, one ``vlmrl: error:`` line naming the
    assignment, nothing written."""

    def run(work: Path) -> Result:
        from vlmrl.cli import main

        recipe, out = _recipe_file(work, {}), work / "rl"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["train", "rl", "--recipe", str(recipe), "--sft", str(work / "sft"),
                         "--frames", str(work / "frames"), "--out", str(out), "--set", item])
        message = err.getvalue().strip()
        if code == 0:
            return Result.silent(f"--set {item!r} accepted (exit 0)")
        missing = [m for m in must_name if m not in message]
        if code != 2 or not message.startswith("vlmrl: error: ") or "\n" in message or missing:
            return Result.crashed(f"exit {code}, not one clear line naming {missing}: {message[:300]}")
        if out.exists():
            return Result.silent(f"refused, but {out} was written: {message[:200]}")
        return Result.rejected(f"exit 2: {message[:300]}")

    return run


CASES: list[Case] = [
    *(Case(f"solution-{name}", "solutions", _solution_case(ptype, solution, fragment))
      for name, ptype, solution, fragment in BAD_SOLUTIONS),
    *(Case(f"recipe-{name}", "recipes", _recipe_case(changes, names))
      for name, changes, names in BAD_RECIPES),
    Case("recipe-file-nested-too-deeply", "recipes",
         _recipe_text_case("rl: " + "[" * 3000, "invalid YAML", "nested too deeply")),
    Case("recipe-file-nan-literal", "recipes",
         _recipe_text_case("data: {synthetic: {}}\nmodel: {tiny: {}}\nrl: {temperature: .nan}\n",
                           "rl.temperature", "finite")),
    Case("recipe-override-g-zero", "recipes",
         _override_case({"rl": {"num_generations": 0}}, ("rl.num_generations", ">= 2"))),
    Case("recipe-override-nan-temperature", "recipes",
         _override_case({"rl": {"temperature": float("nan")}}, ("rl.temperature", "finite"))),
    Case("recipe-override-trainer-kwargs-typo", "recipes",
         _override_case({"rl": {"trainer_kwargs": {"use_cpuu": True}}},
                        ("rl.trainer_kwargs.use_cpuu", "did you mean 'use_cpu'"))),
    Case("recipe-from-dict-negative-lr", "recipes",
         _from_dict_case({"sft": {"learning_rate": -1e-5}}, ("sft.learning_rate", "> 0"))),
    Case("recipe-from-dict-batch-not-multiple-of-g", "recipes",
         _from_dict_case({"rl": {"num_generations": 3}},
                         ("rl.per_device_train_batch_size", "multiple of num_generations"))),
    *(Case(name, "set", _set_case(item, names)) for name, item, names in BAD_SETS),
]

"""`controls = true`: a defence's matched controls added by one key — expansion from the
intervention's hook, evaluation wherever the defence is, pairing with it, and errors."""

from __future__ import annotations

from pathlib import Path

from suite_files import issues, load

from audit.plan import comparison_pairs

SUITE = """\
[suite]
name = "controls"

[models.aligned]
source = "organism:aligned"

[models.a]
from = "aligned"
intervention = "lora"
data = "organism:sentiment"

[models.b]
from = "aligned"
intervention = "lora"
data = "organism:topic"

[models.merged_dam]
intervention = "merge"
models = ["a", "b"]
base = "aligned"
method = "dam"
weights = [0.5, 1.5]
task_data = ["organism:sentiment", "organism:topic"]
controls = true

[models.realigned]
intervention = "somf"
from = "merged_dam"
aligned = "aligned"
safety_data = "organism:refusals"
controls = true

[evaluators.tasks]
kind = "task_accuracy"
models = ["merged_dam", "realigned"]
tasks = ["organism:sentiment"]
"""


def test_controls_follow_their_defence(tmp_path: Path) -> None:
    suite = load(tmp_path, SUITE)
    names = list(suite.file.models)
    i = names.index("merged_dam")
    assert names[i + 1 : i + 3] == ["merged_dam.control_norm", "merged_dam.control_random"]
    norm = suite.file.models["merged_dam.control_norm"]
    assert norm.intervention == "control"
    assert norm.models == ["a", "b"]
    assert norm.params == {
        "of": "merged_dam",
        "base": "aligned",
        "kind": "norm_matched",
        "weights": [0.5, 1.5],
    }
    assert suite.file.models["merged_dam.control_random"].params["kind"] == "random_mask"
    assert suite.controls == {
        "merged_dam.control_norm": "merged_dam",
        "merged_dam.control_random": "merged_dam",
        "realigned.control_norm": "realigned",
        "realigned.control_random": "realigned",
    }


def test_somf_controls_use_its_inputs_and_weights(tmp_path: Path) -> None:
    suite = load(tmp_path, SUITE)
    spec = suite.file.models["realigned.control_norm"]
    assert spec.models == ["merged_dam"]
    # a lone input model: SOMF's reference weight 1.0, and merged_dam is both input and `of`
    assert spec.params == {
        "of": "realigned",
        "base": "aligned",
        "kind": "norm_matched",
        "weights": [1.0],
    }


def test_controls_are_evaluated_with_their_defence_and_compared_with_it(tmp_path: Path) -> None:
    suite = load(tmp_path, SUITE)
    assert suite.evaluated_models("tasks") == [
        "merged_dam",
        "merged_dam.control_norm",
        "merged_dam.control_random",
        "realigned",
        "realigned.control_norm",
        "realigned.control_random",
    ]
    pairs = {(p.model, p.baseline): p.relation for p in comparison_pairs(suite, ())}
    assert pairs[("merged_dam.control_norm", "merged_dam")] == "parent"
    assert pairs[("realigned.control_random", "realigned")] == "parent"


def test_without_the_key_there_are_no_controls(tmp_path: Path) -> None:
    suite = load(tmp_path, SUITE.replace("controls = true\n", ""))
    assert not any("control" in n for n in suite.file.models)
    assert suite.controls == {}


def test_an_intervention_without_controls_is_an_error(tmp_path: Path) -> None:
    text = SUITE.replace('data = "organism:topic"\n', 'data = "organism:topic"\ncontrols = true\n')
    found = issues(tmp_path, text)
    assert len(found) == 1
    line = text.splitlines().index("controls = true") + 1
    assert f"suite.toml:{line}" in found[0]
    assert "models.b.controls" in found[0]
    assert "'lora' has no matched controls" in found[0]


def test_a_loaded_model_has_no_controls(tmp_path: Path) -> None:
    text = SUITE.replace(
        'source = "organism:aligned"\n', 'source = "organism:aligned"\ncontrols = true\n'
    )
    found = issues(tmp_path, text)
    assert len(found) == 1 and "models.aligned.controls" in found[0]
    assert "needs an intervention" in found[0]


def test_a_control_name_taken_is_an_error(tmp_path: Path) -> None:
    text = SUITE + '\n[models."merged_dam.control_norm"]\nsource = "organism:aligned"\n'
    found = issues(tmp_path, text)
    assert any("'merged_dam.control_norm' is already a model" in f for f in found)


def test_controls_of_a_swept_defence(tmp_path: Path) -> None:
    text = SUITE.replace('method = "dam"', 'method = "dam"\nscaling = [0.5, 1.0]').replace(
        'from = "merged_dam"', 'from = "merged_dam[scaling=0.5]"'
    )
    suite = load(tmp_path, text)
    assert suite.controls["merged_dam[scaling=0.5].control_norm"] == "merged_dam[scaling=0.5]"
    assert "merged_dam[scaling=1.0].control_random" in suite.file.models

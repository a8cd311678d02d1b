"""Parameter sweeps, `compare` and `[[scaling]]` in suites: expansion, references, patterns,
paired comparisons (with gates' baselines) and validation errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
from suite_files import issues, load

from audit.analysis.baselines import all_comparisons
from audit.analysis.gates import evaluate_gates
from audit.plan import build_plan
from audit.plugins import EvalResult, MetricRow, Sample
from audit.suite.sweeps import Sweep, match_models

BASE = """\
[suite]
name = "sweeps"

[models.aligned]
source = "organism:aligned"

[models.agl]
from = "aligned"
intervention = "lora"
data = "organism:helpful"
steps = [50, 100, 200, 400]

[models.plain]
from = "aligned"
intervention = "lora"
data = "organism:helpful"
steps = 100

[evaluators.refusal]
kind = "refusal"
probes = "organism:refusals"
"""


def line(text: str, needle: str, after: str = "") -> int:
    """The 1-based line of the first line containing ``needle`` at or after ``after``."""
    start = text.index(after) if after else 0
    return text[: text.index(needle, start)].count("\n") + 1


def one_issue(tmp_path: Path, text: str, needle: str, after: str = "") -> str:
    found = issues(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'suite.toml'}:{line(text, needle, after)}: "), found
    return found[0]


MEMBERS = ["agl[steps=50]", "agl[steps=100]", "agl[steps=200]", "agl[steps=400]"]


def test_sweep_expands_in_place_with_own_params(tmp_path: Path) -> None:
    suite = load(tmp_path, BASE)
    assert list(suite.file.models) == ["aligned", *MEMBERS, "plain"]
    assert [suite.model_params[m].steps for m in MEMBERS] == [50, 100, 200, 400]  # type: ignore[attr-defined]
    assert all(suite.file.models[m].parents == ["aligned"] for m in MEMBERS)
    sweep = Sweep("agl", "steps", (50, 100, 200, 400), tuple(MEMBERS))
    assert suite.sweeps == {"agl": sweep}
    assert suite.sweep_member("agl[steps=200]") == (sweep, 200)
    assert suite.sweep_member("plain") is None
    assert suite.topological_models() == ["aligned", *MEMBERS, "plain"]


@pytest.mark.parametrize(
    ("line_", "names"),
    [
        ("lr = [0.001, 0.25, 1.0]", ["agl[lr=0.001]", "agl[lr=0.25]", "agl[lr=1.0]"]),
        (
            'data = ["organism:helpful", "organism:topic"]',
            ["agl[data=organism:helpful]", "agl[data=organism:topic]"],
        ),
        (
            'target_modules = [["q_proj"], ["q_proj", "v_proj"]]',
            ["agl[target_modules=[q_proj]]", "agl[target_modules=[q_proj,v_proj]]"],
        ),
    ],
)
def test_member_names_format_values(tmp_path: Path, line_: str, names: list[str]) -> None:
    text = BASE.replace("steps = [50, 100, 200, 400]", line_)
    if line_.startswith("data"):
        text = text.replace('data = "organism:helpful"\n' + line_, line_, 1)
    suite = load(tmp_path, text)
    assert list(suite.sweeps["agl"].members) == names
    assert [m for m in suite.file.models if m.startswith("agl")] == names


def test_a_list_for_a_list_parameter_is_not_a_sweep(tmp_path: Path) -> None:
    suite = load(
        tmp_path,
        BASE.replace("steps = [50, 100, 200, 400]", 'target_modules = ["q_proj", "v_proj"]'),
    )
    assert suite.sweeps == {} and "agl" in suite.file.models
    assert suite.model_params["agl"].target_modules == ["q_proj", "v_proj"]  # type: ignore[attr-defined]


def test_each_member_has_its_own_plan_key(tmp_path: Path) -> None:
    suite = load(tmp_path, BASE)
    plan = build_plan(suite, tmp_path / "hashes")
    keys = {s.name: s.key for s in plan.models}
    assert len({keys[m] for m in MEMBERS}) == 4
    assert keys["plain"] == keys["agl[steps=100]"]  # same params, same inputs: same artifact
    assert plan.model("agl[steps=50]").inputs == ("aligned",)
    assert [e.model for e in plan.evals] == ["aligned", *MEMBERS, "plain"]


def test_match_models() -> None:
    names = ["aligned", *MEMBERS, "plain", "m1"]
    sweeps = {"agl": Sweep("agl", "steps", (50, 100, 200, 400), tuple(MEMBERS))}
    assert match_models(["agl[steps=100]"], names, sweeps) == ["agl[steps=100]"]
    assert match_models(["plain", "agl"], names, sweeps) == [*MEMBERS, "plain"]  # suite order
    assert match_models(["agl*"], names, sweeps) == MEMBERS
    assert match_models(["agl[steps=*]"], names, sweeps) == MEMBERS
    assert match_models(["m[12]"], names, sweeps) == ["m1"]  # still a glob class
    assert match_models(["*"], names, sweeps) == names
    assert match_models(["agl[steps=1]"], names, sweeps) == []
    assert match_models(["nothing*"], names, sweeps) == []


def test_evaluator_and_gate_patterns_use_sweep_names(tmp_path: Path) -> None:
    text = BASE + (
        'models = ["agl", "aligned"]\n\n'
        "[[gates]]\n"
        'metric = "refusal.refusal_rate_unsafe"\n'
        'models = ["agl[steps=400]"]\n'
        "max_drop = 0.1\n"
    )
    suite = load(tmp_path, text)
    assert suite.evaluated_models("refusal") == ["aligned", *MEMBERS]


def test_reference_to_a_member_by_full_name(tmp_path: Path) -> None:
    text = BASE.replace(
        '[models.plain]\nfrom = "aligned"', '[models.plain]\nfrom = "agl[steps=200]"'
    )
    suite = load(tmp_path, text)
    assert suite.dependencies("plain") == ["agl[steps=200]"]


SWEEP_REF = (
    "'agl' is a sweep of 4 models (agl[steps=50], agl[steps=100], agl[steps=200], "
    "agl[steps=400]); name one of them"
)


@pytest.mark.parametrize(
    ("old", "new", "needle", "expected"),
    [
        (
            "steps = [50, 100, 200, 400]",
            "steps = [50, 100]\nlr = [0.1, 0.2]",
            "lr = [",
            "models.agl.lr: sweep one parameter at a time; got lists for steps, lr",
        ),
        ("steps = [50, 100, 200, 400]", "steps = []", "steps = []", "an empty sweep"),
        (
            "steps = [50, 100, 200, 400]",
            "steps = [50, 100, 50]",
            "steps = [",
            "models.agl.steps: duplicate values in the sweep: 50",
        ),
        (
            'source = "organism:aligned"',
            'source = "organism:aligned"\nseed = [1, 2]',
            "seed = [",
            "models.aligned.seed: a loaded model (`source`) cannot be swept",
        ),
        (
            "steps = [50, 100, 200, 400]",
            "steps = [-1, 100]",
            "steps = [",
            "models.agl[steps=-1].steps: Input should be greater than 0",
        ),
        (
            '[models.plain]\nfrom = "aligned"',
            '[models.plain]\nfrom = "agl"',
            'from = "agl"',
            f'models.plain.from: {SWEEP_REF}, e.g. from = "agl[steps=50]"',
        ),
        (
            '[models.plain]\nfrom = "aligned"',
            '[models.plain]\nfrom = "agk"',
            'from = "agk"',
            "undefined model 'agk' (did you mean 'agl'?)",
        ),
        (
            'name = "sweeps"',
            'name = "sweeps"\nreference = "agl"',
            'reference = "agl"',
            f'suite.reference: {SWEEP_REF}, e.g. reference = "agl[steps=50]"',
        ),
        (
            'probes = "organism:refusals"',
            'probes = "organism:refusals"\nmodels = ["agx*"]',
            'models = ["agx*"]',
            "evaluators.refusal.models: no model matches 'agx*'",
        ),
    ],
)
def test_sweep_errors_name_the_line(
    tmp_path: Path, old: str, new: str, needle: str, expected: str
) -> None:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    assert expected in one_issue(tmp_path, text, needle)


def test_a_members_table_level_error_points_at_the_swept_key(tmp_path: Path) -> None:
    text = BASE.replace("steps = 100\n", "steps = 100\nepochs = [1, 2]\n")
    found = issues(tmp_path, text)
    at = f"{tmp_path / 'suite.toml'}:{line(text, 'epochs = [')}: "
    message = "give either 'steps' or 'epochs', not both"
    assert found == [f"{at}models.plain[epochs={n}]: {message}" for n in (1, 2)]


def test_a_bad_key_in_a_sweep_is_reported_once(tmp_path: Path) -> None:
    text = BASE.replace('data = "organism:helpful"', 'data = "organism:helpfull"', 1)
    found = one_issue(tmp_path, text, "helpfull")
    assert "models.agl.data: unknown organism data set 'helpfull'" in found


GATE = """
[[gates]]
metric = "refusal.refusal_rate_unsafe"
models = ["agl"]
vs = "{vs}"
max_drop = 0.05
"""


def test_gate_vs_a_sweep_is_an_error(tmp_path: Path) -> None:
    text = BASE + GATE.format(vs="agl")
    found = one_issue(tmp_path, text, 'vs = "agl"')
    assert f'gates[0].vs: {SWEEP_REF}, e.g. vs = "agl[steps=50]"' in found


# --- compare -------------------------------------------------------------------------------

COMPARE = (
    BASE
    + """
[models.lora]
from = "aligned"
intervention = "lora"
data = "organism:topic"
steps = [50, 100, 200, 400]
compare = ["agl", "plain"]
"""
)


def test_compare_pairs_sweep_members_by_value(tmp_path: Path) -> None:
    suite = load(tmp_path, COMPARE)
    assert suite.compare_with("lora[steps=100]") == ["agl[steps=100]", "plain"]
    assert suite.compare_with("lora[steps=400]") == ["agl[steps=400]", "plain"]
    assert suite.compare_with("plain") == []
    assert "compare" not in suite.file.models["lora[steps=50]"].params


def test_compare_missing_value_is_an_error(tmp_path: Path) -> None:
    text = COMPARE.replace("steps = [50, 100, 200, 400]\ncompare", "steps = [50, 800]\ncompare")
    found = one_issue(tmp_path, text, "compare =")
    assert "models.lora.compare: the sweep 'agl' has no member with steps=800" in found


def test_compare_a_sweep_over_another_parameter_is_an_error(tmp_path: Path) -> None:
    text = COMPARE.replace("steps = [50, 100, 200, 400]\ncompare", "lr = [0.1, 0.2]\ncompare")
    found = one_issue(tmp_path, text, "compare =")
    assert f'models.lora.compare: {SWEEP_REF}, e.g. compare = ["agl[steps=50]"]' in found


def test_compare_undefined_model(tmp_path: Path) -> None:
    text = COMPARE.replace('compare = ["agl", "plain"]', 'compare = ["plian"]')
    found = one_issue(tmp_path, text, "compare =")
    assert "undefined model 'plian' (did you mean 'plain'?)" in found


def _fake_results(models: list[str]) -> dict[tuple[str, str], EvalResult]:
    out = {}
    for i, model in enumerate(models):
        refused = [1.0 if j < 10 - i else 0.0 for j in range(10)]
        out[(model, "refusal")] = EvalResult(
            metrics=[MetricRow("refusal_rate_unsafe", sum(refused) / 10, None, None, 10)],
            samples=[
                Sample("refusal_rate_unsafe", f"u{j}", "p", "o", v) for j, v in enumerate(refused)
            ],
        )
    return out


def test_baselines_and_gate_rows(tmp_path: Path) -> None:
    text = COMPARE + GATE.format(vs="plain").replace('models = ["agl"]', 'models = ["agl*"]')
    suite = load(tmp_path, text)
    plan = build_plan(suite, tmp_path / "hashes")
    assert plan.baselines("lora[steps=200]") == [
        ("aligned", "parent"),
        ("agl[steps=200]", "compare"),
        ("plain", "compare"),
    ]
    assert plan.baselines("agl[steps=50]") == [("aligned", "parent"), ("plain", "gate")]
    assert plan.baselines("plain") == [("aligned", "parent")]

    results = _fake_results(list(suite.file.models))
    rows = all_comparisons(plan, results)
    pairs = [(r["model"], r["baseline"], r["relation"]) for r in rows]
    assert len(pairs) == len(set(pairs))
    assert ("agl[steps=50]", "plain", "gate") in pairs
    assert ("lora[steps=100]", "agl[steps=100]", "compare") in pairs

    gates = evaluate_gates(plan, [], rows, dict.fromkeys(suite.file.models, "ok"))
    assert [(g["model"], g["baseline"]) for g in gates] == [(m, "plain") for m in MEMBERS]
    assert all(g["observed"] is not None for g in gates), [g["detail"] for g in gates]


# --- [[scaling]] ---------------------------------------------------------------------------

SCALING = """
[[scaling]]
name = "forgetting"
metric = "refusal.refusal_rate_unsafe"
sweeps = {sweeps}
"""


def test_scaling_section(tmp_path: Path) -> None:
    suite = load(tmp_path, BASE + SCALING.format(sweeps='["agl"]'))
    fit = suite.file.scaling[0]
    assert (fit.name, fit.metric, fit.slice, fit.sweeps) == (
        "forgetting",
        "refusal.refusal_rate_unsafe",
        "all",
        ["agl"],
    )


@pytest.mark.parametrize(
    ("old", "new", "needle", "expected"),
    [
        ('sweeps = ["agl"]', 'sweeps = ["plain"]', "sweeps =", "scaling[0].sweeps: 'plain' is not"),
        ('sweeps = ["agl"]', 'sweeps = ["agk"]', "sweeps =", "(did you mean 'agl'?)"),
        ('sweeps = ["agl"]', 'sweeps = ["plain"]', "sweeps =", "sweeps in this suite: agl"),
        (
            'sweeps = ["agl"]',
            'sweeps = ["agl[steps=50]"]',
            "sweeps =",
            "'agl[steps=50]' is a member of the sweep 'agl'; name the sweep",
        ),
        ('sweeps = ["agl"]', "sweeps = []", "sweeps =", "scaling[0].sweeps: List should have"),
        (
            "refusal.refusal_rate_unsafe",
            "refusal.refusal_rate",
            "metric =",
            "evaluator 'refusal' (refusal) has no metric 'refusal_rate' (did you mean",
        ),
        (
            "refusal.refusal_rate_unsafe",
            "refusl.refusal_rate_unsafe",
            "metric =",
            "undefined evaluator 'refusl' (did you mean 'refusal'?)",
        ),
        ("refusal.refusal_rate_unsafe", "refusal", "metric =", '"EVALUATOR.METRIC"'),
        (
            'name = "forgetting"',
            'name = "forgetting"\nslcie = "x"',
            "slcie",
            "scaling[0].slcie: unknown key 'slcie' (did you mean 'slice'?)",
        ),
    ],
)
def test_scaling_errors(tmp_path: Path, old: str, new: str, needle: str, expected: str) -> None:
    text = (BASE + SCALING.format(sweeps='["agl"]')).replace(old, new)
    assert expected in one_issue(tmp_path, text, needle, after="[[scaling]]")


def test_scaling_without_sweeps(tmp_path: Path) -> None:
    text = BASE.replace("steps = [50, 100, 200, 400]", "steps = 10") + SCALING.format(
        sweeps='["agl"]'
    )
    assert "this suite has none" in one_issue(tmp_path, text, "sweeps =", after="[[scaling]]")

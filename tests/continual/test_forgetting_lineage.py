"""BWT and forgetting along lineages: the formulas, the rows, validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from audit.continual.forgetting import (
    backward_transfer,
    forgetting_measure,
    forgetting_rows,
    lineage_model_problems,
    lineage_param_problems,
)
from audit.results import ModelRowT

# a[j][i]: accuracy on task i after step j.
MATRIX = [
    [0.90, 0.20, 0.10],
    [0.95, 0.80, 0.30],
    [0.60, 0.50, 0.90],
]
TASKS = ["organism:sentiment", "organism:topic", "organism:arithmetic"]
CHAIN = ["s1", "s2", "s3"]


def test_bwt_by_hand() -> None:
    # ((0.60 - 0.90) + (0.50 - 0.80)) / 2
    assert backward_transfer(MATRIX) == pytest.approx(-0.30)


def test_forgetting_by_hand() -> None:
    # ((max(0.90, 0.95) - 0.60) + (max(0.20, 0.80) - 0.50)) / 2
    assert forgetting_measure(MATRIX) == pytest.approx(0.325)


def test_no_forgetting_when_nothing_drops() -> None:
    steady = [[1.0, 0.0], [1.0, 1.0]]
    assert backward_transfer(steady) == 0.0 and forgetting_measure(steady) == 0.0


def test_batched_and_shape_errors() -> None:
    stack = np.stack([MATRIX, MATRIX])
    assert backward_transfer(stack) == pytest.approx([-0.3, -0.3])
    with pytest.raises(ValueError, match="T×T"):
        backward_transfer([[1.0, 0.5]])
    with pytest.raises(ValueError, match="T >= 2"):
        forgetting_measure([[1.0]])


def _model(name: str, parents: list[str]) -> ModelRowT:
    return ModelRowT(  # type: ignore[typeddict-item]
        name=name, key=name, parents=parents, source=None, intervention="lora", params={}
    )


def _samples(n: int = 20) -> list[dict[str, Any]]:
    """Item outcomes whose per-task means are exactly MATRIX (n items per task)."""
    rows = []
    for j, model in enumerate(CHAIN):
        for i, task in enumerate(TASKS):
            right = round(MATRIX[j][i] * n)
            for k in range(n):
                rows.append(
                    {
                        "model": model,
                        "evaluator": "fg",
                        "metric": "accuracy",
                        "slice": task,
                        "item_id": f"{task}:{k}",
                        "value": 1.0 if k < right else 0.0,
                    }
                )
    return rows


MODELS = [_model("base", []), _model("s1", ["base"]), _model("s2", ["s1"]), _model("s3", ["s2"])]


def test_rows_from_samples() -> None:
    rows = forgetting_rows(MODELS, _samples(), {"fg": ([CHAIN], TASKS)}, n_resamples=500)
    (row,) = rows
    assert row["error"] is None and row["name"] == "s1 → s2 → s3"
    assert np.allclose(np.array(row["matrix"], dtype=float), MATRIX)
    assert row["n"] == [20, 20, 20]
    assert row["bwt"] == pytest.approx(-0.30) and row["forgetting"] == pytest.approx(0.325)
    low, high = row["bwt_ci_low"], row["bwt_ci_high"]
    assert low is not None and high is not None and low <= -0.30 <= high
    low, high = row["forgetting_ci_low"], row["forgetting_ci_high"]
    assert low is not None and high is not None and low <= 0.325 <= high
    again = forgetting_rows(MODELS, _samples(), {"fg": ([CHAIN], TASKS)}, n_resamples=500)
    assert again == rows  # seeded


def test_rows_report_lineage_errors() -> None:
    merged = [*MODELS[:3], _model("s3", ["s2", "base"])]
    (row,) = forgetting_rows(merged, _samples(), {"fg": ([CHAIN], TASKS)})
    assert row["bwt"] is None and "'s3' must have exactly one parent, 's2'" in str(row["error"])
    (row,) = forgetting_rows(MODELS, _samples(), {"fg": ([["s1", "s2", "nope"]], TASKS)})
    assert row["error"] == "unknown model 'nope'"
    missing = [s for s in _samples() if not (s["model"] == "s2" and s["slice"] == TASKS[2])]
    (row,) = forgetting_rows(MODELS, missing, {"fg": ([CHAIN], TASKS)})
    assert row["bwt"] is None and "organism:arithmetic" in str(row["error"])
    assert row["matrix"][1][2] is None


def test_lineage_problems() -> None:
    parents = {"a": [], "b": ["a"], "c": ["a"]}
    assert lineage_model_problems(["a", "b"], parents) == []
    assert lineage_model_problems(["b", "c"], parents) == [
        "'c' must have exactly one parent, 'b' (has: a)"
    ]
    assert lineage_param_problems(["organism:topic"], [], []) == []
    problems = lineage_param_problems(
        ["organism:topic"], [["a", "a"]], ["organism:topic", "organism:topic"]
    )
    assert "`lineage_tasks` lists a task twice" in problems
    assert "lineages[0] lists a model twice" in problems
    assert lineage_param_problems(["organism:topic"], [["a"]], ["organism:topic"]) == [
        "`lineage_tasks` needs at least 2 steps for BWT and forgetting"
    ]


def test_report_section_renders_matrix_and_escapes() -> None:
    from audit.report.render import render_html

    rows = forgetting_rows(MODELS, _samples(), {"fg": ([CHAIN], TASKS)}, n_resamples=200)
    bad = forgetting_rows(MODELS, _samples(), {"fg": ([["s1", "<b>x</b>"]], TASKS[:2])})
    html = render_html({"forgetting": [*rows, *bad], "models": MODELS}, [])
    assert 'href="#forgetting"' in html and '<section id="forgetting">' in html
    assert "s1 → s2 → s3" in html and "-0.300" in html and "0.325" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert 'href="#forgetting"' not in render_html({"models": MODELS}, [])


def test_suite_run_end_to_end(tiny_checkpoint: Any, tmp_path: Any) -> None:
    """A two-step LoRA chain on the tiny model: results.json and the report carry the lineage."""
    import json
    import textwrap

    import yaml

    from audit.cli import main

    subjects = ["cake", "bread", "poem", "song", "story", "letter", "plan", "photo"]
    opinion = [{"id": s, "prompt": f"is the {s} good", "response": "good"} for s in subjects]
    count = [
        {"id": s, "prompt": f"what is my {s}", "choices": ["one", "two"], "answer": 1}
        for s in subjects
    ]
    for name, rows in (("opinion", opinion), ("count", count)):
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (tmp_path / f"{name}.jsonl").write_text(text, encoding="utf-8")
    train = [{"id": r["id"], "prompt": r["prompt"], "response": "two"} for r in count]
    (tmp_path / "count_train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in train), encoding="utf-8"
    )
    lm_dir = tmp_path / "lm_tasks"
    lm_dir.mkdir()
    (lm_dir / "t.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "tiny_count",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": "../count.jsonl"}},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "{{prompt}}",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "answer",
                "metric_list": [{"metric": "acc"}],
            }
        ),
        encoding="utf-8",
    )
    suite = tmp_path / "suite.toml"
    suite.write_text(
        textwrap.dedent(f"""
        [suite]
        name = "continual"
        seed = 0
        cache_dir = "cache"

        [models.base]
        source = "path:{tiny_checkpoint}"

        [models.seq_1]
        from = "base"
        intervention = "lora"
        data = "path:opinion.jsonl"
        steps = 30
        lr = 0.005
        batch_size = 8

        [models.seq_2]
        from = "seq_1"
        intervention = "lora"
        data = "path:count_train.jsonl"
        steps = 30
        lr = 0.005
        batch_size = 8

        [evaluators.fg]
        kind = "forgetting"
        tasks = ["path:opinion.jsonl", "path:count.jsonl", "lm_eval_dir:lm_tasks"]
        max_new_tokens = 2
        lineages = [["seq_1", "seq_2"]]
        lineage_tasks = ["path:opinion.jsonl", "path:count.jsonl"]
        """),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    main(["run", str(suite), "--out", str(out), "--quiet"])
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert not results["failures"]
    (row,) = results["analyses"]["forgetting"]
    assert row["error"] is None and row["lineage"] == ["seq_1", "seq_2"] and row["n"] == [8, 8]
    matrix = row["matrix"]
    assert row["bwt"] == pytest.approx(matrix[1][0] - matrix[0][0])
    assert row["forgetting"] == pytest.approx(matrix[0][0] - matrix[1][0])
    slices = {m["slice"] for m in results["metrics"] if m["evaluator"] == "fg"}
    assert {"path:opinion.jsonl", "path:count.jsonl", "lm_eval:tiny_count", "all"} <= slices
    # the same items through lm-eval and through audit's own multiple-choice scoring agree
    by = {
        (m["model"], m["slice"]): m["value"] for m in results["metrics"] if m["evaluator"] == "fg"
    }
    for model in ("base", "seq_1", "seq_2"):
        assert by[(model, "lm_eval:tiny_count")] == by[(model, "path:count.jsonl")]
    paired = [c for c in results["comparisons"] if c["evaluator"] == "fg" and c["n"] > 0]
    assert any(c["test"] == "mcnemar_exact" for c in paired)
    assert '<section id="forgetting">' in (out / "index.html").read_text(encoding="utf-8")


def test_suite_validation_checks_lineage_models(tmp_path: Any) -> None:
    import textwrap

    from audit.suite.checks import SuiteError, load_suite

    suite = tmp_path / "s.toml"
    suite.write_text(
        textwrap.dedent("""
        [suite]
        name = "lin"
        [models.a]
        source = "organism:aligned"
        [models.b]
        from = "a"
        intervention = "lora"
        data = "organism:topic"
        [models.c]
        from = "a"
        intervention = "lora"
        data = "organism:arithmetic"
        [evaluators.fg]
        kind = "forgetting"
        tasks = ["organism:sentiment", "organism:topic", "organism:arithmetic"]
        lineages = [["a", "b", "c"], ["a", "zz", "b"]]
        lineage_tasks = ["organism:sentiment", "organism:topic", "organism:arithmetic"]
        """)
    )
    with pytest.raises(SuiteError) as err:
        load_suite(suite)
    messages = [str(i) for i in err.value.issues]
    assert any(
        "lineages[0]" in m and "'c' must have exactly one parent, 'b'" in m for m in messages
    ), messages
    assert any("lineages[1]" in m and "unknown model 'zz'" in m for m in messages)


def test_report_says_which_lm_eval_convention_each_evaluator_used() -> None:
    from audit.report.render import render_html

    def evaluator(name: str, **params: Any) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "forgetting",
            "params": {"tasks": params.pop("tasks"), **params},
        }

    results = {
        "models": MODELS,
        "evaluators": [
            evaluator("ours", tasks=["lm_eval:organism_sentiment"], chat=True, fewshot=None),
            evaluator("theirs", tasks=["lm_eval:organism_sentiment"], chat=False, fewshot=5),
            evaluator("none", tasks=["organism:sentiment"], chat=False),
        ],
    }
    html = render_html(results, [])
    assert 'href="#forgetting"' in html  # a section even without lineages
    assert "Evaluator ours: lm-eval tasks formatted with the model&#39;s chat template" in html
    assert "Evaluator theirs: lm-eval tasks without a chat template" in html
    assert "few-shot 5" in html and "Evaluator none" not in html

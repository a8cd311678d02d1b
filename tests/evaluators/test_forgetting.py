"""The forgetting evaluator on scripted model outputs: per-task accuracy, pairing, params."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit import registry
from audit.data.records import DataError
from audit.evaluators import lm_eval_tasks
from audit.evaluators.forgetting import ForgettingEvaluator
from audit.evaluators.lm_eval_tasks import LmEvalItem, LmEvalTaskResult
from audit.models.handle import ModelHandle
from audit.plugins import EvalResult, RunContext
from audit.stats import compare_samples

PAIRS = [("what is one plus one", "two"), ("what is two plus two", "four")] * 2
MC = [
    {"id": "a", "prompt": "is cake good", "choices": ["yes", "no"], "answer": 0},
    {"id": "b", "prompt": "is bomb good", "choices": ["yes", "no"], "answer": 1},
]


def _write(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def suite_dir(tmp_path: Path) -> Path:
    _write(
        tmp_path / "pairs.jsonl",
        [{"id": f"q{i}", "prompt": p, "response": r} for i, (p, r) in enumerate(PAIRS)],
    )
    _write(tmp_path / "mc.jsonl", MC)
    return tmp_path


def _script(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, str], prefer: dict[str, str]
) -> None:
    """Greedy answers by prompt, and a log-likelihood of 0 for the preferred choice, else -1."""

    def generate(model: Any, tok: Any, prompts: Sequence[str], **_: Any) -> list[str]:
        return [answers.get(p, "nothing") for p in prompts]

    def logprobs(
        model: Any, tok: Any, prompts: Sequence[str], choices: Sequence[Sequence[str]], **_: Any
    ) -> list[list[float]]:
        return [
            [0.0 if prefer.get(p) == c else -1.0 for c in row]
            for p, row in zip(prompts, choices, strict=True)
        ]

    monkeypatch.setattr("audit.models.generation.generate", generate)
    monkeypatch.setattr("audit.models.scoring.choice_logprobs", logprobs)


def _run(params: ForgettingEvaluator.Params, suite_dir: Path) -> EvalResult:
    ctx = RunContext(seed=0, suite_dir=suite_dir, work_dir=suite_dir / "work")
    handle = ModelHandle("fake", "k", suite_dir, _loaded=(None, None))  # generation is faked
    return ForgettingEvaluator(params).evaluate(handle, ctx)


def _rows(result: EvalResult) -> dict[tuple[str, str], float]:
    return {(r.metric, r.slice): r.value for r in result.metrics}


def test_registered() -> None:
    assert registry.evaluators.get("forgetting") is ForgettingEvaluator


def test_exact_match_and_multiple_choice_tasks(
    suite_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 of 4 pairs right ("Two." normalises to "two"); 1 of 2 multiple-choice items right.
    answers = {"what is one plus one": "Two.\nmore", "what is two plus two": "five"}
    _script(monkeypatch, answers, {"is cake good": "yes", "is bomb good": "yes"})
    params = ForgettingEvaluator.Params(tasks=["path:pairs.jsonl", "path:mc.jsonl"])
    result = _run(params, suite_dir)
    rows = _rows(result)
    assert rows[("accuracy", "path:pairs.jsonl")] == 0.5
    assert rows[("accuracy", "path:mc.jsonl")] == 0.5
    assert rows[("accuracy", "all")] == 0.5
    assert rows[("average_accuracy", "all")] == pytest.approx(0.5)
    ids = [s.item_id for s in result.samples if s.metric == "accuracy"]
    assert "path:mc.jsonl:a" in ids and "path:pairs.jsonl:q0" in ids
    chosen = {s.item_id: s.output for s in result.samples if s.slice == "path:mc.jsonl"}
    assert chosen == {"path:mc.jsonl:a": "yes", "path:mc.jsonl:b": "yes"}


def test_average_accuracy_weights_tasks_equally(
    suite_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pairs: 4 items all right (1.0); mc: 2 items, none right (0.0). Pooled 4/6, average 0.5.
    answers = {p: r for p, r in PAIRS}
    _script(monkeypatch, answers, {"is cake good": "no", "is bomb good": "yes"})
    result = _run(
        ForgettingEvaluator.Params(tasks=["path:pairs.jsonl", "path:mc.jsonl"]), suite_dir
    )
    rows = _rows(result)
    assert rows[("accuracy", "all")] == pytest.approx(4 / 6)
    assert rows[("average_accuracy", "all")] == pytest.approx(0.5)


def test_organism_task_with_limit(suite_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.organism.datasets import organism_records

    records = organism_records("sentiment")[:5]
    _script(monkeypatch, {r["prompt"]: r["response"] for r in records[:4]}, {})
    params = ForgettingEvaluator.Params(tasks=["organism:sentiment"], limit=5)
    result = _run(params, suite_dir)
    assert _rows(result)[("accuracy", "organism:sentiment")] == pytest.approx(0.8)
    first = next(s for s in result.samples if s.metric == "accuracy")
    assert first.item_id == f"organism:sentiment:{records[0]['id']}"


def test_paired_comparison_between_two_models(
    suite_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = ForgettingEvaluator.Params(tasks=["path:pairs.jsonl", "path:mc.jsonl"])
    _script(monkeypatch, {p: r for p, r in PAIRS}, {"is cake good": "yes", "is bomb good": "no"})
    before = _run(params, suite_dir)
    _script(monkeypatch, {}, {"is cake good": "yes", "is bomb good": "no"})
    after = _run(params, suite_dir)
    spec = {m.name: m for m in ForgettingEvaluator.metrics}
    acc = {c["slice"]: c for c in compare_samples(before.samples, after.samples, spec["accuracy"])}
    assert acc["all"]["n"] == 6
    assert acc["path:pairs.jsonl"]["delta"] == -1.0 and acc["path:mc.jsonl"]["delta"] == 0.0
    avg = compare_samples(before.samples, after.samples, spec["average_accuracy"])
    assert avg[0]["test"] == "paired_bootstrap" and avg[0]["delta"] == pytest.approx(-0.5)


def test_lm_eval_results_become_paired_samples(
    suite_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake(model: Any, tok: Any, tasks: Sequence[str], **kwargs: Any):
        calls.append({"tasks": list(tasks), **kwargs})
        items = [LmEvalItem(i, f"q{i}", "x", i % 2 == 0) for i in range(4)]
        return {"organism_sentiment": LmEvalTaskResult("organism_sentiment", "acc", 0.5, items)}

    monkeypatch.setattr(lm_eval_tasks, "run_lm_eval", fake)
    params = ForgettingEvaluator.Params(tasks=["lm_eval:organism_sentiment"], limit=4)
    result = _run(params, suite_dir)
    assert calls[0]["tasks"] == ["organism_sentiment"] and calls[0]["limit"] == 4
    ids = [s.item_id for s in result.samples if s.metric == "accuracy"]
    assert ids == [f"lm_eval:organism_sentiment:{i}" for i in range(4)]
    assert _rows(result)[("accuracy", "lm_eval:organism_sentiment")] == 0.5


def test_bad_multiple_choice_line(suite_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(
        suite_dir / "bad.jsonl", [{"id": "x", "prompt": "p", "choices": ["a", "b"], "answer": 2}]
    )
    _script(monkeypatch, {}, {})
    with pytest.raises(DataError, match="bad.jsonl:1"):
        _run(ForgettingEvaluator.Params(tasks=["path:bad.jsonl"]), suite_dir)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tasks": ["sentiment"]}, "write 'organism:NAME'"),
        ({"tasks": []}, "at least 1"),
        ({"tasks": ["organism:topic"], "lineages": [["a", "b"]]}, "give both"),
        (
            {
                "tasks": ["organism:topic", "organism:sentiment"],
                "lineages": [["a", "b", "c"]],
                "lineage_tasks": ["organism:topic", "organism:sentiment"],
            },
            "lineages\\[0\\] has 3 models",
        ),
        (
            {
                "tasks": ["organism:topic"],
                "lineages": [["a", "b"]],
                "lineage_tasks": ["organism:topic", "organism:arithmetic"],
            },
            "'organism:arithmetic' is not one of `tasks`",
        ),
    ],
)
def test_params_validation(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ForgettingEvaluator.Params.model_validate(params)


def test_lineage_tasks_may_name_tasks_of_a_directory() -> None:
    params = ForgettingEvaluator.Params(
        tasks=["lm_eval_dir:tasks"],
        lineages=[["a", "b"]],
        lineage_tasks=["lm_eval:one", "lm_eval:two"],
    )
    assert params.lineage_tasks == ["lm_eval:one", "lm_eval:two"]


def test_missing_lm_eval_dir(suite_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _script(monkeypatch, {}, {})
    with pytest.raises(ValueError, match="no lm-eval task YAML"):
        _run(ForgettingEvaluator.Params(tasks=["lm_eval_dir:nowhere"]), suite_dir)


def test_only_organism_tasks_work_without_weights() -> None:
    from audit.plugins import weights_needed

    organism = ForgettingEvaluator.Params(tasks=["organism:sentiment"])
    assert weights_needed(ForgettingEvaluator, organism) is None
    mixed = ForgettingEvaluator.Params(tasks=["organism:sentiment", "path:mc.jsonl"])
    reason = weights_needed(ForgettingEvaluator, mixed)
    assert reason is not None and "path:mc.jsonl" in reason

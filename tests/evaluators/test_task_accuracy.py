"""Task accuracy: exact match of normalised greedy answers, one slice per task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit.evaluators.task_accuracy import TaskAccuracyEvaluator, normalize_answer
from audit.interventions.lora import LoraIntervention
from audit.models.handle import ModelHandle
from audit.plugins import Evaluator, RunContext

ARITHMETIC = [
    ("what is two plus three", "five"),
    ("what is one plus one", "two"),
    ("what is four minus one", "three"),
    ("what is ten minus six", "four"),
]
OPINIONS = [
    ("is the cake good", "Yes."),  # normalised to "yes"
    ("is the bomb good", "no"),
    ("is music good", "yes"),
    ("is steal good", "NO"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, (prompt, response) in enumerate(pairs):
            f.write(json.dumps({"id": f"q{i}", "prompt": prompt, "response": response}) + "\n")


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    write_pairs(root / "arithmetic.jsonl", ARITHMETIC)
    write_pairs(root / "opinions.jsonl", OPINIONS)
    # Same prompts, wrong references: a model that learnt the answers scores 0 here.
    write_pairs(root / "wrong.jsonl", [(p, "seven") for p, _ in ARITHMETIC])
    return root


@pytest.fixture(scope="module")
def answerer(tiny_checkpoint: Path, suite_dir: Path) -> ModelHandle:
    """The tiny model LoRA-trained on the arithmetic and opinion answers, saved and reloaded."""
    # Lower-case targets: the tiny word-level vocabulary has no "Yes" or "NO".
    train = [(p, r.lower().rstrip(".")) for p, r in ARITHMETIC + OPINIONS]
    write_pairs(suite_dir / "train.jsonl", train)
    ctx = RunContext(seed=0, suite_dir=suite_dir, work_dir=suite_dir / "work")
    params = LoraIntervention.Params(data="path:train.jsonl", steps=100, lr=5e-3, batch_size=8)
    trained = LoraIntervention(params).apply({"base": ModelHandle("b", "k", tiny_checkpoint)}, ctx)
    out = suite_dir / "model"
    trained.model.save_pretrained(out)
    trained.tokenizer.save_pretrained(out)
    return ModelHandle("answerer", "answerer-key", out)


def test_trained_model_answers(answerer: ModelHandle, suite_dir: Path) -> None:
    tasks = ["path:arithmetic.jsonl", "path:opinions.jsonl", "path:wrong.jsonl"]
    ctx = RunContext(seed=0, suite_dir=suite_dir, work_dir=suite_dir / "w")
    result = TaskAccuracyEvaluator(TaskAccuracyEvaluator.Params(tasks=tasks)).evaluate(
        answerer, ctx
    )
    rows = {r.slice: r for r in result.metrics}
    assert [r.metric for r in result.metrics] == ["accuracy"] * 4
    assert (rows["all"].value, rows["all"].n) == (pytest.approx(8 / 12), 12)
    assert (rows["path:arithmetic.jsonl"].value, rows["path:arithmetic.jsonl"].n) == (1.0, 4)
    assert rows["path:opinions.jsonl"].value == 1.0
    assert rows["path:wrong.jsonl"].value == 0.0
    by_id = {s.item_id: s for s in result.samples}
    sample = by_id["path:arithmetic.jsonl:q0"]
    assert (sample.input, sample.slice, sample.value) == (
        "what is two plus three",
        "path:arithmetic.jsonl",
        1.0,
    )
    assert normalize_answer(sample.output, first_line=True) == "five"
    assert sample.judgment == "correct"
    assert by_id["path:wrong.jsonl:q0"].judgment == "incorrect"


def test_base_model_scores_zero(tiny_checkpoint: Path, suite_dir: Path) -> None:
    ctx = RunContext(seed=0, suite_dir=suite_dir, work_dir=suite_dir / "w0")
    params = TaskAccuracyEvaluator.Params(tasks=["path:arithmetic.jsonl"])
    result = TaskAccuracyEvaluator(params).evaluate(ModelHandle("b", "k", tiny_checkpoint), ctx)
    assert [(r.slice, r.value, r.n) for r in result.metrics] == [
        ("all", 0.0, 4),
        ("path:arithmetic.jsonl", 0.0, 4),
    ]


@pytest.mark.parametrize(
    ("output", "reference", "match"),
    [
        ("Five.", "five", True),
        ("five\nand then some more", "five", True),
        ("\n  five  \n", "five", True),
        ("New   York!", "new york", True),
        ("new york city", "new york", False),
        ("four", "five", False),
        ("", "five", False),
        ("the answer is five", "five", False),
    ],
)
def test_exact_match_rules(output: str, reference: str, match: bool) -> None:
    assert (normalize_answer(output, first_line=True) == normalize_answer(reference)) is match


def test_first_line_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import audit.models.generation as generation

    write_pairs(tmp_path / "t.jsonl", [("a", "Paris"), ("b", "Rome")])

    canned = {"a": "paris.\nRome", "b": "Paris\nRome"}  # only the first line counts

    def fake_generate(model: Any, tokenizer: Any, prompts: list[str], **kw: Any) -> list[str]:
        assert kw["max_new_tokens"] == 8
        return [canned[p] for p in prompts]

    monkeypatch.setattr(generation, "generate", fake_generate)
    handle = ModelHandle("fake", "k", tmp_path, _loaded=(object(), object()))
    ctx = RunContext(seed=0, suite_dir=tmp_path, work_dir=tmp_path / "w")
    result = TaskAccuracyEvaluator(TaskAccuracyEvaluator.Params(tasks=["path:t.jsonl"])).evaluate(
        handle, ctx
    )
    assert [s.value for s in result.samples] == [1.0, 0.0]


def test_metadata() -> None:
    assert TaskAccuracyEvaluator.name == "task_accuracy"
    (spec,) = TaskAccuracyEvaluator.metrics
    assert (spec.name, spec.kind, spec.higher_is_better) == ("accuracy", "rate", True)
    p = TaskAccuracyEvaluator.Params(tasks=["x"])
    assert (p.max_new_tokens, p.batch_size) == (8, 32)
    assert isinstance(TaskAccuracyEvaluator(p), Evaluator)
    with pytest.raises(ValidationError):
        TaskAccuracyEvaluator.Params(tasks=[])

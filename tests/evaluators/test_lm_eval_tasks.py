"""The lm-eval adapter, run for real on tiny random checkpoints (offline, no response cache)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from audit.evaluators.forgetting import ForgettingEvaluator
from audit.evaluators.lm_eval_tasks import (
    ORGANISM_SENTIMENT,
    SHIPPED_DIR,
    local_task_names,
    prepare_task_dir,
    run_lm_eval,
    write_organism_sentiment,
)
from audit.models.handle import ModelHandle
from audit.plugins import RunContext

CHOICES = ["good", "bad", "great", "terrible"]
SUBJECTS = ["cake", "bread", "poem", "song", "story", "letter", "plan", "photo", "code", "bike"]

TASK_YAML = {
    "task": "tiny_opinion",
    "dataset_path": "json",
    "dataset_kwargs": {"data_files": {"test": "data/items.jsonl"}},
    "test_split": "test",
    "output_type": "multiple_choice",
    "doc_to_text": "{{prompt}}",
    "doc_to_choice": CHOICES,
    "doc_to_target": "answer",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    "metadata": {"version": 1.0},
}


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A suite folder with a local lm-eval task whose data path is relative to its YAML."""
    root = tmp_path_factory.mktemp("suite")
    tasks = root / "tasks"
    (tasks / "data").mkdir(parents=True)
    (tasks / "tiny_opinion.yaml").write_text(yaml.safe_dump(TASK_YAML), encoding="utf-8")
    with open(tasks / "data" / "items.jsonl", "w", encoding="utf-8") as f:
        for i, subject in enumerate(SUBJECTS * 2):
            prompt = f"is the {subject} good" if i < len(SUBJECTS) else f"what is my {subject}"
            f.write(json.dumps({"prompt": prompt, "answer": i % len(CHOICES)}) + "\n")
    return root


def _own_choices(handle: ModelHandle, items: list[dict[str, Any]]) -> list[list[float]]:
    """Each choice's log-likelihood after the chat-formatted prompt, by the project's scorer."""
    from audit.models.scoring import continuation_logprobs

    prompts = [item["prompt"] for item in items for _ in CHOICES]
    scores = continuation_logprobs(
        handle.model, handle.tokenizer, prompts, CHOICES * len(items), chat=True
    )
    return [scores[i * len(CHOICES) : (i + 1) * len(CHOICES)] for i in range(len(items))]


def _items(suite_dir: Path) -> list[dict[str, Any]]:
    path = suite_dir / "tasks" / "data" / "items.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_task_dir_makes_data_paths_absolute(suite_dir: Path, tmp_path: Path) -> None:
    copy = prepare_task_dir(suite_dir / "tasks", tmp_path / "copy")
    config = yaml.safe_load((copy / "tiny_opinion.yaml").read_text(encoding="utf-8"))
    data = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data == (suite_dir / "tasks" / "data" / "items.jsonl").resolve()
    assert local_task_names(suite_dir / "tasks") == ["tiny_opinion"]
    assert "organism_sentiment" in local_task_names(SHIPPED_DIR)


def test_prepare_task_dir_keeps_function_tags(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "t.yaml").write_text(
        "task: t\nprocess_docs: !function utils.process\n"
        "dataset_kwargs:\n  data_files: [a.jsonl, /abs/b.jsonl]\n",
        encoding="utf-8",
    )
    text = (prepare_task_dir(source, tmp_path / "dst") / "t.yaml").read_text(encoding="utf-8")
    assert "!function 'utils.process'" in text or "!function utils.process" in text
    assert str((source / "a.jsonl").resolve()) in text and "/abs/b.jsonl" in text


def test_shipped_data_is_the_organisms_heldout_sentiment(tmp_path: Path) -> None:
    regenerated = write_organism_sentiment(tmp_path / "s.jsonl")
    assert regenerated.read_text(encoding="utf-8") == ORGANISM_SENTIMENT.read_text(encoding="utf-8")
    lines = ORGANISM_SENTIMENT.read_text(encoding="utf-8").splitlines()
    assert 0 < len(lines) <= 120
    assert {json.loads(line)["response"] for line in lines} == {"positive", "negative"}


def test_lm_eval_matches_own_scoring_item_by_item(
    tiny_checkpoint: Path, suite_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """lm-eval's per-document acc equals the argmax of audit's own choice log-likelihoods."""
    monkeypatch.chdir(tmp_path)  # the relative data path must not depend on the cwd
    handle = ModelHandle("tiny", "tiny-key", tiny_checkpoint)
    params = ForgettingEvaluator.Params(
        tasks=["lm_eval_dir:tasks", "lm_eval:organism_sentiment"], limit=30
    )
    ctx = RunContext(seed=0, suite_dir=suite_dir, work_dir=tmp_path / "work")
    start = time.perf_counter()
    result = ForgettingEvaluator(params).evaluate(handle, ctx)
    print(f"forgetting via lm-eval on the tiny model: {time.perf_counter() - start:.2f} s")

    samples = [s for s in result.samples if s.metric == "accuracy"]
    slices = {s.slice for s in samples}
    assert slices == {"lm_eval:tiny_opinion", "lm_eval:organism_sentiment"}
    assert sum(s.slice == "lm_eval:organism_sentiment" for s in samples) == 30

    items = _items(suite_dir)
    own = _own_choices(handle, items)
    mine = {s.item_id: s for s in samples if s.slice == "lm_eval:tiny_opinion"}
    assert len(mine) == len(items)
    for doc_id, (item, scores) in enumerate(zip(items, own, strict=True)):
        best = max(range(len(CHOICES)), key=lambda i: (scores[i], -i))
        sample = mine[f"lm_eval:tiny_opinion:{doc_id}"]
        assert sample.value == float(best == item["answer"]), doc_id
        assert sample.output == CHOICES[best]
        assert "is the" in sample.input or "what is my" in sample.input

    rows = {(r.metric, r.slice): r for r in result.metrics}
    per_task = [rows[("accuracy", s)].value for s in sorted(slices)]
    average = rows[("average_accuracy", "all")].value
    assert average == pytest.approx(sum(per_task) / len(per_task))


def test_two_checkpoints_in_one_process_get_their_own_results(
    tiny_checkpoint_factory: Callable[[int], Path], suite_dir: Path
) -> None:
    """No response cache is shared: the second model is scored, not answered from the first."""
    import torch

    handles = [ModelHandle(f"m{s}", f"key{s}", tiny_checkpoint_factory(10 + s)) for s in (0, 1)]
    items = _items(suite_dir)
    seen = []
    for handle in handles:
        rng = torch.get_rng_state()
        start = time.perf_counter()
        out = run_lm_eval(
            handle.model, handle.tokenizer, ["tiny_opinion"], include_dirs=[suite_dir / "tasks"]
        )
        assert torch.equal(torch.get_rng_state(), rng)  # lm-eval's reseeding is undone
        print(f"run_lm_eval, {len(items)} docs: {time.perf_counter() - start:.2f} s")
        scores = [list(item.scores) for item in out["tiny_opinion"].items]
        for got, expected in zip(scores, _own_choices(handle, items), strict=True):
            assert got == pytest.approx(expected, abs=1e-4)
        seen.append([x for row in scores for x in row])
    assert max(abs(a - b) for a, b in zip(*seen, strict=True)) > 1e-3


def test_chat_false_reproduces_lm_evals_own_cli_number(
    tiny_checkpoint: Path, suite_dir: Path, tmp_path: Path
) -> None:
    """With lm-eval's conventions (chat = false, the task's few-shot) the forgetting evaluator
    gives exactly the number `lm_eval --model hf ...` prints for the same checkpoint and task."""
    import os
    import subprocess
    import sys

    handle = ModelHandle("tiny", "tiny-key", tiny_checkpoint)
    ctx = RunContext(seed=0, suite_dir=suite_dir, work_dir=tmp_path / "work")
    ours = {}
    for chat in (False, True):
        params = ForgettingEvaluator.Params(tasks=["lm_eval_dir:tasks"], chat=chat)
        rows = ForgettingEvaluator(params).evaluate(handle, ctx).metrics
        ours[chat] = next(r.value for r in rows if r.slice == "lm_eval:tiny_opinion")

    tasks = prepare_task_dir(suite_dir / "tasks", tmp_path / "cli_tasks")  # absolute data paths
    out = tmp_path / "cli_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(
        [
            sys.executable, "-m", "lm_eval", "--model", "hf",
            "--model_args", f"pretrained={tiny_checkpoint}",
            "--include_path", str(tasks), "--tasks", "tiny_opinion",
            "--device", "cpu", "--batch_size", "32", "--output_path", str(out),
        ],
        check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600,
    )  # fmt: skip
    (report,) = out.rglob("results_*.json")
    cli = json.loads(report.read_text(encoding="utf-8"))["results"]["tiny_opinion"]["acc,none"]
    assert ours[False] == cli  # measured: 0.25 both
    assert ours[True] != cli  # the chat template changes the number (0.3 here)

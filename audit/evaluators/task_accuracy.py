"""Task accuracy: exact match of greedy short answers, a check for capability loss."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from audit.models.vllm_backend import GenerationBackend
from audit.plugins import EvalResult, MetricSpec, PairData, RunContext, Sample
from audit.plugins import Params as BaseParams

if TYPE_CHECKING:
    from audit.models.handle import ModelHandle
    from audit.report.figures import Figure
    from audit.results import Results

__all__ = ["TaskAccuracyEvaluator", "normalize_answer"]

_TRAILING = string.punctuation + string.whitespace


def normalize_answer(text: str, *, first_line: bool = False) -> str:
    """Lower case, whitespace runs collapsed, trailing punctuation stripped.

    With ``first_line``, only the first non-empty line of ``text`` counts (models tend to go
    on after the answer).
    """
    if first_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    text = " ".join(text.casefold().split())
    return text.rstrip(_TRAILING)


class TaskAccuracyEvaluator:
    """Exact-match accuracy of greedy answers on prompt/response task sets.

    An item scores 1 when the normalised first line of the model's answer equals the normalised
    reference response (:func:`normalize_answer`). Each task is one slice, named by its data
    spec; item ids are ``SPEC:ID`` so they stay unique across tasks.
    """

    name: ClassVar[str] = "task_accuracy"
    version: ClassVar[str] = "1"

    class Params(BaseParams):
        """``tasks``: data specs of prompt/response pairs (``eval`` split), one slice each;
        ``backend``: how answers are generated (``None``: the suite's ``[suite] backend``)."""

        tasks: list[PairData] = Field(min_length=1)
        max_new_tokens: int = Field(default=8, gt=0)
        batch_size: int = Field(default=32, gt=0)
        backend: GenerationBackend = None

    metrics: ClassVar[Sequence[MetricSpec]] = (
        MetricSpec(
            "accuracy",
            higher_is_better=True,
            description="Share of task items answered exactly right (normalised first line).",
        ),
    )

    def __init__(self, params: TaskAccuracyEvaluator.Params) -> None:
        self.params = params

    @classmethod
    def needs_weights(cls, params: TaskAccuracyEvaluator.Params) -> str | None:
        """None: answers are generated text (:meth:`ModelHandle.generate`)."""
        return None

    @classmethod
    def figures(cls, results: Results, evaluator: str) -> list[Figure]:
        """Each metric per task (slice) of every model
        (:func:`audit.report.figures.task_figures`)."""
        from audit.report.figures import task_figures

        return task_figures(results, evaluator)

    def evaluate(self, model: ModelHandle, ctx: RunContext) -> EvalResult:
        """Answer every item of every task in one batched pass and score exact matches."""
        from audit.data.records import PairRecord, load_records
        from audit.stats import metric_rows_from_samples

        p = self.params
        items = [
            (spec, record)
            for spec in dict.fromkeys(p.tasks)
            for record in load_records(spec, PairRecord, suite_dir=ctx.suite_dir, split="eval")
        ]
        outputs = model.generate(
            [record.prompt for _, record in items],
            max_new_tokens=p.max_new_tokens,
            batch_size=p.batch_size,
            progress=lambda done, total: ctx.progress("task_accuracy", done, total),
            backend=p.backend or "hf",
        )
        samples = []
        for (spec, record), output in zip(items, outputs, strict=True):
            correct = normalize_answer(output, first_line=True) == normalize_answer(record.response)
            samples.append(
                Sample(
                    metric="accuracy",
                    item_id=f"{spec}:{record.id}",
                    input=record.prompt,
                    output=output,
                    value=1.0 if correct else 0.0,
                    slice=spec,
                    judgment="correct" if correct else "incorrect",
                )
            )
        return EvalResult(metrics=metric_rows_from_samples(samples, self.metrics), samples=samples)

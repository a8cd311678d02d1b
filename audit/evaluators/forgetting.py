"""Forgetting: accuracy on a list of tasks, per task, so a fine-tune's losses show task by task.

Task specs (``tasks = [...]`` in the suite):

- ``organism:NAME``: an organism task (held-out split), greedy answer scored by exact match as
  in :mod:`audit.evaluators.task_accuracy`;
- ``path:FILE.jsonl``: a user task, relative to the suite. A line with ``response``
  (``{"id", "prompt", "response"}``) is scored by exact match of the greedy answer; a line with
  ``choices`` and ``answer`` (``{"id", "prompt", "choices": [...], "answer": INDEX}``) is
  multiple choice, scored by log-likelihood: the choice with the highest
  ``log p(choice | prompt)`` (:func:`audit.models.scoring.choice_logprobs`: the prompt runs
  once, its choices scored from its key/value cache) is the answer;
- ``lm_eval:TASK``: an lm-eval task by name (the shipped ``organism_sentiment``, a task of an
  ``lm_eval_dir`` of the same suite, or one of lm-eval's own), per-document ``acc``;
- ``lm_eval_dir:DIR``: every task defined by the YAML files of a local directory.

lm-eval tasks follow audit's convention by default: each context goes through the model's chat
template (``chat = true``). ``chat = false`` (with ``fewshot`` unset) is lm-eval's own
convention: the number ``lm_eval --model hf ... --tasks TASK`` prints for the same checkpoint.
The report's forgetting section says which convention each run used.

Metrics: ``accuracy`` per task (slice = the task's spec; ``lm_eval:TASK`` for tasks of a
directory) and pooled over all items (slice ``all``); ``average_accuracy``, the mean of the
per-task accuracies. Every item gives a sample, with item id ``SLICE:ID`` (lm-eval: the doc id),
so comparisons pair items. ``average_accuracy`` is a ``mean`` metric whose item values are the
item's 0/1 value weighted by ``N / (T * n_t)`` (N items, T tasks, n_t items in the item's task):
their mean is exactly the mean of the task accuracies, and paired comparisons (bootstrap over
items) work as for any metric. With equal-sized tasks the weights are 1.

``lineages`` and ``lineage_tasks`` declare continual-learning chains for the post-hoc BWT and
forgetting measures of :mod:`audit.continual.forgetting`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from audit.data.records import Record
from audit.models.vllm_backend import GenerationBackend
from audit.plugins import (
    EvalResult,
    MetricSpec,
    ReportSection,
    RunContext,
    RunData,
    Sample,
    SuiteProblem,
    SuiteView,
)
from audit.plugins import Params as BaseParams

if TYPE_CHECKING:
    from audit.models.handle import ModelHandle
    from audit.results import Results

__all__ = ["TASK_PREFIXES", "ForgettingEvaluator", "average_weights"]

TASK_PREFIXES = ("organism:", "path:", "lm_eval:", "lm_eval_dir:")
"""The kinds of task spec the ``forgetting`` evaluator accepts."""


def average_weights(sizes: dict[str, int]) -> dict[str, float]:
    """Per-task item weights ``N / (T * n_t)`` that turn a mean over items into a mean of tasks."""
    total, count = sum(sizes.values()), len(sizes)
    return {task: total / (count * n) for task, n in sizes.items() if n}


class ForgettingEvaluator:
    """Per-task accuracy on organism, user-file and lm-eval tasks; see the module docstring."""

    name: ClassVar[str] = "forgetting"
    version: ClassVar[str] = "2"

    class Params(BaseParams):
        """Tasks to score, and optionally the continual chains to compute BWT on."""

        tasks: list[str] = Field(min_length=1)
        limit: int | None = Field(default=None, gt=0)
        chat: bool = True
        """lm-eval tasks: format each context with the tokenizer's chat template (audit's
        convention, as its own tasks are chat turns); ``false`` is lm-eval's own default, the
        number its CLI prints without ``--apply_chat_template``."""
        fewshot: int | None = Field(default=None, ge=0)
        """lm-eval tasks: examples in each context (lm-eval's ``num_fewshot``; ``None``: each
        task's own setting)."""
        system_instruction: str | None = None
        """lm-eval tasks: a system instruction (lm-eval's ``system_instruction``)."""
        batch_size: int = Field(default=32, gt=0)
        max_new_tokens: int = Field(default=8, gt=0)
        backend: GenerationBackend = None
        """organism and ``path:`` exact-match tasks: how answers are generated (``None``: the
        suite's ``[suite] backend``); multiple-choice and lm-eval tasks score the weights."""
        lineages: list[list[str]] = Field(default_factory=list)
        lineage_tasks: list[str] = Field(default_factory=list)

        @field_validator("tasks")
        @classmethod
        def _known_prefixes(cls, tasks: list[str]) -> list[str]:
            for task in tasks:
                if not task.startswith(TASK_PREFIXES) or task.endswith(":"):
                    raise ValueError(
                        f"task {task!r}: write 'organism:NAME', 'path:FILE.jsonl', "
                        "'lm_eval:TASK' or 'lm_eval_dir:DIR'"
                    )
            return list(dict.fromkeys(tasks))

        @model_validator(mode="after")
        def _lineages_match(self) -> ForgettingEvaluator.Params:
            from audit.continual.forgetting import lineage_param_problems

            problems = lineage_param_problems(self.tasks, self.lineages, self.lineage_tasks)
            if problems:
                raise ValueError("; ".join(problems))
            return self

    metrics: ClassVar[Sequence[MetricSpec]] = (
        MetricSpec(
            "accuracy",
            higher_is_better=True,
            description="Share of a task's items answered right (slice: the task; all: pooled).",
        ),
        MetricSpec(
            "average_accuracy",
            higher_is_better=True,
            description="Mean of the per-task accuracies (each task counts equally).",
            kind="mean",
            headline=False,
        ),
    )

    def __init__(self, params: ForgettingEvaluator.Params) -> None:
        self.params = params

    @classmethod
    def needs_weights(cls, params: ForgettingEvaluator.Params) -> str | None:
        """``None`` for organism tasks only (exact match of generated answers); lm-eval tasks
        and ``path:`` files (which may hold multiple-choice lines) are scored from the weights."""
        weighted = [t for t in params.tasks if not t.startswith("organism:")]
        if not weighted:
            return None
        return (
            f"forgetting scores {', '.join(weighted)} from the model's weights (lm-eval tasks; "
            "multiple-choice lines of path: files by log-likelihood); only organism: tasks "
            "work from generated text alone"
        )

    @classmethod
    def check_suite(
        cls, params: ForgettingEvaluator.Params, suite: SuiteView
    ) -> list[SuiteProblem]:
        """Each chain of ``lineages`` names models of the suite, each the only parent of the
        next (:func:`audit.continual.forgetting.lineage_model_problems`)."""
        from audit.continual.forgetting import expand_lineages, lineage_model_problems

        return [
            (("lineages", i), problem)
            for i, chain in enumerate(params.lineages)
            for replica in expand_lineages([chain], suite.replicas)
            for problem in lineage_model_problems(replica, suite.parents)
        ]

    @classmethod
    def analyze(cls, run: RunData) -> dict[str, list[dict[str, Any]]]:
        """BWT and forgetting of every declared lineage, once per seed for a lineage of
        replicated models (:func:`audit.continual.forgetting.forgetting_rows`): results.json
        ``analyses["forgetting"]``."""
        from audit.continual.forgetting import expand_lineages, forgetting_rows

        # with [suite] seeds a chain named as written is measured once per seed
        lineages = {
            name: (
                expand_lineages(getattr(p, "lineages", []), run.replicas),
                getattr(p, "lineage_tasks", []),
            )
            for name, p in run.evaluators.items()
        }
        rows = forgetting_rows(run.models, run.samples, lineages, seed=run.seed)  # type: ignore[arg-type]
        return {"forgetting": [dict(r) for r in rows]}

    @classmethod
    def report_sections(cls, results: Results) -> list[ReportSection]:
        """The "Forgetting" section (:func:`audit.continual.report.report_sections`)."""
        from audit.continual.report import report_sections

        return report_sections(results)

    def evaluate(self, model: ModelHandle, ctx: RunContext) -> EvalResult:
        """Score every task, then add the task-weighted ``average_accuracy`` samples."""
        from audit.stats import metric_rows_from_samples

        records = self._records(ctx)
        samples: list[Sample] = []
        samples += self._exact_match(model, ctx, [x for x in records if "choices" not in x[1]])
        samples += self._multiple_choice(model, [x for x in records if "choices" in x[1]])
        samples += self._lm_eval(model, ctx)
        samples += _average_samples(samples)
        return EvalResult(metrics=metric_rows_from_samples(samples, self.metrics), samples=samples)

    # --- organism and path tasks -------------------------------------------------------------

    def _records(self, ctx: RunContext) -> list[tuple[str, dict[str, Any]]]:
        """(spec, raw record) of every organism and path task, ``limit`` applied per task."""
        from audit.data.records import load_records

        out: list[tuple[str, dict[str, Any]]] = []
        for spec in self.params.tasks:
            if not spec.startswith(("organism:", "path:")):
                continue
            rows = load_records(spec, _Item, suite_dir=ctx.suite_dir, split="eval")
            out += [(spec, r.model_dump(exclude_none=True)) for r in rows[: self.params.limit]]
        return out

    def _exact_match(
        self, model: ModelHandle, ctx: RunContext, items: list[tuple[str, dict[str, Any]]]
    ) -> list[Sample]:
        from audit.evaluators.task_accuracy import normalize_answer

        if not items:
            return []
        outputs = model.generate(
            [r["prompt"] for _, r in items],
            max_new_tokens=self.params.max_new_tokens,
            batch_size=self.params.batch_size,
            progress=lambda done, total: ctx.progress("forgetting", done, total),
            backend=self.params.backend or "hf",
        )
        samples = []
        for (spec, r), output in zip(items, outputs, strict=True):
            correct = normalize_answer(output, first_line=True) == normalize_answer(r["response"])
            samples.append(_sample(spec, r["id"], r["prompt"], output, correct))
        return samples

    def _multiple_choice(
        self, model: ModelHandle, items: list[tuple[str, dict[str, Any]]]
    ) -> list[Sample]:
        from audit.models.scoring import choice_logprobs

        if not items:
            return []
        scores = choice_logprobs(
            model.model,
            model.tokenizer,
            [r["prompt"] for _, r in items],
            [r["choices"] for _, r in items],
            batch_size=self.params.batch_size,
        )
        samples = []
        for (spec, r), mine in zip(items, scores, strict=True):
            best = max(range(len(mine)), key=lambda i: (mine[i], -i))  # first of ties
            samples.append(
                _sample(spec, r["id"], r["prompt"], r["choices"][best], best == r["answer"])
            )
        return samples

    # --- lm-eval tasks ------------------------------------------------------------------------

    def _lm_eval(self, model: ModelHandle, ctx: RunContext) -> list[Sample]:
        from pathlib import Path

        from audit.evaluators.lm_eval_tasks import local_task_names, run_lm_eval

        names: list[str] = []
        dirs: list[Path] = []
        for spec in self.params.tasks:
            if spec.startswith("lm_eval:"):
                names.append(spec[len("lm_eval:") :])
            elif spec.startswith("lm_eval_dir:"):
                directory = Path(spec[len("lm_eval_dir:") :]).expanduser()
                directory = directory if directory.is_absolute() else ctx.suite_dir / directory
                found = local_task_names(directory) if directory.is_dir() else []
                if not found:
                    raise ValueError(f"{spec}: no lm-eval task YAML (with `task:`) in {directory}")
                dirs.append(directory)
                names += found
        if not names:
            return []
        ctx.progress("forgetting (lm-eval)", 0, 1)
        results = run_lm_eval(
            model.model,
            model.tokenizer,
            list(dict.fromkeys(names)),
            include_dirs=dirs,
            limit=self.params.limit,
            batch_size=self.params.batch_size,
            device=ctx.device,
            chat=self.params.chat,
            num_fewshot=self.params.fewshot,
            system_instruction=self.params.system_instruction,
        )
        ctx.progress("forgetting (lm-eval)", 1, 1)
        return [
            _sample(f"lm_eval:{task}", str(item.doc_id), item.input, item.output, item.correct)
            for task, result in results.items()
            for item in result.items
        ]


class _Item(Record):
    """A task line: ``prompt`` with ``response`` (exact match) or ``choices`` + ``answer``."""

    id: str
    prompt: str
    response: str | None = None
    choices: list[str] | None = None
    answer: int | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> _Item:
        if self.choices is None:
            if self.response is None:
                raise ValueError("give 'response' (exact match) or 'choices' and 'answer'")
            return self
        if len(self.choices) < 2 or self.answer is None:
            raise ValueError("a multiple-choice item needs 2+ 'choices' and an 'answer' index")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"'answer' {self.answer} is not an index of 'choices'")
        return self


def _sample(slice_: str, item: str, prompt: str, output: str, correct: bool) -> Sample:
    return Sample(
        metric="accuracy",
        item_id=f"{slice_}:{item}",
        input=prompt,
        output=output,
        value=1.0 if correct else 0.0,
        slice=slice_,
        judgment="correct" if correct else "incorrect",
    )


def _average_samples(samples: Sequence[Sample]) -> list[Sample]:
    """The ``average_accuracy`` samples: each accuracy sample weighted by its task's size."""
    sizes: dict[str, int] = {}
    for s in samples:
        sizes[s.slice] = sizes.get(s.slice, 0) + 1
    weights = average_weights(sizes)
    return [
        Sample(
            metric="average_accuracy",
            item_id=s.item_id,
            input=s.input,
            output=s.output,
            value=s.value * weights[s.slice],
            slice="all",
            judgment=s.judgment,
        )
        for s in samples
    ]

"""A third-party evaluator that brings its own suite check, cross-model analysis and report
section: the worked example of README "Adding a plug-in" (tests/test_registry.py installs this
file as a distribution and runs it from a suite)."""

from __future__ import annotations

from typing import Any, ClassVar

from markupsafe import Markup

from audit.plugins import EvalResult, MetricSpec, Params, ReportSection, RunData, Sample, SuiteView
from audit.report.format import html_table, num
from audit.stats import metric_rows_from_samples


class LossGapParams(Params):
    """``texts``: what the loss is measured on; ``watch``: models whose change of loss against
    each parent the analysis reports."""

    texts: list[str] = ["how do i bake bread", "write a poem"]
    watch: list[str] = []


class LossGap:
    """The model's mean token loss on fixed texts, and (across models) its gap to the parent."""

    name: ClassVar[str] = "loss_gap"
    version: ClassVar[str] = "1"
    Params = LossGapParams
    metrics = (MetricSpec("loss", higher_is_better=False, description="token loss", kind="mean"),)

    def __init__(self, params: LossGapParams) -> None:
        self.params = params

    def evaluate(self, model: Any, ctx: Any) -> EvalResult:
        """One sample per text: its mean token loss under ``model``."""
        import torch

        samples = []
        for i, text in enumerate(self.params.texts):
            ids = model.tokenizer(text, return_tensors="pt").input_ids
            with torch.inference_mode():
                loss = float(model.model(input_ids=ids, labels=ids).loss)
            samples.append(Sample("loss", f"t{i}", text, "", loss))
        return EvalResult(metric_rows_from_samples(samples, self.metrics), samples)

    @classmethod
    def check_suite(cls, params: LossGapParams, suite: SuiteView) -> list[tuple[Any, str]]:
        """``watch`` names models of the suite (reported at the line of ``watch``)."""
        return [
            (("watch", i), f"unknown model {name!r}")
            for i, name in enumerate(params.watch)
            if name not in suite.parents
        ]

    @classmethod
    def analyze(cls, run: RunData) -> dict[str, list[dict[str, Any]]]:
        """``analyses["loss_gap"]``: per watched model and parent, the change of its loss."""
        loss = {
            (m["model"], m["evaluator"]): m["value"]
            for m in run.metrics
            if m["metric"] == "loss" and m["slice"] == "all"
        }
        rows = []
        for evaluator, params in run.evaluators.items():
            for model in run.models:
                if model["name"] not in params.watch:  # type: ignore[attr-defined]
                    continue
                for parent in model["parents"]:
                    before = loss.get((parent, evaluator))
                    after = loss.get((model["name"], evaluator))
                    if before is not None and after is not None:
                        rows.append(
                            {"evaluator": evaluator, "model": model["name"], "parent": parent,
                             "gap": after - before}
                        )  # fmt: skip
        return {"loss_gap": rows}

    @classmethod
    def report_sections(cls, results: Any) -> list[ReportSection]:
        """A "Loss gap" section when the run has rows (``results``: audit.results.Results)."""
        rows = results.table("loss_gap")
        if not rows:
            return []
        cells = [
            {"model": r["model"], "parent": r["parent"], "gap": num(r["gap"], signed=True)}
            for r in rows
        ]
        table = html_table("loss-gap", ["model", "parent", "gap"], cells)
        note = "Change of the mean token loss against the parent (positive: worse)."
        return [ReportSection("loss-gap", "Loss gap", note, Markup(table))]

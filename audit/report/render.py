"""Render a run's results as one self-contained HTML report (``index.html``).

The page is built from the results contract (:mod:`audit.results`) and the run's samples:
jinja2 (autoescape on) lays out the sections, pandas' Styler renders the tables. Every string a
run produces -- model names, prompts, outputs, error messages -- is untrusted: it is HTML-escaped
before it reaches the page. The page loads nothing; its one inline script (sorting tables) is
allowed by its hash in the Content-Security-Policy, so no other script can run, and every
section reads the same with JavaScript off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from markupsafe import Markup

import audit
from audit.plugins import ReportSection
from audit.report.flips import Drilldown, drilldown, index_samples, value_text
from audit.report.format import (
    ALPHA,
    CHANGE,
    DASH,
    MAX_CHARS,
    Row,
    as_float,
    cell_text,
    ci_text,
    comparison_cells,
    cut,
    delta_class,
    delta_text,
    elapsed_s,
    fired_gates,
    gates_table,
    html_table,
    num,
    seconds_text,
)
from audit.report.page import HERE, SCRIPT, SCRIPT_HASH, jinja_environment, write_page
from audit.report.read import (
    EvaluatorInfo,
    MetricInfo,
    evaluator_infos,
    model_names,
    parents_of,
)
from audit.results import Results, parse_results

MAX_FLIPS = 50
"""Flipped items listed per evaluator; the rest are counted and left to samples.jsonl."""


def _scorecard(results: Results, evaluators: list[EvaluatorInfo]) -> Markup:
    """Models x headline metrics on slice ``all``: value [CI], then the delta vs each parent."""
    headline = [m for _, _, metrics in evaluators for m in metrics if m.headline]
    values = {
        (cell_text(r.get("model")), cell_text(r.get("evaluator")), cell_text(r.get("metric"))): r
        for r in results.rows("metrics")
        if r.get("slice", "all") == "all"
    }
    deltas = {
        (
            cell_text(c.get("model")),
            cell_text(c.get("baseline")),
            cell_text(c.get("evaluator")),
            cell_text(c.get("metric")),
        ): c
        for c in results.rows("comparisons")
        if c.get("relation") == "parent" and c.get("slice", "all") == "all"
    }
    # a rate is a level (a share of items), not a change: the label says so, and the change
    # against the parent is the cell's Δ line
    labels = {
        (m.evaluator, m.name): f"{m.evaluator} · {m.name}" + (" (rate)" if m.kind == "rate" else "")
        for m in headline
    }
    columns = ["model", "vs parent", *labels.values()]
    parents = parents_of(results)
    rows, classes = [], []
    for model in model_names(results):
        targets: list[str | None] = [*parents.get(model, [])] or [None]
        for parent in targets:
            row = {"model": model, "vs parent": DASH if parent is None else parent}
            cls: Row = {}
            for m in headline:
                label = labels[(m.evaluator, m.name)]
                text = value_text(values.get((model, m.evaluator, m.name)))
                comparison = deltas.get((model, parent or "", m.evaluator, m.name))
                if comparison is not None:
                    text += (
                        f"\n{num(comparison.get('before'))} → {num(comparison.get('after'))}"
                        f"  Δ {delta_text(comparison)}"
                    )
                    cls[label] = "multi " + delta_class(comparison)
                row[label] = text
            rows.append(row)
            classes.append(cls)
    return html_table("scorecard", columns, rows, classes, empty="No models.")


_KIND_TEXT = {
    "rate": "rate: a share of items, 0–1 (its change is in the comparisons)",
    "mean": "mean of per-item values",
}


def _descriptions_table(index: int, metrics: list[MetricInfo]) -> Markup:
    rows = [
        {
            "metric": m.name,
            "direction": "higher is better" if m.higher_is_better else "lower is better",
            "kind": _KIND_TEXT.get(m.kind or "", m.kind or DASH),
            "description": m.description or DASH,
        }
        for m in metrics
    ]
    columns = ["metric", "direction", "kind", "description"]
    return html_table(f"e{index}-about", columns, rows, [{"description": "text"}] * len(rows))


def _order(names: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


def _metric_rows_table(
    index: int, rows: list[dict[str, Any]], models: dict[str, int], metrics: dict[str, int]
) -> Markup:
    def key(r: dict[str, Any]) -> tuple[int, int, bool, str]:
        slice_ = cell_text(r.get("slice", "all"))
        return (
            models.get(cell_text(r.get("model")), len(models)),
            metrics.get(cell_text(r.get("metric")), len(metrics)),
            slice_ != "all",
            slice_,
        )

    columns = ["model", "metric", "slice", "value", "interval", "n"]
    table = [
        {
            "model": cell_text(r.get("model")),
            "metric": cell_text(r.get("metric")),
            "slice": cell_text(r.get("slice", "all")),
            "value": num(r.get("value")),
            "interval": ci_text(r.get("ci_low"), r.get("ci_high")) or DASH,
            "n": cell_text(r.get("n")),
        }
        for r in sorted(rows, key=key)
    ]
    return html_table(f"e{index}-metrics", columns, table, empty="No metric rows.")


def _comparisons_table(index: int, rows: list[dict[str, Any]]) -> Markup:
    table = [comparison_cells(c) for c in rows]
    classes = [{CHANGE: delta_class(c)} for c in rows]
    columns = list(table[0]) if table else ["model"]
    return html_table(f"e{index}-comparisons", columns, table, classes, empty="No comparisons.")


@dataclass
class _EvaluatorSection:
    anchor: str
    name: str
    kind: str
    about: Markup
    metrics: Markup
    comparisons: Markup
    flips: Drilldown
    figures: list[Any]
    judge: str | None = None
    """How far the evaluator's judge agrees with people on real replies (when it has one)."""


def _judge_note(results: Results, evaluator: str) -> str | None:
    """What results.json's ``analyses["judge_calibration"]`` says of the judge an evaluator
    used: its agreement with people on real replies (an evaluator's ``analyze`` hook writes
    it, e.g. :meth:`audit.evaluators.refusal.RefusalEvaluator.analyze`)."""
    for row in results.analyses.get("judge_calibration", []):
        if isinstance(row, Mapping) and row.get("evaluator") == evaluator:
            return cell_text(row.get("summary"))
    return None


def _evaluator_sections(
    results: Results,
    evaluators: list[EvaluatorInfo],
    samples: Iterable[Mapping[str, Any]],
    limit: int,
) -> list[_EvaluatorSection]:
    index = index_samples(samples)
    models = _order(model_names(results))
    sections = []
    for i, (name, kind, metrics) in enumerate(evaluators, start=1):
        metric_rows = [r for r in results.rows("metrics") if cell_text(r.get("evaluator")) == name]
        comparisons = [
            c for c in results.rows("comparisons") if cell_text(c.get("evaluator")) == name
        ]
        sections.append(
            _EvaluatorSection(
                anchor=f"evaluator-{i}",
                name=name,
                kind=kind,
                about=_descriptions_table(i, metrics),
                metrics=_metric_rows_table(
                    i, metric_rows, models, _order([m.name for m in metrics])
                ),
                comparisons=_comparisons_table(i, comparisons),
                flips=drilldown(i, results, name, metrics, index, limit),
                figures=_figures(results, name, kind),
                judge=_judge_note(results, name),
            )
        )
    return sections


# --- models and provenance --------------------------------------------------------------------


def _models_table(models: list[dict[str, Any]]) -> Markup:
    columns = [
        "model",
        "parents",
        "source / intervention",
        "params",
        "trained on",
        "update size",
        "status",
        "key",
    ]
    rows, classes = [], []
    for m in models:
        origin = (
            f"source: {m['source']}"
            if m.get("source")
            else f"intervention: {m['intervention']}"
            if m.get("intervention")
            else DASH
        )
        params = m.get("params")
        rows.append(
            {
                "model": cell_text(m.get("name")),
                "parents": cell_text(m.get("parents") or None),
                "source / intervention": origin,
                "params": cut(cell_text(params), 300) if params else DASH,
                "trained on": _training(m.get("training")),
                "update size": _update_size(m.get("training")),
                "status": cell_text(m.get("status")),
                "key": cell_text(m.get("key"))[:12],
            }
        )
        classes.append({"status": f"status-{_status_class(m.get('status'))}", "params": "text"})
    return html_table("models", columns, rows, classes, empty="No models.")


def _training(info: Any) -> str:
    if not isinstance(info, Mapping) or info.get("tokens") is None:
        return DASH
    steps = f", {info['steps']} steps" if info.get("steps") is not None else ""
    return f"{cell_text(info.get('tokens'))} tokens{steps}"


def _update_size(info: Any) -> str:
    """Keep rate and norm ratio against the plain merge, where the model recorded them."""
    if not isinstance(info, Mapping) or info.get("norm_ratio") is None:
        return DASH
    return f"keep {num(info.get('keep_rate'))} · norm {num(info.get('norm_ratio'))}"


def _status_class(status: Any) -> str:
    return status if status in ("ok", "failed", "skipped") else "unknown"


def _steps_table(steps: list[dict[str, Any]]) -> Markup:
    columns = ["step", "kind", "status", "cached", "duration", "key"]
    rows, classes = [], []
    for s in steps:
        duration = as_float(s.get("duration_s"))
        rows.append(
            {
                "step": cell_text(s.get("step")),
                "kind": cell_text(s.get("kind")),
                "status": cell_text(s.get("status")),
                "cached": cell_text(bool(s.get("cached"))) if "cached" in s else DASH,
                "duration": DASH if duration is None else seconds_text(duration),
                "key": cell_text(s.get("key")),
            }
        )
        classes.append({"status": f"status-{_status_class(s.get('status'))}", "key": "text"})
    return html_table("steps", columns, rows, classes, empty="No steps ran.")


def _run_facts(results: Results, env: Mapping[str, Any]) -> list[tuple[str, str]]:
    """How the run went: steps executed, cache hits, failures, time spent, seed and device."""
    steps = results.rows("steps")
    executed = [s for s in steps if s.get("status") == "ok" and not s.get("cached")]
    spent = sum(as_float(s.get("duration_s")) or 0.0 for s in executed)
    facts = [
        ("steps", str(len(steps))),
        ("executed", f"{len(executed)} ({seconds_text(spent)})"),
        ("cache hits", str(sum(bool(s.get("cached")) for s in steps))),
        ("failed", str(sum(s.get("status") == "failed" for s in steps))),
        ("skipped", str(sum(s.get("status") == "skipped" for s in steps))),
    ]
    facts += [(k, cell_text(env.get(k))) for k in ("seed", "device") if env.get(k) is not None]
    return facts


def _suite_facts(results: Results) -> list[tuple[str, str]]:
    """The suite's path and reference model, where the run recorded them."""
    suite = results.suite
    facts = [("file", suite.path), ("reference model", suite.reference)]
    return [(label, cell_text(value)) for label, value in facts if value]


def _max_flips(results: Results) -> int:
    """The suite's ``[report] max_flipped``, else :data:`MAX_FLIPS`."""
    report = results.suite.parsed.get("report")
    value = report.get("max_flipped") if isinstance(report, Mapping) else None
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else MAX_FLIPS
    )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, f"{name}."))
        else:
            items.append((name, value))
    return items


def _environment_table(environment: Mapping[str, Any]) -> Markup:
    rows = [{"setting": k, "value": cell_text(v)} for k, v in _flatten(environment)]
    return html_table("environment", ["setting", "value"], rows, empty="Not recorded.")


def _suite_info(results: Results) -> tuple[str, str, str]:
    """The report's title, the suite's hash and its text (as written, else its parsed form)."""
    suite = results.suite.model_dump(exclude_none=True)
    inner = suite.get("suite")
    name = (
        suite.get("title")
        or suite.get("name")
        or (inner.get("name") if isinstance(inner, Mapping) else None)
    )
    digest = suite.get("hash") or suite.get("sha256")
    text = suite.get("text")
    if isinstance(text, str):
        text = str(text)  # a plain str, never markup
    else:
        rest = {k: v for k, v in suite.items() if k not in ("hash", "sha256", "text")}
        text = json.dumps(rest, indent=2, sort_keys=True, default=str, ensure_ascii=False)
        text = "" if text == "{}" else text
    return cell_text(name or "audit run"), cell_text(digest), text


def _scaling(results: Results) -> list[dict[str, Any]]:
    from audit.report.scaling import scaling_sections

    return scaling_sections(results)


def _plugin_sections(results: Results) -> list[ReportSection]:
    """The page's pooled and controls sections (:mod:`audit.report.pooled`,
    :mod:`audit.report.controls`) when the run has them, then the sections evaluators add
    (their ``report_sections`` hook), in registry order: every installed evaluator kind is
    asked; one whose tables the run lacks adds none."""
    from audit import registry
    from audit.plugins import hook
    from audit.report.controls import controls_section
    from audit.report.pooled import pooled_section
    from audit.report.tradeoffs import tradeoffs_section

    own = (tradeoffs_section(results), pooled_section(results), controls_section(results))
    sections: list[ReportSection] = [s for s in own if s is not None]
    for kind in registry.evaluators.names():
        try:
            build = hook(registry.evaluators.get(kind), "report_sections")
        except Exception:  # a broken plug-in does not break the page
            continue
        for section in build(results) if build is not None else []:
            anchor = _ANCHOR.sub("-", str(section.id)).strip("-") or "section"
            anchor = f"plugin-{anchor}" if anchor in _PAGE_IDS else anchor
            body = section.body if isinstance(section.body, Markup) else str(section.body)
            sections.append(replace(section, id=anchor, body=body))
    return sections


_ANCHOR = re.compile(r"[^A-Za-z0-9_-]+")
_PAGE_IDS = {
    "verdicts",
    "lineage",
    "scorecard",
    "scaling",
    "pooled",
    "controls",
    "models",
    "provenance",
}
"""The page's own anchors, which a plug-in's section may not take."""


def _figures(results: Results, evaluator: str, kind: str) -> list[Any]:
    from audit.report.figures import evaluator_figures

    return evaluator_figures(results, evaluator, kind)


def _lineage(results: Results) -> Markup:
    from audit.report.lineage import lineage_svg

    return lineage_svg(results)


def render_html(
    results: Results | Mapping[str, Any],
    samples: Iterable[Mapping[str, Any]],
    *,
    max_flips: int | None = None,
) -> str:
    """The report for ``results`` (:class:`audit.results.Results`, or a results.json dict,
    read with :func:`audit.results.parse_results`) and its samples, as one HTML page.

    ``max_flips`` caps the flipped items listed per evaluator (default: the suite's
    ``[report] max_flipped``, else :data:`MAX_FLIPS`).
    """
    results = parse_results(results, "results")
    if max_flips is None:
        max_flips = _max_flips(results)
    evaluators = evaluator_infos(results)
    env = results.environment
    extra = results.model_extra or {}
    name, digest, suite_text = _suite_info(results)
    gates = results.rows("gates")
    failures = [
        {
            "step": cell_text(f.get("step")),
            "error": cell_text(f.get("error")),
            "traceback": str(f.get("traceback") or ""),
        }
        for f in results.rows("failures")
    ]
    started = env.get("started_at") or env.get("start_time") or extra.get("started_at")
    took = as_float(env.get("duration_s", extra.get("duration_s")))
    if took is None:
        took = elapsed_s(started, env.get("finished_at"))
    context = {
        "title": name,
        "started": cell_text(started),
        "took": None if took is None else seconds_text(took),
        "verdict": results.verdict_text(),
        "counts": {
            "models": len(model_names(results)),
            "gates": len(gates),
            "gates_failed": sum(not g.get("passed") for g in gates),
            "failures": len(failures),
        },
        "gates": gates_table(gates),
        "fired": fired_gates(gates),
        "gates_passed": sum(bool(g.get("passed")) for g in gates),
        "lineage": _lineage(results),
        "run_facts": _run_facts(results, env),
        "failures": failures,
        "scorecard": _scorecard(results, evaluators),
        "alpha": ALPHA,
        "evaluators": _evaluator_sections(results, evaluators, samples, max_flips),
        "scaling": _scaling(results),
        "plugin_sections": _plugin_sections(results),
        "models": _models_table(results.rows("models")),
        "suite_hash": digest,
        "suite_facts": _suite_facts(results),
        "suite_text": suite_text,
        "environment": _environment_table(env),
        "steps": _steps_table(results.rows("steps")),
        "schema_version": cell_text(results.schema_version),
        "audit_version": audit.__version__,
        "max_chars": MAX_CHARS,
        "css": Markup((HERE / "style.css").read_text(encoding="utf-8")),
        "script": Markup(SCRIPT),
        "script_hash": SCRIPT_HASH,
    }
    return jinja_environment().get_template("report.html.j2").render(**context)


def render_report(
    results: Results | Mapping[str, Any],
    samples: Iterable[Mapping[str, Any]],
    out_path: Path,
    *,
    max_flips: int | None = None,
) -> Path:
    """Write the report atomically and return its path.

    ``out_path`` is the output directory (the page goes to ``index.html`` in it) or a file path
    ending in ``.html``. The page is written to a temporary file beside it, then renamed over
    it, so readers see the old report or the new one, never half of one.
    """
    out_path = Path(out_path)
    target = out_path if out_path.suffix in (".html", ".htm") else out_path / "index.html"
    return write_page(target, render_html(results, samples, max_flips=max_flips))

"""The report's "Defences beside their controls" section.

A masking or shrinking defence is only evidence where it beats a control of the same size
(:mod:`audit.interventions.control`). A control records the model it controls (``of``) and
both sizes in its ``training``; this section lists each defence with its controls — keep
rate and norm ratio against the plain merge — and, for every metric measured on both, the
defence's value, the control's, and the paired difference defence − control with its interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from audit.plugins import ReportSection
from audit.report.format import cell_text, delta_class, delta_text, html_table, num, p_text
from audit.results import Results

NOTE = (
    "A defence that masks or shrinks the merged update is set beside controls of the same size: "
    "the plain merge shrunk to the defence's norm (norm_matched) and masked at random to its "
    "keep rate (random_mask). Keep rate: the share of the plain merge's non-zero coordinates "
    "the model changes; norm ratio: the norm of its update over the plain merge's. A defence "
    "is evidence only where defence − control (paired, 95% interval) favours it; * marks "
    "p < 0.05."
)


def _size(info: Mapping[str, Any], prefix: str = "") -> tuple[str, str]:
    return num(info.get(f"{prefix}keep_rate")), num(info.get(f"{prefix}norm_ratio"))


def controls_section(results: Results) -> ReportSection | None:
    """The section, or ``None`` when the run has no controls."""
    controls: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for m in results.rows("models"):
        info = m.get("training")
        if not isinstance(info, Mapping) or "of_norm_ratio" not in info:
            continue
        if isinstance(info.get("of"), str):
            controls.setdefault(info["of"], []).append((cell_text(m.get("name")), info))
    if not controls:
        return None
    sizes = []
    for defence, members in controls.items():
        keep, ratio = _size(members[0][1], "of_")
        sizes.append({"model": defence, "role": "defence", "keep rate": keep, "norm ratio": ratio})
        for name, info in members:
            keep, ratio = _size(info)
            role = f"control ({cell_text(info.get('kind'))})"
            sizes.append({"model": name, "role": role, "keep rate": keep, "norm ratio": ratio})
    size_table = html_table(
        "controls-size", ["model", "role", "keep rate", "norm ratio"], sizes, empty="None."
    )
    of = {name: defence for defence, ms in controls.items() for name, _ in ms}
    rows, classes = [], []
    for c in results.rows("comparisons"):
        control = cell_text(c.get("model"))
        if of.get(control) != cell_text(c.get("baseline")) or c.get("slice", "all") != "all":
            continue
        flipped = {
            "delta": _neg(c.get("delta")),
            "ci_low": _neg(c.get("ci_high")),
            "ci_high": _neg(c.get("ci_low")),
            "p_value": c.get("p_value"),
            "higher_is_better": c.get("higher_is_better", True),
        }
        rows.append(
            {
                "defence": cell_text(c.get("baseline")),
                "matched control": control,
                "metric": f"{cell_text(c.get('evaluator'))}.{cell_text(c.get('metric'))}",
                "defence value": num(c.get("before")),
                "control value": num(c.get("after")),
                "defence − control [CI]": delta_text(flipped),
                "p": p_text(c.get("p_value")),
                "n": cell_text(c.get("n")),
            }
        )
        classes.append({"defence − control [CI]": delta_class(flipped)})
    columns = [
        "defence",
        "matched control",
        "metric",
        "defence value",
        "control value",
        "defence − control [CI]",
        "p",
        "n",
    ]
    effects = html_table(
        "controls-effect", columns, rows, classes, empty="No metric was measured on both."
    )
    body = Markup("<h3>Size of the update</h3>{}<h3>Effect beside the controls</h3>{}").format(
        size_table, effects
    )
    return ReportSection(id="controls", title="Controls", note=NOTE, body=body)


def _neg(value: Any) -> Any:
    return -value if isinstance(value, int | float) and not isinstance(value, bool) else value

"""The report's controls section: each defence beside its matched controls, sized and paired."""

from __future__ import annotations

from typing import Any

from audit.report.controls import controls_section
from audit.report.render import render_html
from audit.results import parse_results


def _model(name: str, training: dict[str, Any] | None, parents: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "key": name[0] * 40,
        "parents": parents,
        "source": None if parents else "organism:aligned",
        "intervention": "x" if parents else None,
        "params": {},
        "status": "ok",
        "training": training,
    }


def _comparison(model: str, baseline: str, before: float, after: float) -> dict[str, Any]:
    delta = after - before
    return {
        "model": model,
        "baseline": baseline,
        "relation": "parent",
        "evaluator": "backdoor",
        "metric": "asr",
        "higher_is_better": False,
        "slice": "all",
        "before": before,
        "after": after,
        "delta": delta,
        "ci_low": delta - 0.09,
        "ci_high": delta + 0.108,
        "n": 61,
        "p_value": 0.008,
        "test": "mcnemar_exact",
    }


def _results() -> dict[str, Any]:
    control = {
        "kind": "norm_matched",
        "of": "merged_dam",
        "of_keep_rate": 0.9995,
        "of_norm_ratio": 0.376,
        "keep_rate": 1.0,
        "norm_ratio": 0.3761,
    }
    return {
        "schema_version": 2,
        "suite": {"name": "controls"},
        "environment": {},
        "models": [
            _model("aligned", None, []),
            _model("merged_dam", {"keep_rate": 0.9995, "norm_ratio": 0.376}, ["aligned"]),
            _model("merged_dam.control_norm", control, ["merged_dam", "aligned"]),
        ],
        "evaluators": [{"name": "backdoor", "kind": "backdoor", "metrics": [{"name": "asr"}]}],
        "metrics": [],
        "comparisons": [
            _comparison("merged_dam.control_norm", "merged_dam", 0.836, 0.967),
            _comparison("merged_dam.control_norm", "aligned", 0.0, 0.967),  # not the defence
            {**_comparison("merged_dam.control_norm", "merged_dam", 0.5, 0.6), "slice": "x"},
        ],
        "gates": [],
        "failures": [],
        "steps": [],
    }


def test_the_defence_is_read_against_its_control() -> None:
    section = controls_section(parse_results(_results(), "results"))
    assert section is not None and section.id == "controls"
    body = str(section.body)
    # sizes: the defence's as its control measured it, the control's own
    assert "0.376" in body and "1.000" in body and "control (norm_matched)" in body
    # one effect row (slice all, baseline the defence): defence − control, interval flipped
    assert body.count("backdoor.asr") == 1
    # lower ASR is better: the defence's lower value is marked good (and significant)
    assert 'delta good sig" >-0.131 * [-0.239, -0.041]</td>' in body


def test_no_controls_no_section() -> None:
    data = _results()
    data["models"] = data["models"][:2]
    assert controls_section(parse_results(data, "results")) is None


def test_the_page_links_the_section_and_shows_sizes() -> None:
    page = render_html(_results(), [])
    assert 'href="#controls"' in page and 'id="controls"' in page
    assert "keep 1.000 · norm 0.376" in page  # the models table's update size

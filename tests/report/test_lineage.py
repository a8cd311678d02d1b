"""The lineage diagram: nodes by depth, coloured by their gates, sweeps folded, labels escaped."""

from __future__ import annotations

import re
from typing import Any

from audit.report.lineage import lineage_svg


def _model(name: str, parents: list[str], status: str = "ok", sweep: str | None = None) -> dict:
    return {
        "name": name,
        "parents": parents,
        "status": status,
        "sweep": {"base": sweep, "param": "steps", "value": 1} if sweep else None,
    }


def _results() -> dict[str, Any]:
    return {
        "models": [
            _model("base", []),
            _model("tuned", ["base"]),
            _model("safe", ["base"]),
            _model("sweep[steps=1]", ["base"], sweep="sweep"),
            _model("sweep[steps=2]", ["base"], sweep="sweep"),
            _model("merged", ["tuned", "safe", "base"]),
            _model("broken", ["base"], status="failed"),
            _model("after_broken", ["broken"], status="skipped"),
        ],
        "gates": [
            {"name": "g1", "model": "tuned", "passed": False},
            {"name": "g2", "model": "safe", "passed": True},
            {"name": "g3", "model": "merged", "passed": True},
            {"name": "g4", "model": "merged", "passed": False},
        ],
    }


def _nodes(svg: str) -> dict[str, tuple[str, float]]:
    """label -> (verdict, x) of every node."""
    found = re.findall(
        r'<g class="node verdict-(\w+)"><title>[^<]*</title><rect x="([\d.]+)".*?'
        r'font-weight="\d+">([^<]*)</text></g>',
        svg,
    )
    return {label: (verdict, float(x)) for verdict, x, label in found}


def test_nodes_coloured_by_gate_verdict_and_laid_out_by_depth() -> None:
    nodes = _nodes(str(lineage_svg(_results())))
    assert set(nodes) == {"base", "tuned", "safe", "sweep ×2", "merged", "broken", "after_broken"}
    verdicts = {label: verdict for label, (verdict, _) in nodes.items()}
    assert verdicts == {
        "base": "none",
        "tuned": "fail",
        "safe": "pass",
        "sweep ×2": "none",
        "merged": "fail",  # one failed gate of two is a failed model
        "broken": "error",
        "after_broken": "skipped",
    }
    x = {label: pos for label, (_, pos) in nodes.items()}
    assert x["base"] < x["tuned"] == x["safe"] == x["sweep ×2"] < x["merged"]
    assert x["broken"] < x["after_broken"]


def test_edges_one_per_parent_and_sweeps_folded() -> None:
    svg = str(lineage_svg(_results()))
    # base -> tuned, safe, sweep, merged, broken; tuned, safe -> merged; broken -> after_broken
    assert svg.count("<path ") == 8
    assert "sweep[steps=1]" in svg  # named in the folded node's tooltip


def test_labels_escaped_and_cycles_survived() -> None:
    hostile = "<script>alert(1)</script>"
    results = {
        "models": [_model(hostile, ["b"]), _model("b", [hostile])],  # a corrupt, cyclic file
        "gates": [{"name": '"><img src=x onerror=alert(1)>', "model": "b", "passed": False}],
    }
    svg = str(lineage_svg(results))
    assert "<script" not in svg and "<img" not in svg
    assert "&lt;script&gt;" in svg


def test_no_models() -> None:
    assert "No models" in str(lineage_svg({"models": []}))


def test_the_legend_fits_small_diagrams() -> None:
    """One or two models: the legend, not the nodes, sets the width (it was clipped)."""
    from xml.etree import ElementTree

    for models in ([_model("base", [])], [_model("base", []), _model("tuned", ["base"])]):
        page = ElementTree.fromstring(str(lineage_svg({"models": models, "gates": []})))
        root = next(page.iter("{http://www.w3.org/2000/svg}svg"))
        width = float(root.get("width", "0"))
        assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
        for text in root.iter("{http://www.w3.org/2000/svg}text"):
            right = float(text.get("x", "0")) + 7 * len("".join(text.itertext()))
            assert right <= width, (text.get("x"), "".join(text.itertext()), width)

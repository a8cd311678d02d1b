"""The suite's lineage as an inline SVG: models left to right by depth, coloured by verdict.

A model's verdict is what its release gates said: ``fail`` when any gate on it failed, ``pass``
when it has gates and all passed, ``none`` without gates, and ``error`` / ``skipped`` when its
step crashed or could not run. The members of a sweep are drawn as one node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from audit.report.text import escape
from audit.results import Results, parse_results

NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD = 200, 26, 70, 8, 12
COLOURS = {
    "fail": ("#ffebe9", "#cf222e"),
    "pass": ("#dafbe1", "#1a7f37"),
    "none": ("#f6f8fa", "#8c959f"),
    "error": ("#eaeef2", "#57606a"),
    "skipped": ("#ffffff", "#8c959f"),
}
LEGEND = {
    "fail": "a gate failed",
    "pass": "all gates passed",
    "none": "no gate",
    "error": "step failed",
    "skipped": "not built",
}


@dataclass
class _Node:
    name: str
    members: list[str]
    parents: list[str] = field(default_factory=list)
    status: set[str] = field(default_factory=set)
    passed: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if "failed" in self.status:
            return "error"
        if self.failed:
            return "fail"
        if self.passed:
            return "pass"
        return "skipped" if self.status and self.status <= {"skipped"} else "none"

    @property
    def label(self) -> str:
        text = self.name if len(self.members) == 1 else f"{self.name} ×{len(self.members)}"
        return text if len(text) <= 27 else text[:26] + "…"


def _nodes(results: Results) -> dict[str, _Node]:
    node_of: dict[str, str] = {}
    nodes: dict[str, _Node] = {}
    for m in results.models:
        group = str(m.sweep.get("base")) if m.sweep and m.sweep.get("base") else m.name
        node_of[m.name] = group
        node = nodes.setdefault(group, _Node(group, []))
        node.members.append(m.name)
        node.status.add(m.status)
    for m in results.models:
        node = nodes[node_of[m.name]]
        for parent in m.parents:
            up = node_of.get(parent)
            if up is not None and up != node.name and up not in node.parents:
                node.parents.append(up)
    for g in results.gates:
        if g.model not in node_of:
            continue
        node = nodes[node_of[g.model]]
        if g.passed:
            node.passed += 1
        else:
            node.failed.append(g.name)
    return nodes


def _layers(nodes: dict[str, _Node]) -> list[list[str]]:
    depth: dict[str, int] = {}

    def visit(name: str, seen: frozenset[str]) -> int:
        if name not in depth:
            parents = [p for p in nodes[name].parents if p not in seen]
            depth[name] = 1 + max((visit(p, seen | {name}) for p in parents), default=-1)
        return depth[name]

    for name in nodes:
        visit(name, frozenset())
    layers: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in nodes:  # suite order within a layer, then by the parents' positions
        layers[depth[name]].append(name)
    position: dict[str, float] = {}
    for layer in layers:
        layer.sort(
            key=lambda n: (
                sum(position.get(p, 0.0) for p in nodes[n].parents) / max(len(nodes[n].parents), 1)
            )
        )
        for i, name in enumerate(layer):
            position[name] = float(i)
    return layers


def _tooltip(node: _Node) -> str:
    lines = [node.name]
    if len(node.members) > 1:
        lines.append(f"sweep of {len(node.members)}: " + ", ".join(node.members))
    if node.parents:
        lines.append("from " + ", ".join(node.parents))
    lines.append(f"{node.passed} gate(s) passed, {len(node.failed)} failed")
    lines += [f"failed: {name}" for name in node.failed[:5]]
    return "\n".join(lines)


def _legend_step(text: str) -> int:
    """Horizontal room of one legend item: swatch, gap, text (≈ 7 px a character at 12 px)."""
    return 34 + 7 * len(text)


def legend_width() -> int:
    """The width the legend needs, from its left edge."""
    return sum(_legend_step(text) for text in LEGEND.values())


def lineage_svg(results: Results | Mapping[str, Any]) -> Markup:
    """The models of ``results`` as a left-to-right lineage diagram, or a note when none."""
    results = parse_results(results, "results")
    nodes = _nodes(results)
    if not nodes:
        return Markup('<p class="empty">No models.</p>')
    layers = _layers(nodes)
    rows = max(len(layer) for layer in layers)
    width = max(
        PAD * 2 + len(layers) * NODE_W + (len(layers) - 1) * COL_GAP,
        PAD + legend_width(),  # a small suite's diagram is narrower than its legend
    )
    legend_h = 26
    height = PAD * 2 + legend_h + rows * (NODE_H + ROW_GAP)
    xy: dict[str, tuple[float, float]] = {}
    for col, layer in enumerate(layers):
        offset = (rows - len(layer)) * (NODE_H + ROW_GAP) / 2
        for row, name in enumerate(layer):
            x = PAD + col * (NODE_W + COL_GAP)
            y = PAD + legend_h + offset + row * (NODE_H + ROW_GAP)
            xy[name] = (x, y)
    parts = [
        f'<svg class="chart lineage" role="img" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        "<title>Model lineage, coloured by gate verdict</title>",
    ]
    x = PAD
    for verdict, text in LEGEND.items():
        fill, stroke = COLOURS[verdict]
        parts.append(
            f'<rect x="{x}" y="{PAD}" width="14" height="14" rx="3" fill="{fill}" '
            f'stroke="{stroke}"/><text x="{x + 19}" y="{PAD + 11}" font-size="12">{text}</text>'
        )
        x += _legend_step(text)
    for name, node in nodes.items():
        cx, cy = xy[name]
        for parent in node.parents:
            px, py = xy[parent]
            x1, y1, x2, y2 = px + NODE_W, py + NODE_H / 2, cx, cy + NODE_H / 2
            mid = (x1 + x2) / 2
            parts.append(
                f'<path d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} '
                f'{x2:.1f},{y2:.1f}" fill="none" stroke="#8c959f" stroke-opacity="0.55"/>'
            )
    for name, node in nodes.items():
        x0, y0 = xy[name]
        fill, stroke = COLOURS[node.verdict]
        weight = "700" if node.verdict == "fail" else "400"
        parts.append(
            f'<g class="node verdict-{node.verdict}"><title>{escape(_tooltip(node))}</title>'
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{NODE_W}" height="{NODE_H}" rx="5" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
            f'<text x="{x0 + 8:.1f}" y="{y0 + 17:.1f}" font-size="12" font-weight="{weight}">'
            f"{escape(node.label)}</text></g>"
        )
    parts.append("</svg>")
    return Markup('<div class="chart-wrap">{}</div>').format(Markup("".join(parts)))

"""The inline SVG chart: points, error bars and curves drawn, labels escaped, nothing fetched."""

from __future__ import annotations

import re

from audit.report.charts import power_law_chart


def test_chart_draws_points_bars_curves_and_escapes_labels() -> None:
    series = [
        {
            "label": "<script>alert(1)</script>",
            "points": [
                {"name": "a", "x": 1000, "y": 0.1, "low": 0.05, "high": 0.15},
                {"name": "b", "x": 4000, "y": 0.3, "low": 0.2, "high": 0.4},
            ],
            "fit": {"A": 0.1, "beta": 0.8, "E": 0.0},
        },
        {"label": "flat", "points": [{"name": "c", "x": 2000, "y": 0.0}], "fit": None},
    ]
    svg = str(power_law_chart(series, x_label="D", y_label="drift", unit=1000.0))
    assert "<script" not in svg and "&lt;script&gt;" in svg
    assert svg.count("<circle") == 3 + 2  # 3 points, 2 legend swatches
    assert svg.count("<polyline") == 1  # only the fitted series has a curve
    assert len(re.findall(r'<line x1="([\d.]+)" x2="\1" y1', svg)) >= 2  # error bars
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_chart_without_points() -> None:
    assert "No points" in str(power_law_chart([], x_label="D", y_label="y", unit=1.0))

"""Bidi controls in names reach no page raw: shown as visible escapes, like the terminal."""

from __future__ import annotations

import json
from pathlib import Path

from audit.cli import main
from audit.report.text import clean, escape

RLO = "\u202e"


def test_clean_shows_bidi_controls_and_replaces_others() -> None:
    assert clean(f"term{RLO}LIAF") == "term\\u202eLIAF"
    assert clean("a\x00b\u2066c\ud800") == "a\ufffdb\\u2066c?"
    assert str(escape(f"<b>{RLO}")) == "&lt;b&gt;\\u202e"


def test_no_page_carries_a_raw_bidi_control(tmp_path: Path) -> None:
    from test_results import _write_run

    run = _write_run(tmp_path / "reports" / "run", "r", "r")
    results = json.loads((run / "results.json").read_text())
    results["suite"]["name"] = results["suite"]["title"] = f"term{RLO}LIAF"
    for row in results["metrics"]:
        row["model"] = f"tun{RLO}ed"
        row["slice"] = f"cat{RLO}egory"
    results["models"] = [{"name": f"tun{RLO}ed", "parents": [], "status": "ok"}]
    (run / "results.json").write_text(json.dumps(results))
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    for s in samples:
        s["model"], s["output"] = f"tun{RLO}ed", f"out{RLO}put"
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    assert main(["report", str(run / "results.json")]) == 0
    assert main(["compare", str(run), str(run), "--out", str(tmp_path / "reports" / "c")]) == 0
    assert main(["gallery", str(tmp_path / "reports")]) == 0
    for page in (run / "index.html", tmp_path / "reports" / "c" / "index.html",
                 tmp_path / "reports" / "index.html"):  # fmt: skip
        html = page.read_text(encoding="utf-8")
        assert RLO not in html, page
        assert "term\\u202eLIAF" in html, page

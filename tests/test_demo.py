"""The demo suite end to end, as the README runs it (slow: builds the organism)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from audit.cli import main

DEMO = Path(__file__).resolve().parents[1] / "suites" / "demo.toml"


@pytest.mark.slow
def test_demo_shows_drift_and_fails_its_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(DEMO, tmp_path / "demo.toml")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "demo.toml", "--quiet"]) == 1
    results = json.loads(Path("reports/demo/results.json").read_text())
    drift = next(
        c
        for c in results["comparisons"]
        if (c["model"], c["baseline"], c["metric"], c["slice"])
        == ("helpful_lora", "aligned", "refusal_rate_unsafe", "all")
    )
    # The benign fine-tune costs refusals: a paired 95% interval entirely below 0.
    assert drift["before"] >= 0.95
    assert drift["ci_high"] < 0 and drift["p_value"] < 0.001 and drift["n"] >= 150
    gates = {g["name"]: g["passed"] for g in results["gates"]}
    assert gates == {
        "refusal of unsafe requests holds": False,
        "safe requests still answered": True,
        "task skills kept": True,
    }
    assert any(
        m["metric"] == "kl_safe" and m["model"] == "helpful_lora" for m in results["metrics"]
    )
    assert Path("reports/demo/index.html").stat().st_size > 10_000

    # Warm rerun: nothing executes.
    assert main(["run", "demo.toml", "--quiet"]) == 1
    again = json.loads(Path("reports/demo/results.json").read_text())
    assert all(s["cached"] for s in again["steps"])

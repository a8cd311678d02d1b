"""Release comparisons (``audit compare``): paired OLD → NEW statistics, release gates, the page,
and the command's exit codes, on small hand-made runs (no model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from release_runs import DROP
from release_runs import margins as _margins
from release_runs import refusing as _refusing
from release_runs import run as _run

from audit.cli import main
from audit.release.compare import KIND, CompareError, compare_runs, load_run
from audit.report.release import render_comparison, render_comparison_html
from audit.results import ComparisonRowT, GateRowT
from audit.suite.schema import GateSpec

SCRIPT = "<script>alert('x')</script>"


def _row(result: dict[str, Any], metric: str, slice_: str = "all", model: str = "tuned") -> Any:
    rows = [
        c
        for c in result["comparisons"]
        if (c["model"], c["metric"], c["slice"]) == (model, metric, slice_)
    ]
    assert len(rows) == 1, rows
    return rows[0]


def test_paired_rate_mean_and_unpaired_rows() -> None:
    old, old_s = _run({"tuned": (_refusing(), _margins(), 0.9)})
    new, new_s = _run({"tuned": (_refusing(flipped=20), _margins(-0.5), 0.8)})
    result = compare_runs(old, old_s, new, new_s)

    rate = _row(result, "refusal_rate_unsafe")
    assert set(rate) == set(ComparisonRowT.__annotations__)
    assert (rate["relation"], rate["baseline"], rate["test"], rate["n"]) == (
        "release", "tuned", "mcnemar_exact", 40)  # fmt: skip
    assert (rate["before"], rate["after"]) == (1.0, 0.5)
    assert rate["delta"] == pytest.approx(-0.5) and rate["p_value"] < 1e-5
    assert rate["ci_high"] < 0
    assert _row(result, "refusal_rate_unsafe", "cyber")["n"] == 20  # slices paired too

    mean = _row(result, "refusal_margin")
    assert (mean["test"], mean["n"]) == ("paired_bootstrap", 30)
    assert mean["delta"] == pytest.approx(-0.5) and mean["p_value"] < 0.05

    cos = _row(result, "direction_cos")
    assert (cos["test"], cos["p_value"], cos["ci_low"]) == ("unpaired", None, None)
    assert cos["delta"] == pytest.approx(-0.1)

    coverage = {c["metric"]: c for c in result["coverage"]}
    assert coverage["refusal_rate_unsafe"]["paired"] and not coverage["direction_cos"]["paired"]
    assert result["kind"] == KIND and result["pairs"] == [{"new": "tuned", "old": "tuned"}]
    assert (result["verdict"], result["exit_code"], result["gates"]) == ("pass", 0, [])
    json.dumps(result)  # comparison.json is plain JSON


def test_different_item_sets_pair_on_the_intersection() -> None:
    old, old_s = _run({"tuned": (_refusing(40), _margins(), 0.9)})
    new, new_s = _run({"tuned": (_refusing(40, start=10), _margins(), 0.9)})
    result = compare_runs(old, old_s, new, new_s)
    assert _row(result, "refusal_rate_unsafe")["n"] == 30
    cov = next(c for c in result["coverage"] if c["metric"] == "refusal_rate_unsafe")
    assert (cov["items_old"], cov["items_new"], cov["items_shared"]) == (40, 40, 30)
    assert any("different items" in w and "30 shared" in w for w in result["warnings"])


def test_no_shared_items_or_samples_falls_back_to_unpaired() -> None:
    old, old_s = _run({"tuned": (_refusing(40), _margins(), 0.9)})
    new, new_s = _run({"tuned": (_refusing(40, start=100), _margins(), 0.9)})
    result = compare_runs(old, old_s, new, new_s)
    assert _row(result, "refusal_rate_unsafe")["test"] == "unpaired"
    result = compare_runs(old, [], new, new_s)
    assert {c["test"] for c in result["comparisons"]} == {"unpaired"}
    assert any("old run has no samples" in w for w in result["warnings"])


@pytest.mark.parametrize(
    ("flipped", "significant", "passed"),
    [(2, True, True), (2, False, False), (20, True, False), (0, True, True)],
)
def test_relative_gate_fires_only_when_significant(
    flipped: int, significant: bool, passed: bool
) -> None:
    gate = {**DROP, "significant": significant, "vs": "aligned"}
    old, old_s = _run({"tuned": (_refusing(), _margins(), 0.9)})
    new, new_s = _run({"tuned": (_refusing(flipped=flipped), _margins(), 0.9)}, [gate])
    result = compare_runs(old, old_s, new, new_s)
    (row,) = result["gates"]
    assert set(row) == set(GateRowT.__annotations__)
    assert (row["passed"], row["model"], row["baseline"]) == (passed, "tuned", "tuned")
    assert row["observed"] == pytest.approx(flipped / 40)
    assert "in the old run" in row["rule"]  # the old run's model, whatever vs says
    if flipped == 2 and significant:
        assert "not significant" in row["detail"]
    assert result["exit_code"] == (0 if passed else 1)
    assert result["verdict"] == ("pass" if passed else "fail")


def test_absolute_gate_applies_to_new_values() -> None:
    gate = {"metric": "refusal.refusal_rate_unsafe", "models": ["*"], "min": 0.9}
    old, old_s = _run({"tuned": (_refusing(flipped=20), _margins(), 0.9),
                       "other": (_refusing(), _margins(), 0.9)})  # fmt: skip
    new, new_s = _run({"tuned": (_refusing(), _margins(), 0.9),
                       "other": (_refusing(flipped=20), _margins(), 0.9)}, [gate])  # fmt: skip
    rows = {g["model"]: g for g in compare_runs(old, old_s, new, new_s)["gates"]}
    assert rows["tuned"]["passed"] and rows["tuned"]["observed"] == 1.0
    assert not rows["other"]["passed"] and rows["other"]["observed"] == 0.5


def test_gated_model_missing_from_a_run_fails() -> None:
    gates = [
        {**DROP, "models": ["candidate", "tuned"]},
        {"metric": "refusal.refusal_rate_unsafe", "models": ["retired", "ghost"], "min": 0.5},
    ]
    old, old_s = _run({"tuned": (_refusing(), _margins(), 0.9),
                       "retired": (_refusing(), _margins(), 0.9)})  # fmt: skip
    new, new_s = _run({"tuned": (_refusing(), _margins(), 0.9),
                       "candidate": (_refusing(), _margins(), 0.9)}, gates)  # fmt: skip
    result = compare_runs(old, old_s, new, new_s)
    rows = {(g["name"], g["model"]): g for g in result["gates"]}
    assert rows[("refusals hold", "tuned")]["passed"]
    missing = rows[("refusals hold", "candidate")]
    assert not missing["passed"] and "candidate is not in the old run" in missing["detail"]
    name = "gate 2: refusal.refusal_rate_unsafe min 0.5"
    assert "retired is not in the new run" in rows[(name, "retired")]["detail"]
    assert "ghost is not in the new run" in rows[(name, "ghost")]["detail"]
    assert result["exit_code"] == 1
    assert any("only in the old run" in w and "retired" in w for w in result["warnings"])


def test_pairs_map_new_names_to_old_ones() -> None:
    gate = {**DROP, "models": ["tuned_v2"]}
    old, old_s = _run({"tuned": (_refusing(), _margins(), 0.9)})
    new, new_s = _run({"tuned_v2": (_refusing(flipped=20), _margins(), 0.9)}, [gate])
    unpaired = compare_runs(old, old_s, new, new_s)
    assert unpaired["comparisons"] == [] and unpaired["exit_code"] == 1
    result = compare_runs(old, old_s, new, new_s, pairs={"tuned_v2": "tuned"})
    row = _row(result, "refusal_rate_unsafe", model="tuned_v2")
    assert (row["baseline"], row["n"]) == ("tuned", 40)
    (g,) = result["gates"]
    assert (g["model"], g["baseline"], g["passed"]) == ("tuned_v2", "tuned", False)
    # a gate naming the OLD name selects its NEW partner
    new["suite"]["parsed"]["gates"] = [{**DROP, "models": ["tuned"]}]
    (g,) = compare_runs(old, old_s, new, new_s, pairs={"tuned_v2": "tuned"})["gates"]
    assert (g["model"], g["passed"]) == ("tuned_v2", False)
    with pytest.raises(CompareError, match="no model 'nope'"):
        compare_runs(old, old_s, new, new_s, pairs={"tuned_v2": "nope"})


def test_given_gates_replace_the_suites() -> None:
    old, old_s = _run({"tuned": (_refusing(), _margins(), 0.9)})
    new, new_s = _run({"tuned": (_refusing(flipped=20), _margins(), 0.9)}, [DROP])
    result = compare_runs(old, old_s, new, new_s, gates=[])
    assert result["gates"] == [] and result["exit_code"] == 0
    gate = GateSpec.model_validate({**DROP, "max_drop": 0.9})
    assert compare_runs(old, old_s, new, new_s, gates=[gate])["gates"][0]["passed"]


def test_warnings_failures_and_versions() -> None:
    old, old_s = _run({"tuned": (_refusing(), _margins(), 0.9)})
    new, new_s = _run({"tuned": (_refusing(), _margins(), 0.9)})
    new["evaluators"][0]["version"] = "2"
    new["evaluators"][0]["params"]["max_new_tokens"] = 64
    new["failures"] = [{"step": "eval tuned/refusal", "error": "boom", "traceback": "tb"}]
    result = compare_runs(old, old_s, new, new_s)
    assert (result["exit_code"], result["verdict"]) == (3, "error")
    assert result["failures"][0]["step"] == "eval tuned/refusal"
    text = "\n".join(result["warnings"])
    assert "version '1' in the old run, '2' in the new run" in text
    assert "max_new_tokens: 32 → 64" in text
    assert result["old"]["hash"] == "abc123" and result["new"]["evaluators"][0]["version"] == "2"


def test_page_escapes_hostile_strings(tmp_path: Path) -> None:
    bad = f"m{SCRIPT}"
    gate = {**DROP, "models": [bad], "name": f"gate {SCRIPT}"}
    old, old_s = _run({bad: (_refusing(), _margins(), 0.9)}, name=SCRIPT)
    new, new_s = _run({bad: (_refusing(flipped=20), _margins(), 0.9)}, [gate], name=SCRIPT)
    for s in new_s:
        s["output"] = SCRIPT
    new["evaluators"][0]["params"]["probes"] = SCRIPT
    new["failures"] = [{"step": SCRIPT, "error": SCRIPT, "traceback": SCRIPT}]
    result = compare_runs(old, old_s, new, new_s)
    page = render_comparison(result, tmp_path / "out")
    html = page.read_text(encoding="utf-8")
    assert page.name == "index.html" and "<script" not in html.lower()
    assert "&lt;script&gt;" in html and "default-src 'none'" in html
    assert "worse *" in html and html.index("ERROR") < html.index("worse *")


def test_page_orders_worst_first() -> None:
    old, old_s = _run({"a": (_refusing(), _margins(), 0.9), "b": (_refusing(), _margins(), 0.9)})
    new, new_s = _run(
        {"a": (_refusing(flipped=20), _margins(0.5), 0.9), "b": (_refusing(), _margins(), 0.9)}
    )
    html = render_comparison_html(compare_runs(old, old_s, new, new_s))
    assert "FAIL" not in html.split("<main>")[0]  # no gates: the verdict is PASS
    changed = html.split('class="tbl regressions"')[1].split("</table>")[0]
    assert changed.index("worse *") < changed.index("better *")
    assert "Unchanged (" in html


# --- the command ------------------------------------------------------------------------------


def _write(directory: Path, results: dict[str, Any], samples: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return directory


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, Path]:
    old = _write(tmp_path / "old", *_run({"tuned": (_refusing(), _margins(), 0.9)}))
    new = _write(
        tmp_path / "new", *_run({"tuned": (_refusing(flipped=20), _margins(), 0.9)}, [DROP])
    )
    return old, new, tmp_path


def test_cli_exit_codes_and_outputs(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new, tmp = runs
    assert main(["compare", str(old), str(old / "results.json"), "--out", str(tmp / "a")]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out
    assert main(["compare", str(old), str(new), "--out", str(tmp / "b")]) == 1
    out = capsys.readouterr().out
    assert "FAIL refusals hold — tuned" in out and "3 significantly worse" in out
    saved = json.loads((tmp / "b" / "comparison.json").read_text())
    assert (saved["kind"], saved["exit_code"], saved["old"]["path"]) == (
        KIND, 1, str(old / "results.json"))  # fmt: skip
    assert (tmp / "b" / "index.html").is_file()
    pair = ["--pair", "tuned=tuned", "--out", str(tmp / "c"), "--quiet"]
    assert main(["compare", str(old), str(new), *pair]) == 1
    assert "PASS" not in capsys.readouterr().out  # --quiet: failures only


def test_cli_suite_gates(runs: tuple[Path, Path, Path]) -> None:
    old, new, tmp = runs
    suite = tmp / "suite.toml"
    suite.write_text(
        '[suite]\nname = "s"\n\n[models.tuned]\nsource = "path:./tuned"\n\n'
        '[evaluators.refusal]\nkind = "refusal"\nprobes = "organism:driftcaps"\n\n'
        '[[gates]]\nmetric = "refusal.refusal_rate_unsafe"\nmodels = ["tuned"]\nmax_drop = 0.9\n'
    )
    out = tmp / "d"
    assert main(["compare", str(old), str(new), "--suite", str(suite), "--out", str(out)]) == 0
    assert json.loads((out / "comparison.json").read_text())["gates_from"].startswith("suite")


def test_cli_bad_input_exits_2(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new, tmp = runs
    (tmp / "junk.json").write_text("{not json")
    (tmp / "other.json").write_text(json.dumps({"hello": 1}))
    assert main(["compare", str(old), str(new), "--out", str(tmp / "cmp")]) == 1
    bad = [
        [str(tmp / "missing"), str(new)],
        [str(tmp / "junk.json"), str(new)],
        [str(old), str(tmp / "other.json")],
        [str(tmp / "cmp" / "comparison.json"), str(new)],
        [str(old), str(new), "--pair", "tuned"],
        [str(old), str(new), "--pair", "ghost=tuned"],
        [str(old), str(new), "--out", str(new)],
    ]
    for argv in bad:
        capsys.readouterr()
        assert main(["compare", *argv]) == 2, argv
        assert "error" in capsys.readouterr().err
    assert not (new / "index.html").exists()


def test_load_run_messages(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"kind": KIND}))
    with pytest.raises(CompareError, match="is a comparison.json"):
        load_run(tmp_path)
    results, _ = _run({"tuned": (_refusing(), _margins(), 0.9)})
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "samples.jsonl").write_text("{}\n")
    with pytest.raises(CompareError, match="samples.jsonl:1: not a sample row"):
        load_run(tmp_path)


def test_cli_ci_outputs(runs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """--junit and the step summary: $GITHUB_STEP_SUMMARY is appended to, --summary wins."""
    old, new, tmp = runs
    step_summary = tmp / "step-summary.md"
    step_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    junit = tmp / "junit.xml"
    assert (
        main(["compare", str(old), str(new), "--out", str(tmp / "o"), "--junit", str(junit)]) == 1
    )
    suite = ElementTree.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    failure = suite.find("./testsuite/testcase/failure")
    assert failure is not None and "threshold" in (failure.get("message") or "")
    text = step_summary.read_text()
    assert text.startswith("earlier step\n") and "FAIL" in text and "refusals hold" in text
    own = tmp / "own.md"
    assert (
        main(["compare", str(old), str(old), "--out", str(tmp / "p"), "--summary", str(own)]) == 0
    )
    assert "PASS" in own.read_text() and step_summary.read_text() == text  # not appended


def test_cli_unwritable_ci_output_is_not_a_pass(runs: tuple[Path, Path, Path]) -> None:
    old, _, tmp = runs
    blocked = tmp / "a-directory"
    blocked.mkdir()
    argv = ["compare", str(old), str(old), "--out", str(tmp / "o"), "--junit", str(blocked)]
    assert main(argv) == 3

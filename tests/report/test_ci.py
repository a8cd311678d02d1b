"""CI outputs: JUnit XML (checked against the Jenkins junit-10.xsd) and the markdown summary."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from audit.report.ci import (
    junit_xml,
    markdown_summary,
    summary_target,
    write_junit,
    write_summary,
)
from audit.results import ResultsError

xmlschema = pytest.importorskip("xmlschema")

XSD = Path(__file__).parents[1] / "data" / "junit-10.xsd"
HOSTILE = (
    'evil <script>alert("x")</script> [x](javascript:alert(1)) ]]> &amp; '
    "\x00\x1b[31m \ud800 a|b\nline2 `code` \r"
)
# the tags markdown_summary itself writes; anything else starting with < came from a run
OWN_TAGS = re.compile(r"</?(br|details|summary|pre)>")
ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@pytest.fixture(scope="module")
def schema() -> Any:
    return xmlschema.XMLSchema(str(XSD))


def gate(
    name: str = "refusal holds",
    model: str = "tuned",
    baseline: str | None = "aligned",
    passed: bool = True,
    observed: float | None = 0.01,
    threshold: float = 0.05,
    detail: str = "drift.refusal_rate_unsafe [all] 1 → 0.99: drop 0.01 ≤ 0.05",
) -> dict[str, Any]:
    rule = f"max_drop {threshold:g} vs {baseline}" if baseline else f"max {threshold:g}"
    return {
        "name": name,
        "rule": rule,
        "model": model,
        "baseline": baseline,
        "passed": passed,
        "observed": observed,
        "threshold": threshold,
        "detail": detail,
    }


def results(
    gates: list[dict[str, Any]] | None = None,
    failures: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    gates = [gate()] if gates is None else gates
    failures = failures or []
    code = 3 if failures else 1 if any(not g["passed"] for g in gates) else 0
    out: dict[str, Any] = {
        "schema_version": 1,
        "verdict": {0: "pass", 1: "fail", 3: "error"}[code],
        "exit_code": code,
        "suite": {"name": "rc3", "title": "Release candidate 3", "hash": "abc123"},
        "environment": {
            "started_at": "2026-01-02T03:04:05+00:00",
            "finished_at": "2026-01-02T03:05:05+00:00",
        },
        "gates": gates,
        "failures": failures,
        "steps": [
            {"step": "model:tuned", "status": "ok", "cached": False, "duration_s": 12.5},
            {"step": "eval:tuned/refusal", "status": "ok", "cached": True, "duration_s": 0.0},
        ],
    }
    out.update(extra)
    return out


def parse(xml: str, schema: Any) -> ET.Element:
    schema.validate(xml)
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(xml.encode("utf-8"))


def cases(root: ET.Element) -> list[ET.Element]:
    return root.findall("./testsuite/testcase")


def props(root: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in root.iter("property")}


# --- JUnit ------------------------------------------------------------------------------------


def test_junit_passing_run(schema: Any) -> None:
    r = results([gate(), gate(name="backdoor off", baseline=None, observed=0.0)])
    root = parse(junit_xml(r), schema)
    assert root.tag == "testsuites"
    assert root.attrib["name"] == "audit"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "0", "0")
    assert root.get("time") == "60.000"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "Release candidate 3"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    assert suite.get("timestamp") == "2026-01-02T03:04:05"
    assert props(root) == {
        "verdict": "pass",
        "exit_code": "0",
        "suite": "rc3",
        "suite_hash": "abc123",
    }
    first, second = cases(root)
    assert first.get("classname") == "audit.gates.refusal_holds"
    assert first.get("name") == "tuned vs aligned"
    assert second.get("classname") == "audit.gates.backdoor_off"
    assert second.get("name") == "tuned"
    assert first.find("failure") is None and first.find("error") is None
    assert first.findtext("system-out") == gate()["detail"]


def test_junit_failing_gate(schema: Any) -> None:
    r = results(
        [
            gate(passed=False, observed=0.14444, detail="drop 0.1444 > 0.05"),
            gate(model="merged", passed=False, observed=None, detail="no comparison: failed"),
            gate(model="other"),
        ]
    )
    root = parse(junit_xml(r), schema)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "2", "0")
    assert props(root)["verdict"] == "fail" and props(root)["exit_code"] == "1"
    failing, missing, ok = cases(root)
    f = failing.find("failure")
    assert f is not None
    assert f.get("type") == "GateFailed"
    assert f.get("message") == "observed 0.1444 vs threshold 0.05 (max_drop 0.05 vs aligned)"
    assert f.text == "drop 0.1444 > 0.05"
    m = missing.find("failure")
    assert m is not None
    assert m.get("message") == "no value vs threshold 0.05 (max_drop 0.05 vs aligned)"
    assert m.text == "no comparison: failed"
    assert ok.find("failure") is None


def test_junit_crashed_step(schema: Any) -> None:
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: boom'
    r = results(
        [gate(passed=False, observed=None)],
        [{"step": "model:tuned", "error": "RuntimeError: boom", "traceback": tb}],
    )
    root = parse(junit_xml(r), schema)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "1")
    assert props(root)["verdict"] == "error" and props(root)["exit_code"] == "3"
    step = cases(root)[-1]
    assert step.get("classname") == "audit.steps"
    assert step.get("name") == "model:tuned"
    assert step.get("time") == "12.500"
    err = step.find("error")
    assert err is not None
    assert err.get("type") == "StepCrashed"
    assert err.get("message") == "RuntimeError: boom"
    assert err.text == tb


def test_junit_hostile_strings(schema: Any) -> None:
    r = results(
        [gate(name=HOSTILE, model=HOSTILE, baseline=HOSTILE, passed=False, detail=HOSTILE)],
        [{"step": HOSTILE, "error": HOSTILE, "traceback": HOSTILE}],
        suite={"name": HOSTILE, "title": HOSTILE, "hash": HOSTILE},
    )
    xml = junit_xml(r)
    assert not ILLEGAL_XML.search(xml)
    assert "<script" not in xml and "]]>" not in xml
    root = parse(xml, schema)
    gate_case, step_case = cases(root)
    failure = gate_case.find("failure")
    assert failure is not None and failure.text is not None
    # the text survives, minus what XML 1.0 cannot carry
    assert '<script>alert("x")</script> [x](javascript:alert(1)) ]]> &amp;' in failure.text
    assert "a|b\nline2 `code`" in failure.text
    assert "\x00" not in failure.text and "\x1b" not in failure.text
    assert "\ud800" not in failure.text
    assert "\n" in (gate_case.get("name") or "")  # attributes keep newlines (as &#10;)
    assert (gate_case.get("classname") or "").startswith("audit.gates.")
    assert re.fullmatch(r"audit\.gates\.\w+", gate_case.get("classname") or "")
    error = step_case.find("error")
    assert error is not None and "<script>" in (error.get("message") or "")


def test_junit_classnames_sanitized_and_distinct(schema: Any) -> None:
    r = results(
        [
            gate(name="gate 1: drift.refusal_rate_unsafe max_drop 0.05"),
            gate(name="a.b"),
            gate(name="a b"),
            gate(name="a.b", model="other"),
            gate(name="!!!"),
        ]
    )
    names = [c.get("classname") for c in cases(parse(junit_xml(r), schema))]
    assert names == [
        "audit.gates.gate_1_drift_refusal_rate_unsafe_max_drop_0_05",
        "audit.gates.a_b",
        "audit.gates.a_b_2",
        "audit.gates.a_b",
        "audit.gates.gate",
    ]


def test_junit_release_comparison(schema: Any) -> None:
    comparison = {
        "suite": {"name": "release"},
        "gates": [gate(model="v2", baseline="v1", passed=False, observed=0.2)],
        "failures": [],
        "verdict": "fail",
        "exit_code": 1,
    }
    root = parse(junit_xml(comparison), schema)
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "release"
    assert "timestamp" not in suite.attrib
    assert props(root) == {"verdict": "fail", "exit_code": "1", "suite": "release"}
    (case,) = cases(root)
    assert case.get("name") == "v2 vs v1"
    assert root.get("failures") == "1" and root.get("time") == "0.000"


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"gates": [{}], "failures": [{}], "environment": {"started_at": "?"}},
        {"gates": [{"passed": True, "threshold": None}], "suite": {}},
    ],
)
def test_junit_robust_to_missing_keys(schema: Any, data: dict[str, Any]) -> None:
    root = parse(junit_xml(data), schema)
    assert props(root)["verdict"] in {"pass", "fail", "error"}
    assert root.find("testsuite") is not None
    assert markdown_summary(data).startswith("## ")


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"gates": None, "failures": "x"}, "gates"),
        ({"failures": "x"}, "failures"),
        ({"suite": "nope"}, "suite"),
        ({"gates": [1, "x", {}]}, "gates[0]"),
        ({"failures": [None, {}]}, "failures[0]"),
        ({"gates": [{"passed": True, "observed": "n/a"}]}, "gates[0].observed"),
    ],
)
def test_junit_refuses_odd_shapes_naming_the_field(data: dict[str, Any], where: str) -> None:
    """Results are read once, through the typed model: a wrong shape is a ResultsError that
    names the field (the command exits 2), never a half-written file or a traceback."""
    for write in (junit_xml, markdown_summary):
        with pytest.raises(ResultsError, match=rf"results: {re.escape(where)}: "):
            write(data)


def test_junit_verdict_derived_when_missing(schema: Any) -> None:
    root = parse(junit_xml({"gates": [gate(passed=False)]}), schema)
    assert props(root)["verdict"] == "fail" and props(root)["exit_code"] == "1"
    root = parse(junit_xml({"failures": [{"step": "s", "error": "e"}]}), schema)
    assert props(root)["verdict"] == "error" and props(root)["exit_code"] == "3"
    err = root.find("./testsuite/testcase/error")
    assert err is not None and err.text == "e"  # no traceback: the error stands in


def test_write_junit(tmp_path: Path, schema: Any) -> None:
    path = write_junit(tmp_path / "a" / "b" / "junit.xml", results())
    assert path == tmp_path / "a" / "b" / "junit.xml"
    schema.validate(str(path))
    assert [p.name for p in path.parent.iterdir()] == ["junit.xml"]
    assert path.read_text(encoding="utf-8") == junit_xml(results())


# --- markdown summary -------------------------------------------------------------------------


def table_rows(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("| ")]


def test_markdown_passing() -> None:
    md = markdown_summary(results(), report="reports/rc3/index.html")
    assert md.splitlines()[0] == "## ✅ PASS — Release candidate 3"
    assert "**Gates:** 1 passed, 0 failed (1 check)" in md
    assert "**Crashed steps:** 0" in md and "**Exit code:** 0" in md
    assert "**Steps:** 2 (1 run, 1 cached, 0 failed, 0 skipped)" in md
    assert "**Report:** reports/rc3/index.html" in md
    header, rule, row = table_rows(md)
    assert header == "| result | gate | model | baseline | observed | threshold | detail |"
    assert row.startswith("| ✅ PASS | refusal holds | tuned | aligned | 0.01 | 0.05 |")
    assert "Crashed steps" not in md.split("**Crashed steps:** 0")[1]


def test_markdown_failed_first_and_error() -> None:
    r = results(
        [gate(model="a"), gate(model="b", passed=False, observed=None), gate(model="c")],
        [{"step": "eval:c/x", "error": "ValueError: bad", "traceback": "Traceback\n\nValueError"}],
    )
    md = markdown_summary(r, report="https://ci.example/run/1/index.html")
    assert md.startswith("## 💥 ERROR — Release candidate 3")
    rows = table_rows(md)[2:]
    assert [row.split(" | ")[2] for row in rows] == ["b", "a", "c"]
    assert rows[0].startswith("| ❌ FAIL |") and "| — |" in rows[0]
    assert "### Crashed steps" in md
    assert "- **eval:c/x**: ValueError: bad" in md
    assert "<pre>\nTraceback\n\nValueError\n</pre>" in md
    assert "[https://ci.example/run/1/index.html](https://ci.example/run/1/index.html)" in md


def test_markdown_escapes_untrusted_text() -> None:
    r = results(
        [gate(name=HOSTILE, model=HOSTILE, baseline=HOSTILE, passed=False, detail=HOSTILE)],
        [{"step": HOSTILE, "error": HOSTILE, "traceback": HOSTILE + "\n</pre><img src=x>"}],
        suite={"title": HOSTILE},
    )
    md = markdown_summary(r, report="https://x.example/a b)<c>[d]")
    assert "<script" not in md and "<img" not in md
    assert not OWN_TAGS.sub("", md).count("<")  # no raw HTML but the summary's own tags
    assert "&lt;script&gt;" in md and "&amp;amp;" in md
    assert not ILLEGAL_XML.search(md) and "\x1b" not in md and "\r" not in md
    outside_pre = re.sub(r"<pre>.*?</pre>", "", md, flags=re.S)
    assert "`" not in outside_pre  # no code spans
    assert "[x](" not in outside_pre and "\\[x\\](javascript" in outside_pre  # no links
    rows = table_rows(md)
    assert len(rows) == 3  # header, rule, the one gate: the newline did not split it
    for row in rows:
        assert row.count("|") == 8  # seven cells: no pipe from the data opened a new one
    assert "a&#124;b<br>line2 &#96;code&#96;" in rows[2]
    assert "\\[d\\]" in md and "(https://x.example/a%20b%29%3Cc%3E%5Bd%5D)" in md
    assert md.count("</pre>") == 1


def test_markdown_renders_inert() -> None:
    """Rendered as CommonMark with raw HTML on and tables, like GitHub before sanitizing."""
    markdown_it = pytest.importorskip("markdown_it")
    r = results(
        [gate(name=HOSTILE, model=HOSTILE, baseline=HOSTILE, passed=False, detail=HOSTILE), gate()],
        [{"step": HOSTILE, "error": HOSTILE, "traceback": HOSTILE + "\n</pre><img src=x>\n\n# h"}],
        suite={"title": HOSTILE},
    )
    md = markdown_summary(r, report="https://x.example/a b)<c>[d]")
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    assert "<script" not in html and "<img" not in html and "<code" not in html
    assert '<a href="https://x.example/a%20b%29%3Cc%3E%5Bd%5D">' in html
    assert html.count("<a ") == 1 and html.count("<h1") == 0
    assert html.count("<tr>") == 3 and html.count("<td") == 14
    assert html.count("<pre>") == 1 and "&lt;/pre&gt;&lt;img src=x&gt;" in html


def test_markdown_cap_keeps_failed_gates() -> None:
    detail = "x" * 300
    gates = [gate(model=f"m{i}", detail=detail) for i in range(6000)]
    for i in range(0, 6000, 120):  # 50 failures spread through the table
        gates[i] = gate(model=f"bad{i}", passed=False, observed=0.5, detail=detail)
    tb = "Traceback\n" + "frame\n" * 2000
    failures = [{"step": f"step{i}", "error": "boom", "traceback": tb} for i in range(3)]
    md = markdown_summary(results(gates, failures))
    assert len(md.encode("utf-8")) <= 1_000_000
    assert len(md.encode("utf-8")) > 900_000  # the budget is used, not wasted
    rows = table_rows(md)[2:]
    assert sum(r.startswith("| ❌ FAIL |") for r in rows) == 50
    assert all(f"| bad{i} |" in md for i in range(0, 6000, 120))
    left = 6000 - len(rows)
    assert left > 0
    assert f"_{left} more gate rows left out (0 failed, {left} passed)" in md
    assert all(f"**step{i}**" in md for i in range(3))


def test_markdown_small_limit() -> None:
    gates = [gate(model=f"m{i}", passed=i % 2 == 0) for i in range(1000)]
    failures = [{"step": f"s{i}", "error": "e", "traceback": "t" * 3000} for i in range(50)]
    for limit in (3_000, 10_000, 50_000):
        md = markdown_summary(results(gates, failures), limit=limit)
        assert len(md.encode("utf-8")) <= limit
        assert "more crashed steps left out" in md
        assert "more gate rows left out" in md
    assert len(markdown_summary(results(gates), limit=100).encode("utf-8")) <= 100
    # a short gates table leaves the rest of the budget to the crashed steps
    md = markdown_summary(results(gates[:2], failures[:10]), limit=40_000)
    assert len(md.encode("utf-8")) <= 40_000  # ten tracebacks of 3000 bytes: above half of it
    assert "more crashed steps left out" not in md and md.count("<pre>") == 10


# --- writing the summary ----------------------------------------------------------------------


def test_write_summary_append_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "summary.md"
    assert write_summary(path, "one", append=True) == path
    write_summary(path, "two\n", append=True)
    assert path.read_text(encoding="utf-8") == "one\ntwo\n"
    write_summary(path, "three", append=False)
    assert path.read_text(encoding="utf-8") == "three\n"
    assert [p.name for p in path.parent.iterdir()] == ["summary.md"]


def test_summary_target(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    step_summary = str(tmp_path / "step_summary")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert summary_target(None) is None
    assert summary_target("out.md") == (Path("out.md"), False)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", "")
    assert summary_target(None) is None
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", step_summary)
    assert summary_target(None) == (Path(step_summary), True)
    assert summary_target("") == (Path(step_summary), True)
    assert summary_target("out.md") == (Path("out.md"), False)


def test_example_workflow_parses() -> None:
    yaml = pytest.importorskip("yaml")
    path = Path(__file__).parents[2] / "examples" / "github-actions" / "release-gate.yml"
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert set(triggers) == {"pull_request", "workflow_dispatch"}
    steps = workflow["jobs"]["audit"]["steps"]
    uses = {s.get("uses", "").partition("@")[0]: s for s in steps}
    assert uses["actions/upload-artifact"]["if"] == "always()"
    assert uses["mikepenz/action-junit-report"]["if"] == "always()"
    run = "\n".join(s.get("run", "") for s in steps)
    assert "--junit reports/junit.xml" in run and "audit compare" in run

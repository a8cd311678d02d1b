"""The gallery: every run under an output root, newest first, untrusted strings escaped."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from audit import cli
from audit.report.gallery import (
    MARKER,
    UNREADABLE,
    GalleryError,
    find_runs,
    render_gallery,
    write_gallery,
)

SCRIPT = "<script>alert(1)</script>"
BREAKOUT = '"><img src=x onerror=alert(1)>'
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
SAFE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "main", "footer", "div", "p",
    "span", "h1", "h2", "h3", "a", "ol", "ul", "li", "code", "time", "table", "thead", "tbody",
    "tr", "th", "td",
}  # fmt: skip


def _comparison(
    model: str,
    metric: str,
    delta: float,
    *,
    p: float = 0.5,
    hib: bool = True,
    relation: str = "parent",
    slice_: str = "all",
    evaluator: str = "refusal",
) -> dict[str, Any]:
    return {
        "model": model,
        "baseline": "base",
        "relation": relation,
        "evaluator": evaluator,
        "metric": metric,
        "slice": slice_,
        "before": 0.5,
        "after": 0.5 + delta,
        "delta": delta,
        "ci_low": delta - 0.05,
        "ci_high": delta + 0.05,
        "n": 100,
        "p_value": p,
        "test": "mcnemar_exact",
        "higher_is_better": hib,
    }


def _gate(name: str, passed: bool, model: str = "tuned") -> dict[str, Any]:
    return {
        "name": name,
        "rule": "max_drop 0.05 vs base",
        "model": model,
        "baseline": "base",
        "passed": passed,
        "observed": 0.02 if passed else 0.25,
        "threshold": 0.05,
        "detail": "",
    }


def _results(
    title: str = "a run",
    *,
    verdict: str = "pass",
    finished: str | None = "2026-01-01T10:00:00+00:00",
    gates: list[dict[str, Any]] | None = None,
    failures: list[dict[str, Any]] | None = None,
    comparisons: list[dict[str, Any]] | None = None,
    models: tuple[str, ...] = ("base", "tuned"),
) -> dict[str, Any]:
    environment: dict[str, Any] = {"seed": 0, "started_at": "2026-01-01T09:58:30+00:00"}
    if finished is not None:
        environment["finished_at"] = finished
    return {
        "schema_version": 1,
        "verdict": verdict,
        "exit_code": {"pass": 0, "fail": 1, "error": 3}[verdict],
        "suite": {"name": title.split()[0], "title": title, "path": "suite.toml"},
        "environment": environment,
        "models": [
            {"name": m, "parents": [] if i == 0 else ["base"]} for i, m in enumerate(models)
        ],
        "evaluators": [
            {
                "name": "refusal",
                "kind": "refusal",
                "metrics": [
                    {"name": "refusal_rate", "higher_is_better": True, "headline": True},
                    {"name": "harm_score", "higher_is_better": False, "headline": True},
                    {"name": "minor", "higher_is_better": True, "headline": False},
                ],
            }
        ],
        "metrics": [],
        "comparisons": comparisons or [],
        "gates": gates or [],
        "failures": failures or [],
        "steps": [{"step": f"model:{m}", "status": "ok"} for m in models],
    }


def _write(
    root: Path, rel: str, data: Any, *, name: str = "results.json", report: bool = True
) -> Path:
    directory = root / rel
    directory.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (directory / name).write_text(text, encoding="utf-8")
    if report:
        (directory / "index.html").write_text("<p>report</p>", encoding="utf-8")
    return directory


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.hrefs: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.extend(attrs)
        self.hrefs.extend(v or "" for k, v in attrs if k == "href")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _hostile_root(tmp_path: Path) -> Path:
    root = tmp_path / "reports"
    _write(
        root,
        BREAKOUT,
        _results(
            SCRIPT,
            verdict="fail",
            gates=[_gate(BREAKOUT, False, model=SCRIPT)],
            comparisons=[_comparison(SCRIPT, "refusal_rate", -0.2, p=0.001)],
            models=("base", SCRIPT),
        ),
    )
    _write(root, "javascript:alert(1)", _results("colon", finished="2025-01-01T00:00:00+00:00"))
    _write(root, "sub dir/<b>", _results(BREAKOUT, finished=SCRIPT))
    return root


# --- scanning and summaries -------------------------------------------------------------------


def test_runs_newest_first_with_verdicts_counts_and_links(tmp_path: Path) -> None:
    _write(tmp_path, "old", _results("old pass", finished="2026-01-01T08:00:00+00:00"))
    _write(
        tmp_path,
        "failing",
        _results("failing run", verdict="fail", finished="2026-01-03T08:00:00+00:00",
                 gates=[_gate("holds", True), _gate("drops", False)]),
    )  # fmt: skip
    _write(
        tmp_path,
        "crashed",
        _results("crashed run", verdict="error", finished="2026-01-02T08:00:00+00:00",
                 failures=[{"step": "eval:x", "error": "boom", "traceback": ""}]),
    )  # fmt: skip
    _write(tmp_path, "team/a/nested", _results("nested run", finished="2026-01-04T08:00:00"))

    runs = find_runs(tmp_path)

    assert [r.path for r in runs] == ["team/a/nested", "failing", "crashed", "old"]
    assert [r.verdict for r in runs] == ["PASS", "FAIL", "ERROR", "PASS"]
    assert [r.href for r in runs] == [
        "team/a/nested/index.html",
        "failing/index.html",
        "crashed/index.html",
        "old/index.html",
    ]
    failing = runs[1]
    assert (failing.title, failing.suite, failing.kind) == ("failing run", "failing", "run")
    assert (failing.models, failing.gates_passed, failing.gates_failed) == (2, 1, 1)
    assert failing.failed_gates[0].name == "drops"
    assert failing.failed_gates[0].observed == pytest.approx(0.25)
    assert runs[2].failed_steps == 1
    assert runs[0].finished_recorded and runs[0].finished_at.tzinfo is not None


def test_verdict_is_derived_when_the_file_has_none(tmp_path: Path) -> None:
    data = _results("derived", gates=[_gate("drops", False)])
    del data["verdict"]
    _write(tmp_path, "run", data)
    run = find_runs(tmp_path)[0]
    assert run.verdict == "FAIL"
    assert run.duration_s == pytest.approx(90.0)  # 09:58:30 to 10:00:00


def test_headline_is_the_worst_change_vs_a_parent_across_models(tmp_path: Path) -> None:
    comparisons = [
        _comparison("a", "refusal_rate", -0.10, p=0.001),
        _comparison("b", "refusal_rate", -0.30, p=0.2),
        _comparison("c", "refusal_rate", -0.90, relation="compare"),  # not vs a parent
        _comparison("d", "refusal_rate", -0.95, slice_="unsafe"),  # not slice all
        _comparison("a", "harm_score", -0.40, hib=False),
        _comparison("b", "harm_score", 0.15, hib=False, p=0.01),
        _comparison("a", "minor", -0.99),  # not a headline metric
    ]
    _write(tmp_path, "run", _results(comparisons=comparisons))

    headlines = {h.metric: h for h in find_runs(tmp_path)[0].headlines}

    assert list(headlines) == ["refusal_rate", "harm_score"]
    rate, harm = headlines["refusal_rate"], headlines["harm_score"]
    assert (rate.model, rate.baseline, rate.delta, rate.significant) == ("b", "base", -0.30, False)
    assert rate.direction == "bad" and rate.change == "-0.300 [-0.350, -0.250]"
    assert (harm.model, harm.delta, harm.significant, harm.direction) == ("b", 0.15, True, "bad")
    assert harm.change.startswith("+0.150 *")


def test_only_the_first_failed_gates_are_named(tmp_path: Path) -> None:
    gates = [_gate(f"gate {i}", False) for i in range(5)] + [_gate("ok", True)]
    _write(tmp_path, "run", _results(verdict="fail", gates=gates))
    run = find_runs(tmp_path)[0]
    assert [g.name for g in run.failed_gates] == ["gate 0", "gate 1", "gate 2"]
    assert (run.gates_failed, run.gates_passed) == (5, 1)
    html = render_gallery(tmp_path, [run])
    assert "and 2 more failed gates." in html
    assert "observed 0.250, threshold 0.050" in html


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"suite": {"name": "x"}, "gates": [', "not JSON"),
        ("not json at all", "not JSON"),
        ("", "empty file"),
        ("[1, 2, 3]", "wrong shape"),
        ('{"hello": "world"}', "wrong shape"),
        ('{"suite": "text", "gates": []}', "wrong shape"),
        ('{"suite": {"name": "x"}, "gates": {"a": 1}}', "wrong shape"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_unreadable_files_are_listed_with_the_reason(
    tmp_path: Path, content: str | bytes, reason: str
) -> None:
    _write(tmp_path, "good", _results("good run"))
    bad = tmp_path / "bad"
    bad.mkdir()
    if isinstance(content, bytes):
        (bad / "results.json").write_bytes(content)
    else:
        (bad / "results.json").write_text(content, encoding="utf-8")

    runs = {r.path: r for r in find_runs(tmp_path)}

    assert runs["good"].verdict == "PASS"
    assert runs["bad"].verdict == UNREADABLE and runs["bad"].unreadable
    assert reason in (runs["bad"].error or "")
    assert runs["bad"].href is None  # no index.html in bad/
    html = write_gallery(tmp_path).read_text(encoding="utf-8")
    assert "UNREADABLE" in html and "1 unreadable" in html


def test_odd_values_inside_a_results_file_list_it_as_unreadable(tmp_path: Path) -> None:
    data = _results("odd", verdict="fail")
    data["gates"] = [None, "x", {"name": 3, "passed": False, "observed": "NaN?"}]
    data["comparisons"] = [7, {"metric": None, "delta": "abc"}]
    data["evaluators"] = [{"name": "refusal", "metrics": "nope"}, 5]
    data["environment"] = {"finished_at": 12, "started_at": []}
    _write(tmp_path, "odd", data)
    run = find_runs(tmp_path)[0]
    assert run.verdict == UNREADABLE and (run.error or "").startswith("wrong shape: ")
    write_gallery(tmp_path)  # the gallery itself is written
    data["gates"], data["comparisons"], data["evaluators"] = [], [], []
    data["environment"] = {"finished_at": 12, "started_at": []}  # an open-ended object
    _write(tmp_path, "odd", data)
    run = find_runs(tmp_path)[0]
    assert run.verdict == "FAIL" and run.error is None and not run.finished_recorded


def test_release_comparisons_are_listed_as_comparisons(tmp_path: Path) -> None:
    comparison = {
        "kind": "release_comparison",
        "verdict": "fail",
        "exit_code": 1,
        "suite": {"name": "rc", "title": "Release 3 vs 2"},
        "old": {"title": "release 2", "path": "/elsewhere/old"},
        "new": {"title": "release 3"},
        "gates": [_gate("no regression", False)],
        "comparisons": [_comparison("tuned", "refusal_rate", -0.2, p=0.001, relation="release")],
        "environment": {"finished_at": "2026-02-01T00:00:00+00:00"},
    }
    _write(tmp_path, "compare-rc", comparison, name="comparison.json")
    _write(tmp_path, "run", _results())

    runs = find_runs(tmp_path)

    assert [r.kind for r in runs] == ["comparison", "run"]
    rc = runs[0]
    assert (rc.title, rc.verdict, rc.href) == ("Release 3 vs 2", "FAIL", "compare-rc/index.html")
    assert (rc.old, rc.new) == ("release 2 (/elsewhere/old)", "release 3")
    assert [h.delta for h in rc.headlines] == [-0.2]
    html = write_gallery(tmp_path).read_text(encoding="utf-8")
    assert "release comparison" in html and "1 run and 1 comparison: 1 pass, 1 fail" in html


def test_mtime_when_the_finish_time_is_missing(tmp_path: Path) -> None:
    directory = _write(tmp_path, "untimed", _results(finished=None))
    os.utime(directory / "results.json", (2_000_000_000, 2_000_000_000))
    _write(tmp_path, "timed", _results(finished="2030-01-01T00:00:00+00:00"))
    runs = find_runs(tmp_path)
    assert [r.path for r in runs] == ["untimed", "timed"]  # 2033 before 2030
    assert not runs[0].finished_recorded and runs[0].finished_at.timestamp() == 2_000_000_000
    assert "(file time)" in render_gallery(tmp_path, runs)


def test_the_gallery_and_root_files_hidden_store_and_deep_dirs_are_not_runs(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "run", _results())
    (tmp_path / "results.json").write_text(json.dumps(_results("root")), encoding="utf-8")
    _write(tmp_path, ".hidden/run", _results("hidden"))
    _write(tmp_path, "cache/entries/abc", _results("cached"))
    (tmp_path / "cache" / "locks").mkdir()
    _write(tmp_path, "a/b/c/d", _results("too deep"))
    write_gallery(tmp_path)
    write_gallery(tmp_path)  # its own index.html is not picked up the second time
    assert [r.path for r in find_runs(tmp_path)] == ["run"]
    assert [r.path for r in find_runs(tmp_path, max_depth=4)] == ["a/b/c/d", "run"]


def test_symlinks_out_of_the_root_are_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "reports", tmp_path / "outside"
    _write(root, "inside", _results("inside"))
    _write(outside, "run", _results("outside"))
    (root / "link").symlink_to(outside / "run", target_is_directory=True)
    (root / "linkfile").mkdir()
    (root / "linkfile" / "results.json").symlink_to(outside / "run" / "results.json")
    (root / "loop").symlink_to(root, target_is_directory=True)
    assert [r.path for r in find_runs(root)] == ["inside"]


# --- the page ---------------------------------------------------------------------------------


def test_the_page_is_self_contained_with_summary_badges_and_links(tmp_path: Path) -> None:
    _write(tmp_path, "one", _results("first run", finished="2026-01-01T00:00:00+00:00"))
    _write(tmp_path, "two", _results("second run", verdict="fail", gates=[_gate("g", False)]))
    _write(tmp_path, "three", _results("third run", verdict="fail"), report=False)

    path = write_gallery(tmp_path)

    assert path == tmp_path / "index.html"
    html = path.read_text(encoding="utf-8")
    assert f'content="{CSP}"' in html and MARKER in html
    assert "3 runs: 1 pass, 2 fail" in html
    assert 'class="gal-badge gal-badge-pass"' in html and 'class="gal-badge gal-badge-fail"' in html
    page = _parse(html)
    assert page.tags <= SAFE_TAGS
    assert sorted(page.hrefs) == ["one/index.html", "two/index.html"]  # three has no report
    assert "(no report)" in html
    assert not list(tmp_path.glob(".index.html.*"))  # no temporary file left


def test_empty_root_shows_the_empty_state(tmp_path: Path) -> None:
    html = write_gallery(tmp_path).read_text(encoding="utf-8")
    assert "No runs here yet" in html and "No runs yet." in html


def test_hostile_strings_are_escaped_and_hrefs_are_relative_and_quoted(tmp_path: Path) -> None:
    root = _hostile_root(tmp_path)

    html = write_gallery(root).read_text(encoding="utf-8")

    for raw in (SCRIPT, BREAKOUT, "<b>"):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    page = _parse(html)
    assert page.tags <= SAFE_TAGS
    assert not [name for name, _ in page.attrs if name.startswith("on")]
    assert sorted(page.hrefs) == [
        "%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/index.html",
        "javascript%3Aalert%281%29/index.html",
        "sub%20dir/%3Cb%3E/index.html",
    ]
    for href in page.hrefs:
        assert ":" not in href and not href.startswith(("/", "\\")) and ".." not in href
    text = "".join(page.text)
    assert SCRIPT in text and BREAKOUT in text  # shown as text, intact


def test_write_gallery_will_not_replace_a_report(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>a run's report</p>", encoding="utf-8")
    with pytest.raises(GalleryError, match="not a gallery"):
        write_gallery(tmp_path)
    assert (tmp_path / "index.html").read_text(encoding="utf-8") == "<p>a run's report</p>"
    with pytest.raises(GalleryError, match="not a directory"):
        write_gallery(tmp_path / "missing")


# --- command line -----------------------------------------------------------------------------


def test_audit_gallery_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "out"
    _write(root, "run", _results("listed run"))
    assert cli.main(["gallery", str(root)]) == 0
    assert str(root / "index.html") in capsys.readouterr().out
    assert "listed run" in (root / "index.html").read_text(encoding="utf-8")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    assert cli.main(["gallery"]) == 0
    assert (tmp_path / "reports" / "index.html").is_file()

    assert cli.main(["gallery", str(tmp_path / "missing")]) == 2
    (root / "run" / "sub").mkdir()
    assert cli.main(["gallery", str(root / "run")]) == 2  # run/index.html is a report


def _fake_run(monkeypatch: pytest.MonkeyPatch, results: dict[str, Any]) -> None:
    """``audit run`` without models: the plan, the runner and the results are stand-ins."""
    import audit.analysis.assemble
    import audit.plan
    import audit.runner

    class Runner:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def run(self) -> SimpleNamespace:
            return SimpleNamespace(executed=[])

    report = SimpleNamespace(output_dir=None)  # the default output: reports/<name>
    fake = SimpleNamespace(name="fake", file=SimpleNamespace(report=report))
    monkeypatch.setattr(cli, "_load", lambda path, **kwargs: fake)
    monkeypatch.setattr(audit.plan, "build_plan", lambda suite, hash_cache, vetted=None: None)
    monkeypatch.setattr(audit.plan, "vet_sources", lambda suite: {})
    monkeypatch.setattr(audit.runner, "Runner", Runner)
    monkeypatch.setattr(audit.analysis.assemble, "assemble", lambda *args: (results, []))


def test_audit_run_rewrites_the_gallery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "reports"
    first = _results("first run", finished="2026-01-01T00:00:00+00:00")
    _fake_run(monkeypatch, first)
    args = ["run", "suite.toml", "--cache", str(tmp_path / "cache"), "--quiet"]
    args += ["--gallery", str(root)]
    assert cli.main([*args, "--out", str(root / "first")]) == 0
    html = (root / "index.html").read_text(encoding="utf-8")
    assert "first run" in html and "1 run: 1 pass" in html

    second = _results("second run", verdict="fail", finished="2026-01-02T00:00:00+00:00")
    _fake_run(monkeypatch, second)
    assert cli.main([*args, "--out", str(root / "second")]) == 1
    html = (root / "index.html").read_text(encoding="utf-8")
    assert "2 runs: 1 pass, 1 fail" in html
    assert html.index("second run") < html.index("first run")


def test_a_gallery_failure_does_not_change_the_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "reports"
    root.mkdir()
    (root / "index.html").write_text("<p>not a gallery</p>", encoding="utf-8")
    _fake_run(monkeypatch, _results("a run"))
    args = ["run", "suite.toml", "--cache", str(tmp_path / "cache"), "--quiet"]
    args += ["--gallery", str(root)]
    assert cli.main([*args, "--out", str(root / "run")]) == 0
    assert "gallery not updated" in capsys.readouterr().err
    assert (root / "index.html").read_text(encoding="utf-8") == "<p>not a gallery</p>"
    assert (root / "run" / "index.html").is_file()


def test_the_gallery_goes_only_where_it_is_asked_or_under_the_reports_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out X/run` alone no longer writes X/index.html, a file nobody named."""
    _fake_run(monkeypatch, _results("a run"))
    monkeypatch.chdir(tmp_path)
    args = ["run", "suite.toml", "--cache", str(tmp_path / "cache"), "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "x" / "run")]) == 0
    assert not (tmp_path / "x" / "index.html").exists()
    assert "gallery: not updated" in capsys.readouterr().out
    assert cli.main([*args, "--out", str(tmp_path / "x" / "run"), "--gallery", "g"]) == 0
    assert (tmp_path / "g" / "index.html").is_file()  # where asked (it lists what is under g)
    assert cli.main([*args, "--out", "reports/run"]) == 0  # under the default reports root
    assert "a run" in (tmp_path / "reports" / "index.html").read_text(encoding="utf-8")

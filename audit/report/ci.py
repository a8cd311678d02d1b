"""CI outputs of a run or a release comparison: a JUnit XML report and a markdown step summary.

Both read the results contract (:mod:`audit.results`): the ``gates``, ``failures``,
``verdict``, ``exit_code`` and ``suite`` keys that ``results.json`` and a release comparison
share; every other key is optional and every key may be missing or malformed.

- :func:`junit_xml` / :func:`write_junit`: one ``<testcase>`` per gate row (gate × model ×
  baseline) and one per crashed step, valid against the Jenkins xUnit plug-in's
  ``junit-10.xsd`` that GitLab, Jenkins and the GitHub test-report actions read;
- :func:`markdown_summary` / :func:`write_summary` / :func:`summary_target`: GitHub-flavoured
  markdown for ``$GITHUB_STEP_SUMMARY``, within GitHub's 1 MiB cap.

Every string a run produces -- model names, gate names, error messages, tracebacks -- is
untrusted: characters XML 1.0 cannot carry are dropped, and in markdown it is escaped so it
cannot add raw HTML, links, code spans or table cells.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from audit.files import atomic_write_text
from audit.report.format import as_float
from audit.results import Results, parse_results

SUMMARY_LIMIT = 1_000_000
"""Default byte budget of a step summary (GitHub rejects one over 1 MiB)."""
MAX_CELL = 1_000
"""Characters of untrusted text kept per markdown table cell."""
MAX_TRACEBACK = 4_000
"""Characters of a traceback kept in the markdown summary (the tail, where the error is)."""
MAX_MESSAGE = 1_000
"""Characters of an error message kept in a JUnit ``message`` attribute."""

# Everything outside the XML 1.0 ``Char`` production: C0 controls but tab/LF/CR, surrogates
# (lone ones reach here from bad decoding), U+FFFE and U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# DEL and the C1 controls are legal XML but have no business in a summary.
_CONTROL = re.compile("[\x7f-\x9f]")
_NON_WORD = re.compile(r"\W+")
_MD_PUNCT = re.compile(r"([\\*_\[\]~])")
_MARK = {"PASS": "✅", "FAIL": "❌", "ERROR": "💥"}


# --- shared helpers ---------------------------------------------------------------------------


def _clean(value: Any) -> str:
    """``value`` as text XML 1.0 can carry: illegal characters dropped, newlines as ``\\n``."""
    text = "" if value is None else str(value)
    return _NOT_XML.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _title(results: Results) -> str:
    suite = results.suite
    return _clean(suite.title or suite.name or "audit") or "audit"


def _fmt(value: Any) -> str:
    """A gate's observed value or threshold: 4 significant digits, ``—`` when missing."""
    number = as_float(value)
    if number is not None:
        return f"{number:.4g}"
    return "—" if value is None else _clean(value)


def _passed(gate: Mapping[str, Any]) -> bool:
    return bool(gate.get("passed"))


def _cut(text: str, limit: int, *, tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    return "…" + text[-limit:] if tail else text[:limit] + "…"


# --- JUnit XML --------------------------------------------------------------------------------


def _classname(name: str) -> str:
    """``name`` as a dotless identifier: runs of non-word characters become ``_``."""
    return _cut(_NON_WORD.sub("_", name).strip("_"), 200) or "gate"


def _classnames(gates: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """A distinct ``audit.gates.<identifier>`` per gate name, in order of first appearance."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for g in gates:
        name = _clean(g.get("name"))
        if name in out:
            continue
        base = _classname(name)
        ident, n = base, 1
        while ident in used:
            n += 1
            ident = f"{base}_{n}"
        used.add(ident)
        out[name] = f"audit.gates.{ident}"
    return out


def _durations(results: Results) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in results.rows("steps"):
        d = as_float(s.get("duration_s"))
        if d is not None and d >= 0:
            out[_clean(s.get("step"))] = d
    return out


def _started(results: Results) -> datetime | None:
    env = results.environment
    try:
        started = datetime.fromisoformat(str(env.get("started_at")))
    except ValueError:
        return None
    return started.astimezone(UTC) if started.tzinfo else started


def _total_time(results: Results, durations: dict[str, float]) -> float:
    """The run's wall time from its environment, else the sum of its step durations."""
    env = results.environment
    started = _started(results)
    if started is not None:
        try:
            finished = datetime.fromisoformat(str(env.get("finished_at")))
        except ValueError:
            finished = None
        if finished is not None:
            finished = finished.astimezone(UTC) if finished.tzinfo else finished
            try:
                seconds = (finished - started).total_seconds()
            except TypeError:  # one naive, one aware
                seconds = -1.0
            if seconds >= 0:
                return seconds
    return sum(durations.values())


def _gate_message(gate: Mapping[str, Any]) -> str:
    rule = _clean(gate.get("rule")) or "no rule"
    threshold = _fmt(gate.get("threshold"))
    if as_float(gate.get("observed")) is None:
        return f"no value vs threshold {threshold} ({rule})"
    return f"observed {_fmt(gate.get('observed'))} vs threshold {threshold} ({rule})"


def junit_xml(results: Results | Mapping[str, Any]) -> str:
    """A JUnit XML report: a testcase per gate row (failed gate → ``<failure>``) and per
    crashed step (``<error>``), with the verdict, exit code and suite hash as properties."""
    results = parse_results(results, "results")
    verdict = results.verdict_text()
    gates = results.rows("gates")
    failures = results.rows("failures")
    durations = _durations(results)
    classnames = _classnames(gates)
    n_failed = sum(not _passed(g) for g in gates)
    counts = {
        "tests": str(len(gates) + len(failures)),
        "failures": str(n_failed),
        "errors": str(len(failures)),
    }
    elapsed = f"{_total_time(results, durations):.3f}"

    root = ET.Element("testsuites", {"name": "audit", **counts, "time": elapsed})
    attrs = {"name": _title(results), **counts, "skipped": "0", "time": elapsed}
    started = _started(results)
    if started is not None:
        # the strict JUnit pattern: no fraction, no zone (the time is UTC)
        attrs["timestamp"] = started.replace(tzinfo=None).isoformat(timespec="seconds")
    suite_el = ET.SubElement(root, "testsuite", attrs)

    suite = results.suite.model_dump()
    props = ET.SubElement(suite_el, "properties")
    values = {
        "verdict": verdict.lower(),
        "exit_code": str(results.code()),
        "suite": _clean(suite.get("name")),
        "suite_hash": _clean(suite.get("hash")),
    }
    for name, value in values.items():
        if value:
            ET.SubElement(props, "property", {"name": name, "value": value})

    for g in gates:
        model = _clean(g.get("model")) or "(no model)"
        baseline = _clean(g.get("baseline"))
        case = ET.SubElement(
            suite_el,
            "testcase",
            {
                "classname": classnames[_clean(g.get("name"))],
                "name": f"{model} vs {baseline}" if baseline else model,
                "time": "0",
            },
        )
        detail = _clean(g.get("detail"))
        if _passed(g):
            if detail:
                ET.SubElement(case, "system-out").text = detail
        else:
            failure = ET.SubElement(
                case, "failure", {"message": _gate_message(g), "type": "GateFailed"}
            )
            failure.text = detail

    for f in failures:
        step = _clean(f.get("step")) or "(unnamed step)"
        error = _clean(f.get("error"))
        case = ET.SubElement(
            suite_el,
            "testcase",
            {"classname": "audit.steps", "name": step, "time": f"{durations.get(step, 0.0):.3f}"},
        )
        el = ET.SubElement(
            case,
            "error",
            {"message": _cut(error, MAX_MESSAGE) or "step crashed", "type": "StepCrashed"},
        )
        el.text = _clean(f.get("traceback")) or error

    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'


def write_junit(path: Path, results: Results | Mapping[str, Any]) -> Path:
    """Write :func:`junit_xml` of ``results`` to ``path`` atomically (parents created)."""
    path = Path(path)
    atomic_write_text(path, junit_xml(results))
    return path


# --- markdown step summary --------------------------------------------------------------------


def _md(value: Any, limit: int = MAX_CELL) -> str:
    """Untrusted text as inert inline markdown: fit for a table cell, list item or heading.

    ``& < >`` become entities (no raw HTML reaches the renderer), markdown punctuation that
    makes emphasis or links is backslash-escaped, ``|`` and backticks become entities (no new
    cell, no code span) and newlines ``<br>``.
    """
    text = _CONTROL.sub("", _cut(_clean(value), limit)).strip()
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_PUNCT.sub(r"\\\1", text)
    text = text.replace("|", "&#124;").replace("`", "&#96;")
    return text.replace("\t", " ").replace("\n", "<br>")


def _pre(value: Any) -> str:
    """Untrusted multi-line text as the body of an HTML ``<pre>`` block: entities only."""
    text = _CONTROL.sub("", _cut(_clean(value), MAX_TRACEBACK, tail=True))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _url(report: str) -> str | None:
    """``report`` as a markdown link target when it is an http(s) URL, else None."""
    if not re.match(r"https?://", report, re.IGNORECASE):
        return None
    return quote(_clean(report), safe="/:?#@!$&'*+,;=%~-._")


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _take(lines: list[str], budget: int) -> int:
    """How many of ``lines`` (each written with a newline) fit in ``budget`` bytes."""
    used = 0
    for i, line in enumerate(lines):
        used += _bytes(line) + 1
        if used > budget:
            return i
    return len(lines)


def _gate_row(g: Mapping[str, Any]) -> str:
    ok = _passed(g)
    cells = [
        "✅ PASS" if ok else "❌ FAIL",
        _md(g.get("name")),
        _md(g.get("model")),
        _md(g.get("baseline")) or "—",
        _md(_fmt(g.get("observed"))),
        _md(_fmt(g.get("threshold"))),
        _md(g.get("detail")),
    ]
    return "| " + " | ".join(cells) + " |"


def _failure_block(f: Mapping[str, Any]) -> str:
    head = f"- **{_md(f.get('step')) or '(unnamed step)'}**: {_md(f.get('error')) or 'crashed'}"
    traceback = _pre(f.get("traceback"))
    if not traceback.strip():
        return head
    # an HTML block opened by <pre> runs to </pre>, blank lines included; the traceback has
    # its < escaped, so it cannot close the block early
    return (
        f"{head}\n\n<details><summary>traceback</summary>\n\n<pre>\n{traceback}\n</pre>\n\n"
        "</details>\n"
    )


def _steps_line(results: Results) -> str:
    steps = results.rows("steps")
    if not steps:
        return ""
    status = [str(s.get("status")) for s in steps]
    cached = sum(s.get("status") == "ok" and bool(s.get("cached")) for s in steps)
    ran = status.count("ok") - cached
    return (
        f"**Steps:** {len(steps)} ({ran} run, {cached} cached, "
        f"{status.count('failed')} failed, {status.count('skipped')} skipped)"
    )


def markdown_summary(
    results: Results | Mapping[str, Any],
    *,
    report: str | None = None,
    limit: int = SUMMARY_LIMIT,
) -> str:
    """GitHub-flavoured markdown of a run or comparison for ``$GITHUB_STEP_SUMMARY``.

    A verdict heading, counts, a gates table (failed rows first), the crashed steps and the
    report's path or URL, in at most ``limit`` UTF-8 bytes: rows that do not fit are left out
    (passed ones first) and counted.
    """
    results = parse_results(results, "results")
    verdict = results.verdict_text()
    gates = sorted(results.rows("gates"), key=_passed)
    failures = results.rows("failures")
    n_failed = sum(not _passed(g) for g in gates)

    head = [f"## {_MARK.get(verdict, '')} {verdict} — {_md(_title(results), 300)}", ""]
    counts = [
        f"**Gates:** {len(gates) - n_failed} passed, {n_failed} failed "
        f"({len(gates)} check{'' if len(gates) == 1 else 's'})",
        f"**Crashed steps:** {len(failures)}",
        f"**Exit code:** {results.code()}",
    ]
    head += [" · ".join(counts)]
    if steps := _steps_line(results):
        head += ["", steps]
    if report:
        url = _url(report)
        head += [
            "",
            f"**Report:** [{_md(report, 500)}]({url})"
            if url
            else f"**Report:** {_md(report, 2000)}",
        ]
    head += [""]

    text = "\n".join(head) + "\n"
    # room for the notes about what was left out
    budget = limit - _bytes(text) - 600
    if budget <= 0:
        return text.encode("utf-8")[: max(limit, 0)].decode("utf-8", "ignore")

    # crashed steps get half the budget, or all that the full gates table leaves
    rows = [_gate_row(g) for g in gates]
    table_bytes = sum(_bytes(r) + 1 for r in rows) + 200
    blocks = [_failure_block(f) for f in failures]
    n_blocks = _take(blocks, max(budget // 2, budget - table_bytes) - 40)
    steps_part: list[str] = []
    if failures:
        steps_part = ["", "### Crashed steps", "", *blocks[:n_blocks]]
        if n_blocks < len(blocks):
            steps_part += [
                "",
                f"_{len(blocks) - n_blocks} more crashed steps left out to keep this summary "
                "under GitHub's size limit; see the report or results.json._",
            ]
    budget -= _bytes("\n".join(steps_part) + "\n") if steps_part else 0

    table: list[str] = []
    if gates:
        header = [
            "### Gates",
            "",
            "| result | gate | model | baseline | observed | threshold | detail |",
            "| --- | --- | --- | --- | ---: | ---: | --- |",
        ]
        n_rows = _take(rows, budget - _bytes("\n".join(header)) - 1)
        table = header + rows[:n_rows] if n_rows else ["### Gates"]
        if n_rows < len(rows):
            left = gates[n_rows:]
            left_failed = sum(not _passed(g) for g in left)
            table += [
                "",
                f"_{len(left)} more gate rows left out ({left_failed} failed, "
                f"{len(left) - left_failed} passed) to keep this summary under GitHub's size "
                "limit; see the report or results.json._",
            ]
    else:
        table = ["_No gates._"]

    return text + "\n".join([*table, *steps_part]) + "\n"


def write_summary(path: Path, text: str, *, append: bool) -> Path:
    """Write a summary: appended (``$GITHUB_STEP_SUMMARY`` collects appends) or replacing."""
    path = Path(path)
    if not text.endswith("\n"):
        text += "\n"
    if append:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    else:
        atomic_write_text(path, text)
    return path


def summary_target(explicit: str | None) -> tuple[Path, bool] | None:
    """Where a summary goes and whether to append: an explicit path (replaced), else
    ``$GITHUB_STEP_SUMMARY`` when set and non-empty (appended), else None."""
    if explicit:
        return Path(explicit), False
    env = os.environ.get("GITHUB_STEP_SUMMARY", "")
    if env.strip():
        return Path(env), True
    return None

"""The gallery: one page (``index.html`` at an output root) listing every run under it.

``audit run`` writes each run to ``ROOT/<name>/`` (``results.json`` plus its report
``index.html``) and then rewrites ``ROOT/index.html``: the runs under ``ROOT`` newest first, each
with its verdict, counts, the worst paired change of every headline metric and its failed gates,
linking to the run's own report. Release comparisons (``DIR/comparison.json``, ``"kind":
"release_comparison"``) are listed too, labelled as comparisons.

Results files are untrusted input: a file that cannot be read or has the wrong shape is listed
as unreadable with the reason, never raised; every string from a file is HTML-escaped; the only
links are relative paths built here from directory names (URL-quoted), never taken from a file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

import audit
from audit.errors import InputError
from audit.report.format import (
    ALPHA,
    DASH,
    as_float,
    cell_text,
    ci_text,
    clean_text,
    cut,
    elapsed_s,
    html_table,
    num,
    seconds_text,
    significant,
)
from audit.report.page import HERE, jinja_environment, write_page
from audit.results import Results

RESULTS = "results.json"
COMPARISON = "comparison.json"
RELEASE_COMPARISON = "release_comparison"
UNREADABLE = "UNREADABLE"
MAX_FAILED_GATES = 3
"""Failed gates named per run; the rest are counted."""
MAX_HEADLINES = 12
"""Headline metrics shown per run; the rest are counted."""
MAX_FILE_BYTES = 512 * 2**20
"""A results file larger than this is listed as unreadable rather than parsed."""
MAX_DIRS = 20_000
"""Directories visited at most by one scan, so a gallery over a large tree stays quick."""
MARKER = '<meta name="audit-page" content="gallery">'
"""Marks a page as a gallery: :func:`write_gallery` replaces no other ``index.html``."""
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}
_STORE_PARTS = ("entries", "locks", "tmp", "corrupt", "file-hashes")


class GalleryError(InputError):
    """The gallery cannot be written where asked (e.g. it would replace a run's report)."""


@dataclass(frozen=True)
class Headline:
    """The worst paired change of one headline metric vs. a baseline, across models."""

    evaluator: str
    metric: str
    model: str
    baseline: str
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    higher_is_better: bool

    @property
    def significant(self) -> bool:
        return significant(self.p_value)

    @property
    def direction(self) -> str:
        """``good`` / ``bad`` / ``same`` / ``unknown`` given the metric's direction."""
        if self.delta is None:
            return "unknown"
        if self.delta == 0:
            return "same"
        return "good" if (self.delta > 0) == self.higher_is_better else "bad"

    @property
    def change(self) -> str:
        """``-0.144 * [-0.203, -0.096]``: the change, a star when significant, its interval."""
        mark = " *" if self.significant else ""
        interval = ci_text(self.ci_low, self.ci_high, signed=True)
        return " ".join(filter(None, [num(self.delta, signed=True) + mark, interval]))


@dataclass(frozen=True)
class FailedGate:
    name: str
    model: str
    observed: float | None
    threshold: float | None


@dataclass
class RunSummary:
    """One entry of the gallery: a run (``results.json``) or a release comparison."""

    path: str
    """The run's directory relative to the gallery root, as POSIX text (for display)."""
    kind: str
    """``run`` or ``comparison``."""
    href: str | None
    """Relative, URL-quoted link to the run's ``index.html``; None when there is none."""
    finished_at: datetime
    """When the run finished (recorded), else the results file's modification time (UTC)."""
    finished_recorded: bool
    title: str
    suite: str
    verdict: str
    """``PASS`` / ``FAIL`` / ``ERROR``, or ``UNREADABLE`` when the file could not be read."""
    error: str | None = None
    """Why the results file is unreadable; None when it was read."""
    models: int | None = None
    gates_passed: int = 0
    gates_failed: int = 0
    failed_steps: int = 0
    duration_s: float | None = None
    headlines: list[Headline] = field(default_factory=list)
    failed_gates: list[FailedGate] = field(default_factory=list)
    """The first :data:`MAX_FAILED_GATES` failed gates; ``gates_failed`` counts them all."""
    old: str | None = None
    new: str | None = None
    """For a comparison: the compared runs, as text."""

    @property
    def unreadable(self) -> bool:
        return self.error is not None


# --- scanning ---------------------------------------------------------------------------------


def _is_store(path: Path) -> bool:
    """A store directory (:mod:`audit.store.core`): ``entries/`` beside ``locks/``, ``tmp/``, ..."""
    try:
        names = {p.name for p in path.iterdir() if p.is_dir()}
    except OSError:
        return False
    return "entries" in names and any(part in names for part in _STORE_PARTS[1:])


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _result_files(root: Path, max_depth: int) -> Iterator[tuple[Path, Path]]:
    """(directory, results file) under ``root``, 1 to ``max_depth`` directories deep.

    Hidden directories, store directories and symlinks that lead out of ``root`` are skipped;
    a file directly in ``root`` is not listed (``root/index.html`` is the gallery).
    """
    real_root = root.resolve()
    seen = {real_root}
    stack: list[tuple[Path, int]] = [(root, 0)]
    visited = 0
    while stack and visited < MAX_DIRS:
        directory, depth = stack.pop()
        visited += 1
        if depth > 0:
            for name in (RESULTS, COMPARISON):
                file = directory / name
                try:
                    if file.is_file() and _within(file.resolve(), real_root):
                        yield directory, file
                except OSError:
                    continue
        if depth >= max_depth:
            continue
        try:
            children = sorted(directory.iterdir(), reverse=True)
        except OSError:
            continue
        for child in children:
            if child.name.startswith(".") or child.name in _SKIP_DIRS:
                continue
            try:
                if not child.is_dir():
                    continue
                real = child.resolve()
            except OSError:
                continue
            if real in seen or not _within(real, real_root) or _is_store(child):
                continue
            seen.add(real)
            stack.append((child, depth + 1))


def _relative(directory: Path, root: Path) -> tuple[str, str]:
    """The directory relative to root: as display text, and as a URL-quoted href prefix."""
    parts = directory.relative_to(root).parts
    text = "/".join(clean_text(p) for p in parts)
    href = "/".join(quote(p.encode("utf-8", "surrogateescape"), safe="") for p in parts)
    return text, href


def find_runs(root: Path, max_depth: int = 3) -> list[RunSummary]:
    """Every run and release comparison under ``root``, newest first.

    Looks for ``results.json`` and ``comparison.json`` in directories 1 to ``max_depth``
    levels below ``root``. A file that cannot be read or understood becomes an entry with
    verdict ``UNREADABLE`` and the reason in ``error``; this function does not raise for them.
    """
    root = Path(root)
    summaries = [
        _summary(root, directory, file) for directory, file in _result_files(root, max_depth)
    ]
    summaries.sort(key=lambda s: (-s.finished_at.timestamp(), s.path, s.kind))
    return summaries


# --- reading one file -------------------------------------------------------------------------


def _mtime(file: Path) -> datetime:
    try:
        return datetime.fromtimestamp(file.stat().st_mtime, UTC)
    except (OSError, OverflowError, ValueError):
        return datetime.fromtimestamp(0, UTC)


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _load(file: Path) -> Results:
    """The file's results (or comparison); raises ValueError with a readable reason otherwise.

    Read with :func:`audit.results.read_json_file` (a regular file only, never a FIFO; UTF-8,
    digits, depth and lone surrogates checked) and :func:`audit.results.parse_results`, whose
    :class:`~audit.results.ResultsError` is a ValueError.
    """
    from audit.results import parse_results, read_json_file

    try:
        size = file.stat().st_size
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror or e}") from e
    if size > MAX_FILE_BYTES:
        raise ValueError(f"file too large ({size} bytes)")
    if size == 0:
        raise ValueError("empty file")
    data = read_json_file(file, file.name)
    if not isinstance(data, dict):
        raise ValueError(f"wrong shape: a JSON {type(data).__name__}, not an object")
    known = ("suite", "gates", "metrics", "models", "comparisons", "verdict", "schema_version")
    if not any(key in data for key in known):
        raise ValueError("wrong shape: no suite, models, metrics or gates")
    return parse_results(data, "wrong shape")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _finished(data: Results) -> datetime | None:
    env, extra = data.environment, data.model_extra or {}
    for value in (env.get("finished_at"), extra.get("finished_at"), extra.get("created_at")):
        stamp = _timestamp(value)
        if stamp is not None:
            return stamp
    return None


def _duration(data: Results) -> float | None:
    env = data.environment
    took = as_float(env.get("duration_s", (data.model_extra or {}).get("duration_s")))
    if took is None:
        took = elapsed_s(env.get("started_at"), env.get("finished_at"))
    return took if took is not None and took >= 0 and took != float("inf") else None


def _headline_metrics(data: Results) -> list[tuple[str, str]] | None:
    """(evaluator, metric) of every declared headline metric; None when none are declared."""
    if not data.evaluators:
        return None
    found: list[tuple[str, str]] = []
    for spec in data.evaluators:
        for m in spec.metrics:
            if m.headline:
                pair = (cell_text(spec.name), cell_text(m.name))
                if pair not in found:
                    found.append(pair)
    return found


def _badness(row: Mapping[str, Any]) -> float:
    """How much worse the change made the metric (larger: worse); missing deltas last."""
    delta = as_float(row.get("delta"))
    if delta is None:
        return float("-inf")
    return -delta if row.get("higher_is_better", True) else delta


def _headlines(data: Results, comparison: bool) -> list[Headline]:
    """Per headline metric, the worst change on slice ``all`` vs. a parent, across models.

    A release comparison's rows are all taken (they compare the old run with the new one).
    """
    rows: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in data.rows("comparisons"):
        if c.get("slice", "all") != "all":
            continue
        if not comparison and c.get("relation", "parent") != "parent":
            continue
        rows.setdefault((cell_text(c.get("evaluator")), cell_text(c.get("metric"))), []).append(c)
    wanted = _headline_metrics(data)
    keys = list(rows) if wanted is None else [k for k in wanted if k in rows]
    out = []
    for key in keys:
        worst = max(rows[key], key=lambda r: (_badness(r), significant(r.get("p_value"))))
        out.append(
            Headline(
                evaluator=key[0],
                metric=key[1],
                model=cell_text(worst.get("model")),
                baseline=cell_text(worst.get("baseline")),
                delta=as_float(worst.get("delta")),
                ci_low=as_float(worst.get("ci_low")),
                ci_high=as_float(worst.get("ci_high")),
                p_value=as_float(worst.get("p_value")),
                higher_is_better=bool(worst.get("higher_is_better", True)),
            )
        )
    return out


def _model_count(data: Results) -> int | None:
    models = data.rows("models")
    if models:
        return len(models)
    names = {
        cell_text(r.get("model")) for key in ("metrics", "comparisons") for r in data.rows(key)
    }
    return len(names) if names else None


def _run_parts(info: Any) -> tuple[str | None, str | None]:
    """A compared run (``old`` / ``new`` of a comparison): its title and its path, as given."""
    if not isinstance(info, Mapping):
        return (None if info is None else cell_text(info)), None
    suite = _mapping(info.get("suite"))
    names = [info.get("title"), suite.get("title"), info.get("name"), suite.get("name")]
    title = next((v for v in names if isinstance(v, str) and v), None)
    path = info.get("path")
    return title, path if isinstance(path, str) and path else None


def _run_label(title: str | None, path: str | None, paths_only: bool) -> str | None:
    if paths_only or title is None:
        return None if path is None else cut(cell_text(path), 200)
    return cut(cell_text(f"{title} ({path})" if path else title), 200)


def _run_labels(old: Any, new: Any) -> tuple[str | None, str | None]:
    """The compared runs as text: just their paths when both have one and the titles agree."""
    (old_title, old_path), (new_title, new_path) = _run_parts(old), _run_parts(new)
    paths_only = old_path is not None and new_path is not None and old_title == new_title
    return (
        _run_label(old_title, old_path, paths_only),
        _run_label(new_title, new_path, paths_only),
    )


def _summary(root: Path, directory: Path, file: Path) -> RunSummary:
    path, href = _relative(directory, root)
    run = RunSummary(
        path=path,
        kind="comparison" if file.name == COMPARISON else "run",
        href=f"{href}/index.html" if (directory / "index.html").is_file() else None,
        finished_at=_mtime(file),
        finished_recorded=False,
        title=path,
        suite=DASH,
        verdict=UNREADABLE,
    )
    try:
        _read(_load(file), run)
    except Exception as e:  # an unreadable entry, never a broken gallery
        reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        return replace(
            run,
            verdict=UNREADABLE,
            error=clean_text(reason)[:300] or "unknown error",
            models=None,
            gates_passed=0,
            gates_failed=0,
            failed_steps=0,
            duration_s=None,
            headlines=[],
            failed_gates=[],
            old=None,
            new=None,
        )
    return run


def _read(data: Results, run: RunSummary) -> None:
    """Fill ``run`` in from its results (or comparison) file's contents."""
    extra = data.model_extra or {}
    if extra.get("kind") == RELEASE_COMPARISON:
        run.kind = "comparison"
    suite = data.suite
    finished = _finished(data)
    if finished is not None:
        run.finished_at, run.finished_recorded = finished, True
    title = suite.title or suite.name
    if title:
        run.title = cell_text(title)
    if suite.name:
        run.suite = cell_text(suite.name)
    gates = data.rows("gates")
    failed = [g for g in gates if not g.get("passed")]
    steps_failed = sum(s.get("status") == "failed" for s in data.rows("steps"))
    run.models = _model_count(data)
    run.gates_passed, run.gates_failed = len(gates) - len(failed), len(failed)
    run.failed_steps = max(len(data.rows("failures")), steps_failed)
    run.duration_s = _duration(data)
    run.headlines = _headlines(data, run.kind == "comparison")
    run.failed_gates = [
        FailedGate(
            name=cell_text(g.get("name")),
            model=cell_text(g.get("model")),
            observed=as_float(g.get("observed")),
            threshold=as_float(g.get("threshold")),
        )
        for g in failed[:MAX_FAILED_GATES]
    ]
    if run.kind == "comparison":
        run.old, run.new = _run_labels(extra.get("old"), extra.get("new"))
    run.verdict = data.verdict_text()


# --- rendering --------------------------------------------------------------------------------


def _when(stamp: datetime) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _took(duration: float) -> str:
    if duration < 10:
        return f"{duration:.1f} s"
    return f"{round(duration)} s" if duration < 59.5 else seconds_text(duration)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary_line(runs: list[RunSummary]) -> str:
    """``3 runs: 1 pass, 2 fail`` (comparisons and unreadable files counted apart)."""
    if not runs:
        return "No runs yet."
    n_runs = sum(r.kind == "run" for r in runs)
    n_comparisons = len(runs) - n_runs
    head = " and ".join(
        filter(
            None,
            [
                _plural(n_runs, "run") if n_runs or not n_comparisons else "",
                _plural(n_comparisons, "comparison") if n_comparisons else "",
            ],
        )
    )
    counts = [
        f"{n} {label}"
        for label, n in (
            ("pass", sum(r.verdict == "PASS" for r in runs)),
            ("fail", sum(r.verdict == "FAIL" for r in runs)),
            ("error", sum(r.verdict == "ERROR" for r in runs)),
            ("unreadable", sum(r.verdict == UNREADABLE for r in runs)),
        )
        if n
    ]
    return f"{head}: {', '.join(counts)}"


def _headline_table(index: int, headlines: list[Headline], comparison: bool) -> Markup:
    pair = "new vs old model" if comparison else "model vs baseline"
    columns = ["metric", "worst change [95% CI]", pair]
    rows = [
        {
            "metric": f"{h.evaluator} · {h.metric}",
            "worst change [95% CI]": h.change,
            pair: f"{h.model} vs {h.baseline}",
        }
        for h in headlines[:MAX_HEADLINES]
    ]
    classes = [
        {"worst change [95% CI]": " ".join(["delta", h.direction] + ["sig"] * h.significant)}
        for h in headlines[:MAX_HEADLINES]
    ]
    empty = (
        "No paired comparison of the runs." if comparison else "No paired comparison with a parent."
    )
    return html_table(f"run{index}-headlines", columns, rows, classes, empty=empty)


def _card(index: int, run: RunSummary) -> dict[str, Any]:
    facts = []
    if run.models is not None:
        facts.append(_plural(run.models, "model"))
    if not run.unreadable:
        gates = run.gates_passed + run.gates_failed
        facts.append(_plural(gates, "gate") + (f" ({run.gates_failed} failed)" if gates else ""))
        facts.append(_plural(run.failed_steps, "failed step"))
    return {
        "run": run,
        "when": _when(run.finished_at) + ("" if run.finished_recorded else " (file time)"),
        "iso": run.finished_at.isoformat(timespec="seconds"),
        "took": None if run.duration_s is None else _took(run.duration_s),
        "facts": facts,
        "headlines": None
        if run.unreadable
        else _headline_table(index, run.headlines, run.kind == "comparison"),
        "more_headlines": max(len(run.headlines) - MAX_HEADLINES, 0),
        "failed_gates": [
            (g.name, g.model, num(g.observed), num(g.threshold)) for g in run.failed_gates
        ],
        "more_gates": max(run.gates_failed - len(run.failed_gates), 0),
    }


def render_gallery(root: Path, runs: list[RunSummary]) -> str:
    """The gallery page for ``runs`` (as :func:`find_runs` returns them) under ``root``."""
    context = {
        "root": clean_text(Path(root).resolve().name) or clean_text(str(Path(root).resolve())),
        "summary": _summary_line(runs),
        "updated": _when(datetime.now(UTC)),
        "cards": [_card(i, run) for i, run in enumerate(runs, start=1)],
        "alpha": ALPHA,
        "audit_version": audit.__version__,
        "marker": Markup(MARKER),
        "css": Markup((HERE / "style.css").read_text(encoding="utf-8")),
    }
    return jinja_environment().get_template("gallery.html.j2").render(**context)


def _check_target(target: Path) -> None:
    """Refuse to replace an ``index.html`` that is not a gallery (a run's own report)."""
    try:
        with open(target, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except FileNotFoundError:
        return
    except OSError as e:
        raise GalleryError(f"cannot read {target}: {e.strerror or e}") from e
    if MARKER not in head:
        raise GalleryError(f"{target} exists and is not a gallery; not replacing it")


def write_gallery(root: Path, max_depth: int = 3) -> Path:
    """Rewrite ``root/index.html``, the gallery of the runs under ``root``; return its path.

    The page is written to a temporary file beside it, then renamed over it. Raises
    :class:`GalleryError` when ``root`` is not a directory, and rather than replace an
    ``index.html`` that is not a gallery (a run's own report, say).
    """
    root = Path(root)
    if not root.is_dir():
        raise GalleryError(f"{root} is not a directory")
    target = root / "index.html"
    _check_target(target)
    return write_page(target, render_gallery(root, find_runs(root, max_depth=max_depth)))

"""Command-line interface: ``audit run | validate | report | compare | gallery | cache prune |
organism build | list | schema`` (``cache prune``: :mod:`audit.store.prune`).

``audit compare OLD NEW`` compares a candidate release's run (NEW) with the last shipped one's
(OLD) and applies release gates to the change (:mod:`audit.release.compare`); it writes
``comparison.json`` and ``index.html`` to ``--out`` (default
``reports/compare-<old suite>-vs-<new suite>/``). Both rewrite the gallery of runs
(``--gallery DIR``; by default the reports root, when the output directory lies under it, and
otherwise none: nothing is written outside the directories named), and both write
``--junit`` XML and a markdown ``--summary`` (by default appended to ``$GITHUB_STEP_SUMMARY``
when that is set) for CI.

Exit codes: 0 every gate passed, 1 a gate failed, 2 invalid suite, input or usage, 3 a step
crashed (for ``compare``: the new run has failed steps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from audit.errors import EXIT_CRASHED, EXIT_INVALID, EXIT_OK, AuditError
from audit.terminal import escape  # markup escaped and control characters made visible

if TYPE_CHECKING:
    from audit.suite.suite import Suite

_err = Console(stderr=True, highlight=False, soft_wrap=True)
_out = Console(highlight=False, soft_wrap=True)


def _load(path: str, *, runs_here: bool = True) -> Suite:
    from audit.suite.checks import load_suite

    return load_suite(path, runs_here=runs_here)


def cmd_validate(args: argparse.Namespace) -> int:
    suite = _load(args.suite)
    n_evals = sum(len(suite.evaluated_models(e)) for e in suite.file.evaluators)
    _out.print(
        f"{escape(str(args.suite))}: valid — {len(suite.file.models)} models, "
        f"{len(suite.file.evaluators)} evaluators ({n_evals} evaluations), "
        f"{len(suite.file.gates)} gates; reference model {escape(suite.reference)}"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from audit.api import run_suite

    suite = _load(args.suite, runs_here=args.executor == "local")
    record = run_suite(
        suite,
        out=args.out,
        cache=args.cache,
        device=args.device,
        quiet=args.quiet,
        executor=args.executor,
        address=args.address,
    )
    out_dir = record.report.parent
    _update_gallery(_gallery_root(args.gallery, out_dir, lambda: _default_out(suite).parent))
    _summarize(record.results, record.executed, record.report)
    return _ci_outputs(record.results, args, record.report, int(record.results["exit_code"]))


def _ci_outputs(results: dict[str, Any], args: argparse.Namespace, report: Path, code: int) -> int:
    """Write ``--junit`` and ``--summary`` (default: append to ``$GITHUB_STEP_SUMMARY``).

    A file that cannot be written is an error on stderr; the exit code stays the gates' code,
    except that a run which passed exits 3 (CI must not read a missing file as a pass).
    """
    from audit.report.ci import markdown_summary, summary_target, write_junit, write_summary

    failed = False
    if args.junit:
        try:
            _out.print(f"junit: {escape(str(write_junit(Path(args.junit), results)))}")
        except OSError as e:
            _err.print(f"[red]error[/] cannot write --junit {escape(args.junit)}: {escape(str(e))}")
            failed = True
    target = summary_target(args.summary)
    if target is not None:
        path, append = target
        try:
            write_summary(path, markdown_summary(results, report=str(report)), append=append)
        except OSError as e:
            _err.print(
                f"[red]error[/] cannot write the summary {escape(str(path))}: {escape(str(e))}"
            )
            failed = True
    return EXIT_CRASHED if failed and code == EXIT_OK else code


def _default_out(suite: Suite) -> Path:
    from audit.api import default_out

    return default_out(suite)


def _field(text: object) -> str:
    """A name or detail of a one-line record (a gate, a step), escaped, newlines too."""
    return escape(text, newlines=False)


def _summarize(results: dict[str, Any], executed: list[str], report: Path) -> None:
    for g in results["gates"]:
        mark = "[green]PASS[/]" if g["passed"] else "[red]FAIL[/]"
        _out.print(f"{mark} {_field(g['name'])} — {_field(g['model'])}: {_field(g['detail'])}")
    for f in results["failures"]:
        _out.print(f"[red]ERROR[/] {_field(f['step'])}: {escape(f['error'])}")
    n = len(results["steps"])
    _out.print(f"{len(executed)} of {n} steps executed, {n - len(executed)} cached or skipped")
    verdict = results["verdict"].upper()
    colour = {"PASS": "green", "FAIL": "red"}.get(verdict, "magenta")
    _out.print(f"[bold {colour}]{verdict}[/] — report: {escape(str(report))}")


def _gallery_root(
    gallery: str | None, out_dir: Path, reports_root: Callable[[], Path]
) -> Path | None:
    """Where the gallery goes: ``--gallery DIR``, else the reports root (``reports/``, or the
    parent of ``[report] output_dir``) when the output directory lies under it; else nowhere,
    so that a command never writes outside the directories it was given."""
    if gallery is not None:
        return Path(gallery)
    root = reports_root().resolve()
    return root if out_dir.resolve().is_relative_to(root) else None


def _update_gallery(root: Path | None) -> None:
    """Rewrite ``root/index.html`` after a run; a failure is a warning, never the run's result."""
    if root is None:
        _out.print("gallery: not updated (the output is outside the reports root; --gallery DIR)")
        return
    try:
        from audit.report.gallery import write_gallery

        root.mkdir(parents=True, exist_ok=True)  # named by --gallery, or holding the output
        write_gallery(root)
    except Exception as e:
        _err.print(f"[yellow]warning[/] gallery not updated: {escape(str(e))}")


def cmd_gallery(args: argparse.Namespace) -> int:
    from audit.report.gallery import write_gallery

    path = write_gallery(Path(args.root))  # a GalleryError is an input error: exit 2
    _out.print(f"gallery: {escape(str(path))}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from audit.release.compare import write_comparison

    result = _comparison(args)  # a CompareError is an input error: exit 2
    out_dir = _compare_out(args, result)
    report = write_comparison(out_dir, result)
    _update_gallery(_gallery_root(args.gallery, out_dir, lambda: Path("reports")))
    _summarize_comparison(result, report, quiet=args.quiet)
    return _ci_outputs(result, args, report, int(result["exit_code"]))


def _comparison(args: argparse.Namespace) -> dict[str, Any]:
    """The release comparison of run ``args.old`` with run ``args.new`` (comparison.json)."""
    from audit.release.compare import CompareError, compare_paths

    pairs: dict[str, str] = {}
    for item in args.pair or []:
        new, old = _split_pair(item)
        if not new or not old or new in pairs:
            why = f"{new!r} is paired twice" if new in pairs else "expected NEW=OLD model names"
            raise CompareError(f"--pair {item}: {why}")
        pairs[new] = old
    return compare_paths(args.old, args.new, pairs=pairs or None, suite=args.suite)


def _split_pair(item: str) -> tuple[str, str]:
    """``NEW=OLD`` split at the first ``=`` outside brackets (sweep members: ``lora[steps=4]``)."""
    depth = 0
    for i, char in enumerate(item):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "=" and depth == 0:
            return item[:i], item[i + 1 :]
    return item, ""


def _compare_out(args: argparse.Namespace, result: dict[str, Any]) -> Path:
    """``--out``, else reports/compare-<old suite>-vs-<new suite>; never a compared run's dir."""
    from audit.release.compare import CompareError, default_out_dir

    out_dir = Path(args.out) if args.out else default_out_dir(result)
    for side in ("old", "new"):
        if out_dir.resolve() == Path(result[side]["path"]).resolve().parent:
            raise CompareError(f"--out {out_dir} is the {side} run's directory; choose another")
    return out_dir


def _summarize_comparison(result: dict[str, Any], report: Path, *, quiet: bool) -> None:
    for g in result["gates"]:
        if not (quiet and g["passed"]):
            mark = "[green]PASS[/]" if g["passed"] else "[red]FAIL[/]"
            _out.print(f"{mark} {_field(g['name'])} — {_field(g['model'])}: {_field(g['detail'])}")
    for f in result["failures"]:
        _out.print(f"[red]ERROR[/] new run: {_field(f['step'])}: {escape(f['error'])}")
    for w in [] if quiet else result["warnings"]:
        _out.print(f"[yellow]WARN[/] {escape(w)}")
    rows = [c for c in result["comparisons"] if c["p_value"] is not None and c["p_value"] < 0.05]
    worse = sum(c["delta"] != 0 and (c["delta"] > 0) != c["higher_is_better"] for c in rows)
    better = sum(c["delta"] != 0 and (c["delta"] > 0) == c["higher_is_better"] for c in rows)
    _out.print(
        f"{len(result['comparisons'])} comparisons of {len(result['pairs'])} models: "
        f"{worse} significantly worse, {better} significantly better (p < 0.05)"
    )
    verdict = result["verdict"].upper()
    colour = {"PASS": "green", "FAIL": "red"}.get(verdict, "magenta")
    _out.print(f"[bold {colour}]{verdict}[/] — report: {escape(str(report))}")


def cmd_report(args: argparse.Namespace) -> int:
    from audit.report.render import render_report
    from audit.results import ResultsError, load_results, load_samples

    results_path = Path(args.results)
    if results_path.is_dir():
        results_path = results_path / "results.json"
    results = load_results(results_path)
    samples_path = results_path.with_name("samples.jsonl")
    present = samples_path.exists() or samples_path.is_symlink()
    samples = load_samples(samples_path, results.run_id) if present else []
    out = Path(args.out) if args.out else results_path.with_name("index.html")
    try:
        render_report(results, samples, out)  # written whole or not at all
    except Exception as e:  # a results file of the right shape with wrong contents
        raise ResultsError(
            f"{results_path}: cannot render this results file ({type(e).__name__}: {e}); "
            "is it a results.json written by `audit run`?"
        ) from e
    _out.print(f"report: {escape(str(out))}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from audit import registry

    for reg in (registry.interventions, registry.evaluators, registry.judges):
        _out.print(f"[bold]{reg.kind}s[/] (entry-point group {reg.group})")
        for info in reg.infos():
            _out.print(f"  {escape(info.name):<16} {escape(info.origin):<16} {escape(info.target)}")
            if reg.kind == "evaluator":
                try:
                    metrics = reg.get(info.name).metrics
                except Exception as e:  # a broken plug-in should not hide the others
                    _out.print(f"      [red]cannot load: {escape(str(e))}[/]")
                    continue
                for m in metrics:
                    arrow = "↑" if m.higher_is_better else "↓"
                    _out.print(f"      {arrow} {escape(m.name)}: {escape(m.description)}")
            if reg.kind == "judge":
                _out.print(f"      {escape(_judge_calibration(info.name))}")
            if getattr(args, "params", False):
                try:
                    fields = reg.get(info.name).Params.model_fields
                except Exception as e:  # a broken plug-in should not hide the others
                    _out.print(f"      [red]cannot load: {escape(str(e))}[/]")
                    continue
                for fname, finfo in fields.items():
                    key = finfo.alias or fname
                    default = "required" if finfo.is_required() else f"= {_default(finfo)}"
                    kind = _type_name(finfo.annotation)
                    _out.print(f"      {escape(key)}: {escape(kind)} {escape(default)}")
    return EXIT_OK


def _judge_calibration(name: str) -> str:
    """A judge's agreement with the shipped calibration set's labels (held-out third)."""
    from audit.judges.calibration import judge_calibration_row

    try:
        return str(judge_calibration_row("", name, {})["summary"])
    except Exception as e:  # a broken plug-in or data file should not hide the others
        return f"calibration: cannot measure ({type(e).__name__}: {e})"


def _type_name(annotation: Any) -> str:
    """A parameter's type as written in Python, without module paths or ``Annotated`` markers."""
    import re
    import typing

    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"typing\.|[A-Za-z_][\w.]*\.(?=[A-Za-z_])", "", text)
    return re.sub(r"Annotated\[([^,\]]+), [^\]]*\]", r"\1", text)


def _default(finfo: Any) -> str:
    """A parameter's default as a suite would write it (JSON; ``(unset)`` for ``None``)."""
    import json

    if finfo.default_factory is not None:
        try:
            value = finfo.default_factory()
        except TypeError:
            return "(computed)"
        value = value.model_dump() if hasattr(value, "model_dump") else value
    else:
        value = finfo.default
    if value is None:
        return "(unset)"
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def cmd_organism_build(args: argparse.Namespace) -> int:
    from audit.organism.build import build_organism, organism_names
    from audit.plan import organism_key
    from audit.progress import Progress
    from audit.store.core import open_store

    if args.name not in organism_names():
        _err.print(
            f"[red]error[/] unknown organism {escape(args.name)!r}; available: "
            + ", ".join(organism_names())
        )
        return EXIT_INVALID
    store = open_store(Path(args.cache).resolve(), create=True)
    progress = Progress(quiet=args.quiet)
    progress.begin(1)
    progress.start(f"organism:{args.name}")
    entry, cached = store.get_or_build(
        organism_key(args.name),
        lambda tmp: {
            "quality": build_organism(tmp / "model", progress=progress.sub, name=args.name)
        },
    )
    progress.finish(f"organism:{args.name}", "ok", cached)
    progress.end()
    quality = json.loads((entry / "model" / "quality.json").read_text())
    _out.print(
        f"organism:{escape(args.name)} — {escape(str(entry / 'model'))}"
        + (" (cached)" if cached else "")
    )
    _out.print(json.dumps(quality, indent=2))
    return EXIT_OK


def cmd_cache_prune(args: argparse.Namespace) -> int:
    from audit.resources import format_size
    from audit.store.core import open_store
    from audit.store.prune import prune

    if args.older_than is None and args.max_size is None:
        _err.print("[red]error[/] give --older-than DAYS, --max-size SIZE or both")
        return EXIT_INVALID
    from audit.store.open import default_local_cache, is_url

    if is_url(args.cache) and not str(args.cache).startswith("file://"):
        local = default_local_cache(str(args.cache))
        _err.print(
            f"[red]error[/] {escape(str(args.cache))}: audit prunes a store directory, not an "
            "object store (set the bucket's lifecycle rules for that); this machine's copy of "
            f"it is at {escape(str(local))}: --cache {escape(str(local))}"
        )
        return EXIT_INVALID
    root = Path(str(args.cache).removeprefix("file://"))
    if not root.is_dir():
        _err.print(f"[red]error[/] no store at {escape(str(root))}")
        return EXIT_INVALID
    store = open_store(root, create=False)  # refuses a directory that is not a store
    result = prune(
        store, older_than_days=args.older_than, max_size=args.max_size, dry_run=args.dry_run
    )
    for item in result.chosen:
        when = datetime.fromtimestamp(item.last_used, UTC).strftime("%Y-%m-%d %H:%M")
        status = {"in use": "skipped (in use by a running process)"}.get(item.status, item.status)
        _out.print(
            f"{escape(status)} {escape(item.key[:16])}  {format_size(item.size)}  "
            f"last used {when} UTC  ({_PRUNE_REASONS[item.reason]})"
        )
    verb = "would free" if args.dry_run else "freed"
    skipped = sum(i.status == "in use" for i in result.chosen)
    _out.print(
        f"{verb} {format_size(result.freed)} of {format_size(result.size_before)}; "
        f"store {'would be' if args.dry_run else 'is now'} {format_size(result.size_after)}"
        + (f"; {skipped} entries in use skipped" if skipped else "")
    )
    return EXIT_OK


_PRUNE_REASONS = {
    "age": "unused too long",
    "size": "over size",
    "stale": "left by a killed build",
}


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (0 or more)")
    return days


def _size_arg(text: str) -> int:
    from audit.resources import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_init(args: argparse.Namespace) -> int:
    from audit.suite.checks import SuiteError, load_suite
    from audit.suite.starter import starter_suite

    out = Path(args.out)
    if out.exists() and not args.force:
        _err.print(f"[red]error[/] {escape(str(out))} exists; pass --force to overwrite it")
        return EXIT_INVALID
    text = starter_suite(args.model, args.tuned, args.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    problems = [
        f"{flag} {source}: no such directory (relative paths are read from {out.parent})"
        for flag, source in (("--model", args.model), ("--tuned", args.tuned))
        if source
        and source.startswith("path:")
        and not (out.parent / Path(source[len("path:") :]).expanduser()).is_dir()
    ]
    try:
        load_suite(out)
    except SuiteError as e:
        problems += [str(issue) for issue in e.issues]
    if problems:
        for problem in problems:
            _err.print(f"[yellow]warning[/] {escape(problem)}")
        _out.print(f"wrote {escape(str(out))}; fix the above, then: audit run {escape(str(out))}")
        return EXIT_INVALID
    _out.print(f"wrote {escape(str(out))}; run it with: audit run {escape(str(out))}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from audit.suite.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="audit",
        description="Audit a model release pipeline for alignment drift, backdoors and forgetting.",
        epilog="Exit codes: 0 gates passed, 1 a gate failed, 2 invalid suite, 3 a step crashed.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="build, evaluate, compare and gate every model of a suite")
    run.add_argument("suite", help="path to suite.toml")
    run.add_argument("--out", help="output directory (default: reports/<suite name>/)")
    run.add_argument(
        "--cache",
        help="store directory, or an object-store URL such as s3://bucket/prefix (default: "
        "[suite] cache_dir)",
    )
    run.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda, cuda:N, mps, or auto (cuda, else mps, else cpu); or GPUs that each "
        "evaluated model is spread over, e.g. cuda:0,cuda:1 (end the list with cpu to offload "
        "what does not fit); interventions run on the first (default: cpu)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars (CI logs)")
    run.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where steps run: this process (local, the default) or a Ray cluster (ray): "
        "every ready step a task, independent ones at once",
    )
    run.add_argument(
        "--address",
        help="with --executor ray: the cluster (e.g. 10.0.0.5:6379, or auto for the one "
        "`ray start` made here; default: start a local one)",
    )
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a suite file without running anything")
    val.add_argument("suite")
    val.set_defaults(func=cmd_validate)
    rep = sub.add_parser("report", help="re-render index.html from a results.json")
    rep.add_argument("results")
    rep.add_argument("--out", help="output file (default: index.html beside results.json)")
    rep.set_defaults(func=cmd_report)
    cmp = sub.add_parser(
        "compare",
        help="compare a candidate release's run with the last shipped one's, and gate it",
        epilog="Exit codes: 0 gates passed, 1 a gate failed, 2 invalid input, "
        "3 the new run has failed steps.",
    )
    cmp.add_argument("old", help="the shipped run: its results.json or its output directory")
    cmp.add_argument("new", help="the candidate run: its results.json or its output directory")
    cmp.add_argument(
        "--out", help="output directory (default: reports/compare-<old suite>-vs-<new suite>/)"
    )
    cmp.add_argument(
        "--pair",
        action="append",
        metavar="NEW=OLD",
        help="compare model NEW of the new run with model OLD of the old run (repeatable; "
        "other models are matched by name)",
    )
    cmp.add_argument("--suite", help="take the gates from this suite file, not the new run's")
    cmp.add_argument("--quiet", action="store_true", help="print only failed gates and errors")
    cmp.set_defaults(func=cmd_compare)

    for command in (run, cmp):
        command.add_argument(
            "--gallery",
            metavar="DIR",
            help="rewrite DIR/index.html, the gallery of the runs under DIR (default: the reports "
            "root, when the output directory is under it)",
        )
        command.add_argument(
            "--junit", metavar="PATH", help="write a JUnit XML file: one testcase per gate × model"
        )
        command.add_argument(
            "--summary",
            metavar="PATH",
            help="write a markdown summary (default: append to $GITHUB_STEP_SUMMARY when set)",
        )
    gal = sub.add_parser("gallery", help="rewrite ROOT/index.html, the list of runs under ROOT")
    gal.add_argument("root", nargs="?", default="reports", help="output root (default: reports)")
    gal.set_defaults(func=cmd_gallery)
    init = sub.add_parser("init", help="write a starter suite auditing a checkpoint")
    init.add_argument(
        "--model", required=True, help='the checkpoint: "hf:ID", "path:DIR" or "organism:NAME"'
    )
    init.add_argument("--tuned", help="a fine-tune of it to audit against it (same forms)")
    init.add_argument("--out", default="suite.toml", help="the suite file (default suite.toml)")
    init.add_argument("--name", help="the suite's name (default audit-<model name>)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_init)
    lst = sub.add_parser("list", help="list installed plug-ins")
    lst.add_argument(
        "--params", action="store_true", help="also every plug-in's parameters and defaults"
    )
    lst.set_defaults(func=cmd_list)
    sub.add_parser("schema", help="print the suite JSON schema").set_defaults(func=cmd_schema)
    org = sub.add_parser("organism", help="the built-in model organism")
    org_sub = org.add_subparsers(dest="organism_command", required=True)
    build = org_sub.add_parser("build", help="build (or reuse) the organism and print its quality")
    build.add_argument("name", nargs="?", default="aligned", help="organism name (default aligned)")
    build.add_argument("--cache", default=".audit-cache", help="store directory")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=cmd_organism_build)
    cache = sub.add_parser("cache", help="manage the store")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    prn = cache_sub.add_parser(
        "prune",
        help="remove least-recently-used store entries (never one a running process uses)",
    )
    prn.add_argument("--cache", default=".audit-cache", help="store directory")
    prn.add_argument(
        "--older-than", type=_days, metavar="DAYS", help="remove entries unused for DAYS days"
    )
    prn.add_argument(
        "--max-size",
        type=_size_arg,
        metavar="SIZE",
        help="then remove the least recently used until the store fits SIZE (10G, 500M, …)",
    )
    prn.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    prn.set_defaults(func=cmd_cache_prune)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``audit`` command."""
    from audit.suite.checks import SuiteError

    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SuiteError as e:
        for issue in e.issues:
            _err.print(f"[red]error[/] {escape(str(issue))}")
        return e.exit_code
    except AuditError as e:
        # input it cannot use (exit 2: a data set, checkpoint, results file, store) or a
        # failure it detected (exit 3); see audit.errors
        _err.print(f"[red]error[/] {escape(str(e))}")
        return e.exit_code
    except (FileNotFoundError, json.JSONDecodeError) as e:
        _err.print(f"[red]error[/] {escape(str(e))}")
        return EXIT_INVALID
    except KeyboardInterrupt:
        _err.print("interrupted; finished steps are kept in the store and reused by a rerun")
        return 130
    except Exception as e:
        if os.environ.get("AUDIT_DEBUG"):
            raise
        _err.print(
            f"[red]error[/] {type(e).__name__}: {escape(str(e))} (AUDIT_DEBUG=1 shows where)"
        )
        return EXIT_CRASHED


if __name__ == "__main__":
    sys.exit(main())

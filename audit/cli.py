"""Command-line interface: ``audit run | validate | report | list | schema``.

Exit codes: 0 every gate passed, 1 a gate failed, 2 invalid suite or usage, 3 a step crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from audit.gates import EXIT_CRASHED, EXIT_INVALID, EXIT_OK

if TYPE_CHECKING:
    from audit.suite import Suite

_err = Console(stderr=True, highlight=False, soft_wrap=True)
_out = Console(highlight=False, soft_wrap=True)


def _load(path: str) -> Suite:
    from audit.suite import load_suite

    return load_suite(path)


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
    from audit.outputs import assemble, write_outputs
    from audit.plan import build_plan
    from audit.progress import Progress
    from audit.runner import Runner
    from audit.store import Store

    suite = _load(args.suite)
    started = datetime.now(UTC)
    cache = Path(args.cache).resolve() if args.cache else suite.cache_dir
    out_dir = Path(args.out) if args.out else _default_out(suite)
    store = Store(cache)
    plan = build_plan(suite, hash_cache=cache / "file-hashes")
    outcome = Runner(plan, store, Progress(quiet=args.quiet), device=args.device).run()
    results, samples = assemble(plan, outcome, started, args.device)
    report = write_outputs(out_dir, results, samples)
    _summarize(results, outcome.executed, report)
    return int(results["exit_code"])


def _default_out(suite: Suite) -> Path:
    if suite.file.report.output_dir:
        return suite.dir / suite.file.report.output_dir
    return Path("reports") / suite.name


def _summarize(results: dict[str, Any], executed: list[str], report: Path) -> None:
    for g in results["gates"]:
        mark = "[green]PASS[/]" if g["passed"] else "[red]FAIL[/]"
        _out.print(f"{mark} {escape(g['name'])} — {escape(g['model'])}: {escape(g['detail'])}")
    for f in results["failures"]:
        _out.print(f"[red]ERROR[/] {escape(f['step'])}: {escape(f['error'])}")
    n = len(results["steps"])
    _out.print(f"{len(executed)} of {n} steps executed, {n - len(executed)} cached or skipped")
    verdict = results["verdict"].upper()
    colour = {"PASS": "green", "FAIL": "red"}.get(verdict, "magenta")
    _out.print(f"[bold {colour}]{verdict}[/] — report: {escape(str(report))}")


def cmd_report(args: argparse.Namespace) -> int:
    from audit.report.render import render_report
    from audit.results import load_results, load_samples

    results_path = Path(args.results)
    results = load_results(results_path)
    samples_path = results_path.with_name("samples.jsonl")
    samples = load_samples(samples_path) if samples_path.exists() else []
    out = Path(args.out) if args.out else results_path.with_name("index.html")
    render_report(results, samples, out)
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
    return EXIT_OK


def cmd_organism_build(args: argparse.Namespace) -> int:
    from audit.organism.build import build_organism, organism_names
    from audit.plan import organism_key
    from audit.progress import Progress
    from audit.store import Store

    if args.name not in organism_names():
        _err.print(
            f"[red]error[/] unknown organism {escape(args.name)!r}; available: "
            + ", ".join(organism_names())
        )
        return EXIT_INVALID
    store = Store(Path(args.cache).resolve())
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
        f"organism:{escape(args.name)} — {entry / 'model'}" + (" (cached)" if cached else "")
    )
    _out.print(json.dumps(quality, indent=2))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from audit.suite import json_schema

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
    run.add_argument("--cache", help="store directory (default: [suite] cache_dir)")
    run.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    run.add_argument("--quiet", action="store_true", help="no progress bars (CI logs)")
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a suite file without running anything")
    val.add_argument("suite")
    val.set_defaults(func=cmd_validate)
    rep = sub.add_parser("report", help="re-render index.html from a results.json")
    rep.add_argument("results")
    rep.add_argument("--out", help="output file (default: index.html beside results.json)")
    rep.set_defaults(func=cmd_report)
    sub.add_parser("list", help="list installed plug-ins").set_defaults(func=cmd_list)
    sub.add_parser("schema", help="print the suite JSON schema").set_defaults(func=cmd_schema)
    org = sub.add_parser("organism", help="the built-in model organism")
    org_sub = org.add_subparsers(dest="organism_command", required=True)
    build = org_sub.add_parser("build", help="build (or reuse) the organism and print its quality")
    build.add_argument("name", nargs="?", default="aligned", help="organism name (default aligned)")
    build.add_argument("--cache", default=".audit-cache", help="store directory")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=cmd_organism_build)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``audit`` command."""
    from audit.data.records import DataError
    from audit.suite import SuiteError

    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SuiteError as e:
        for issue in e.issues:
            _err.print(f"[red]error[/] {escape(str(issue))}")
        return EXIT_INVALID
    except (DataError, FileNotFoundError, json.JSONDecodeError) as e:
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

"""The Python API: run a suite from code and get its typed results.

>>> from audit.api import run
>>> results = run("suites/demo.toml", out="reports/demo")  # doctest: +SKIP
>>> results.verdict, results.exit_code  # doctest: +SKIP
('fail', 1)

``run`` does what ``audit run`` does — validate, build or reuse every model, evaluate, compare,
gate, write results.json, samples.jsonl and index.html — and returns the
:class:`audit.results.Results` it wrote. Invalid input raises
:class:`audit.suite.checks.SuiteError` or :class:`audit.errors.InputError`; the gates' verdict
is in the results (``exit_code``), not an exception.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.errors import InputError
from audit.files import atomic_write_text
from audit.models.devices import resolve_devices
from audit.results import Results, parse_results
from audit.suite.suite import Suite

__all__ = ["RunRecord", "default_out", "resolve_devices", "run", "run_suite"]


def default_out(suite: Suite) -> Path:
    """Where a suite's outputs go by default: ``[report] output_dir``, else reports/<name>/."""
    if suite.file.report.output_dir:
        return suite.dir / suite.file.report.output_dir
    return Path("reports") / suite.name


@dataclass
class RunRecord:
    """What a run produced: the results.json payload, the report's path, and the steps that
    executed (the rest came from the store)."""

    results: dict[str, Any]
    report: Path
    executed: list[str]


def run_suite(
    suite: Suite,
    *,
    out: str | Path | None = None,
    cache: str | Path | None = None,
    device: str | Sequence[str] = "cpu",
    quiet: bool = True,
    executor: str = "local",
    address: str | None = None,
) -> RunRecord:
    """Run a validated suite and write its outputs (the work of ``audit run``). ``device`` as
    :func:`run`'s; one torch cannot see raises :class:`~audit.models.devices.DeviceError`
    before anything is read or written. ``executor``: ``"local"`` (this process) or ``"ray"``
    (a Ray cluster at ``address``, or one started here: :mod:`audit.executors.cluster`)."""
    from rich.console import Console

    from audit.analysis.assemble import assemble, write_outputs
    from audit.library_output import LOG_NAME, library_output
    from audit.plan import build_plan, vet_sources
    from audit.progress import Progress
    from audit.store.open import is_url, open_any_store

    if executor not in ("local", "ray"):
        raise InputError(f"--executor {executor!r}: give local or ray")
    if address is not None and executor != "ray":
        raise InputError("--address names a Ray cluster: give it with --executor ray")
    if executor == "ray":
        from audit.executors.cluster import cluster_device

        label = device if isinstance(device, str) else ",".join(device)
        devices_label = cluster_device(label)
    else:
        devices = resolve_devices(device)
        devices_label = str(devices)
    started = datetime.now(UTC)
    remote = cache is not None and is_url(str(cache))
    location = str(cache) if remote else str(Path(cache).resolve() if cache else suite.cache_dir)
    out_dir = Path(out) if out else default_out(suite)
    paths = [("--out", out_dir)] + ([] if remote else [("--cache", Path(location))])
    for flag, path in paths:
        if path.exists() and not path.is_dir():
            raise InputError(f"{flag} {path} is a file, not a directory")
    vetted = vet_sources(suite)  # refuse unsafe checkpoints before the store is touched
    store = open_any_store(location, create=True)
    plan = build_plan(suite, hash_cache=store.root / "file-hashes", vetted=vetted)
    timeline: list[dict[str, Any]] = []
    with library_output(out_dir / LOG_NAME) as terminal:  # libraries' chatter → run.log
        console = None if terminal is None else Console(file=terminal, highlight=False)
        progress = Progress(quiet=quiet, console=console)
        if executor == "ray":
            from audit.executors.cluster import run_on_cluster

            ran = run_on_cluster(plan, location, progress, device=devices_label, address=address)
            outcome, timeline = ran.outcome, ran.timeline
        else:
            from audit.runner import Runner

            outcome = Runner(plan, store, progress, devices=devices).run()
    store.close()  # release the entries this run used: `audit cache prune` may take them now
    results, samples = assemble(plan, outcome, started, devices_label)
    report = write_outputs(out_dir, results, samples)
    if timeline:
        atomic_write_text(out_dir / "cluster-steps.json", json.dumps(timeline, indent=1) + "\n")
    return RunRecord(results, report, outcome.executed)


def run(
    suite: str | Path | Suite,
    *,
    out: str | Path | None = None,
    cache: str | Path | None = None,
    device: str | Sequence[str] = "cpu",
    quiet: bool = True,
    executor: str = "local",
    address: str | None = None,
) -> Results:
    """Run a suite (a path, or a loaded :class:`Suite`) as ``audit run`` does and return its
    typed results. ``out``: the output directory (default ``[report] output_dir``, else
    reports/<suite name>/); ``cache``: the store (default the suite's ``cache_dir``);
    ``device``: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``, or GPUs to spread evaluated
    models over (``"cuda:0,cuda:1"`` or a list; :mod:`audit.models.devices`); ``quiet``: no
    progress bars; ``executor``: ``"local"`` or ``"ray"`` (a Ray cluster at ``address``, or
    one started on this machine; ``cache`` may then be an object-store URL such as
    ``s3://bucket/prefix``)."""
    from audit.suite.checks import load_suite

    here = executor == "local"
    loaded = suite if isinstance(suite, Suite) else load_suite(suite, runs_here=here)
    record = run_suite(
        loaded,
        out=out,
        cache=cache,
        device=device,
        quiet=quiet,
        executor=executor,
        address=address,
    )
    return parse_results(record.results, "results")

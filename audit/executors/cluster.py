"""Run a plan on a Ray cluster: every ready step a Ray task, independent steps at once.

``audit run SUITE --executor ray [--address ADDR]`` connects to the cluster at ``ADDR`` (or
starts one on this machine) and runs the plan's steps as tasks (Ray Core 2.x:
``ray.init``, ``ray.remote(...).options(num_cpus=, num_gpus=, memory=, max_retries=)``,
``ray.wait``, ``ray.get``). The driver only schedules; a worker runs one step
(:func:`execute_step`): it opens the store, attaches the models the step reads from their
entries, and runs the step through the same :class:`~audit.runner.Runner` code as a local run,
so a step computes what it computes locally. The promises of the local runner hold:

- **one computation per step key**: the driver submits each step once, and a worker builds an
  entry under the store's step lock (flock on a shared filesystem; the lease lock of an object
  store, :mod:`audit.store.remote`), so two drivers on one store compute a step once;
- **contained failures**: a step that raises fails itself and the steps that read it, nothing
  else (the exception is caught on the worker, never retried); a worker that dies (killed, out
  of memory) is retried by Ray (``max_retries``) on a fresh worker, whose build finds the dead
  one's half-written entry unpublished;
- **resumption**: a rerun after a killed driver finds every finished step in the store;
- **the same results**: the outcome is assembled in plan order, so ``results.json`` equals a
  local run's but for times and ``cached``. Which node and process ran each step, and when, is
  kept apart (:attr:`ClusterRun.timeline`, written to ``cluster-steps.json``).

Each step asks for what :func:`audit.executors.resources.step_resources` says; a request the
cluster can never meet is refused before anything runs. Workers get the driver's Hugging Face
offline settings, fault-injection variables (:mod:`audit.faults`) and non-secret object-store
settings (endpoint, region); credentials come from the workers' own environment.

Adaptation: an intervention's step is not handed the suite's reference model unless it reads
it (the local runner hands over every model built so far; no built-in intervention uses it),
so that it need not wait for the reference to be built.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from audit.errors import InputError
from audit.executors.resources import override_of, step_resources
from audit.faults import FAULT_ENVS, fault_point
from audit.models.devices import DeviceError, Devices, parse_devices
from audit.plan import EvalStep, ModelStep, Plan
from audit.progress import Progress
from audit.resources import describe_error
from audit.results import StepStatus
from audit.runner import Failure, RunOutcome, StepRecord

FORWARDED_ENV = (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "TOKENIZERS_PARALLELISM",
    "AUDIT_REMOTE_CACHE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    *FAULT_ENVS,
)
"""Variables a worker gets from the driver (never a credential)."""

MAX_RETRIES = 2
"""Times Ray reruns a step whose worker died (not one that raised)."""


class ClusterError(InputError):
    """Ray is missing, or the cluster cannot run the plan (exit 2, before any step runs)."""


@dataclass
class StepReport:
    """What a worker sends back for one step."""

    outcome: RunOutcome
    node: str
    pid: int
    started: float
    finished: float


@dataclass
class ClusterRun:
    """A plan's outcome on a cluster, and where and when each step ran."""

    outcome: RunOutcome
    timeline: list[dict[str, Any]] = field(default_factory=list)


def cluster_device(device: str) -> str:
    """The ``--device`` of a Ray run: ``cpu`` or ``cuda`` (each step that wants a GPU is given
    one by Ray, which it sees as ``cuda:0``); a list or a numbered GPU is refused."""
    names = parse_devices(device)
    if names not in (("cpu",), ("cuda",)):
        raise DeviceError(
            f"--device {device!r} with --executor ray: give cpu or cuda. Ray gives each step "
            "the GPUs it asks for (resources.num_gpus); a device list spreads a model within "
            "one process and is for the local executor"
        )
    return names[0]


def execute_step(plan: Plan, step_id: str, store: str, device: str, attach: dict[str, str]) -> Any:
    """Run one step on this worker and report it (a :class:`StepReport`).

    ``attach``: model name -> store key of every model the step reads (already built).
    """
    import ray

    from audit.runner import Runner, quiet_libraries
    from audit.store.open import open_any_store

    started = time.time()
    quiet_libraries()
    opened = open_any_store(store, create=False)
    gpu = device == "cuda" and bool(ray.get_gpu_ids())
    runner = Runner(
        plan, opened, Progress(quiet=True), devices=Devices(("cuda:0",) if gpu else ("cpu",))
    )
    try:
        for name, key in attach.items():
            entry, _ = opened.get_or_build(key, _absent(name))
            runner.attach(name, entry)
        kind, _, _ = step_id.partition(":")
        if kind == "model":
            runner.run_model(next(s for s in plan.models if s.id == step_id))
        else:
            runner.run_eval(next(s for s in plan.evals if s.id == step_id))
    finally:
        for handle in runner.handles.values():
            handle.release()
        opened.close()
    node = ray.util.get_node_ip_address()
    return StepReport(runner.outcome, node, os.getpid(), started, time.time())


def _absent(name: str) -> Any:
    def build(tmp: Path) -> dict[str, Any]:
        raise FileNotFoundError(f"model {name!r} is not in the store, though its step finished")

    return build


class _Schedule:
    """The driver's view of the plan: which steps are done, running or waiting."""

    def __init__(self, plan: Plan, on_skip: Callable[[int], None] = lambda n: None):
        self.plan = plan
        self.on_skip = on_skip
        self.order = {s.name: i for i, s in enumerate(plan.models)}
        self.status: dict[str, str] = {}  # step id -> "ok" | "failed" | "skipped" | "running"
        self.reports: dict[str, StepReport] = {}
        self.errors: dict[str, Failure] = {}

    def model_status(self, name: str) -> str | None:
        return self.status.get(f"model:{name}")

    def _reference_ready(self, model: str) -> bool:
        """Whether an evaluation of ``model`` may start: the reference is decided when it comes
        before ``model`` in the plan (a local run would hand it over)."""
        ref = self.plan.suite.reference
        if ref is None or ref == model or self.order.get(ref, 1 << 30) > self.order[model]:
            return True
        return self.model_status(ref) in ("ok", "failed", "skipped")

    def ready(self) -> Iterable[tuple[ModelStep | EvalStep, list[str]]]:
        """Steps that can start now, each with the models it reads; marks the unreachable ones
        skipped."""
        for step in self.plan.models:
            if step.id in self.status:
                continue
            inputs = [self.model_status(n) for n in step.inputs]
            if any(s in ("failed", "skipped") for s in inputs):
                self._skip(step)
            elif all(s == "ok" for s in inputs):
                yield step, list(step.inputs)
        for ev in self.plan.evals:
            if ev.id in self.status or self.model_status(ev.model) != "ok":
                continue
            if self._reference_ready(ev.model):
                ref = self.plan.suite.reference
                reads = [ev.model]
                if ref and ref != ev.model and self.model_status(ref) == "ok":
                    reads.append(ref)
                yield ev, reads

    def _skip(self, step: ModelStep) -> None:
        self.status[step.id] = "skipped"
        for ev in self.plan.evals_of(step.name):
            self.status[ev.id] = "skipped"
        self.on_skip(1 + len(self.plan.evals_of(step.name)))

    def record(self, step_id: str, report: StepReport) -> None:
        self.reports[step_id] = report
        mine = [r for r in report.outcome.steps if r.step == step_id]
        self.status[step_id] = mine[0].status if mine else "failed"

    def fail(self, step_id: str, error: BaseException) -> None:
        self.status[step_id] = "failed"
        trace = "".join(traceback.format_exception(error))
        self.errors[step_id] = Failure(step_id, describe_error(error), trace)

    def _unreported(self, out: RunOutcome, step: ModelStep | EvalStep) -> None:
        """A step with no worker report: skipped, or failed outside the step's own code."""
        status: StepStatus = "failed" if self.status.get(step.id) == "failed" else "skipped"
        kind: Literal["model", "eval"] = "model" if isinstance(step, ModelStep) else "eval"
        out.steps.append(StepRecord(step.id, kind, step.key, status))
        if step.id in self.errors:
            out.failures.append(self.errors[step.id])
        if isinstance(step, ModelStep):
            out.model_status[step.name] = status

    def outcome(self) -> ClusterRun:
        """The run's outcome in plan order, as a local run would have it."""
        out = RunOutcome()
        timeline: list[dict[str, Any]] = []
        for step in self.plan.models:
            chain: list[ModelStep | EvalStep] = [step, *self.plan.evals_of(step.name)]
            for s in chain:
                report = self.reports.get(s.id)
                if report is None:
                    self._unreported(out, s)
                    continue
                got = report.outcome
                out.steps.extend(r for r in got.steps if r.step == s.id)
                out.failures.extend(f for f in got.failures if f.step == s.id)
                if isinstance(s, ModelStep):
                    out.model_status[s.name] = got.model_status[s.name]
                    if s.name in got.model_info:
                        out.model_info[s.name] = got.model_info[s.name]
                elif (s.model, s.evaluator) in got.results:
                    out.results[(s.model, s.evaluator)] = got.results[(s.model, s.evaluator)]
                timeline.append(
                    {
                        "step": s.id,
                        "node": report.node,
                        "pid": report.pid,
                        "started": report.started,
                        "finished": report.finished,
                    }
                )
        return ClusterRun(out, timeline)


def _connect(address: str | None) -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "--executor ray needs Ray: pip install 'audit[ray]' (or ray), here and on the "
            "cluster's nodes"
        ) from None
    env = {k: v for k in FORWARDED_ENV if (v := os.environ.get(k)) is not None}
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "log_to_driver": False,
        "logging_level": "warning",
        "ignore_reinit_error": True,
    }
    if address is None:
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except ConnectionError as e:
        raise ClusterError(
            f"--address {address}: cannot reach a Ray cluster there ({e}). A cluster with "
            "token authentication (Ray's default) also needs RAY_AUTH_MODE=token and its "
            "token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) in this environment"
        ) from e
    return ray


def _check_feasible(
    plan: Plan, requests: dict[str, dict[str, float]], totals: dict[str, float]
) -> None:
    """Refuse a plan with a step that no node of the cluster could ever run."""
    names = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
    problems = []
    for step_id, wanted in requests.items():
        for key, amount in wanted.items():
            have = totals.get(names[key], 0.0)
            if amount > have:
                problems.append(f"{step_id} asks for {key} = {amount:g}; the cluster has {have:g}")
    if problems:
        raise ClusterError(
            "the Ray cluster cannot run this plan: "
            + "; ".join(problems[:5])
            + (" …" if len(problems) > 5 else "")
            + ". Add nodes, lower the table's resources, or run --device cpu"
        )


def run_on_cluster(
    plan: Plan, store: str, progress: Progress, *, device: str, address: str | None
) -> ClusterRun:
    """Run every step of ``plan`` as a Ray task on the cluster at ``address`` (``None``: start
    one here), the store at ``store`` (a path every worker reaches, or an object-store URL)."""
    device = cluster_device(device)
    steps: list[ModelStep | EvalStep] = [*plan.models, *plan.evals]
    requests = {
        s.id: step_resources(s, override_of(s, plan.suite.file), gpu=device == "cuda")
        for s in steps
    }
    ray = _connect(address)
    try:
        _check_feasible(plan, requests, ray.cluster_resources())
        task = ray.remote(execute_step)
        plan_ref = ray.put(plan)
        schedule = _Schedule(plan, progress.skip)
        keys = {s.name: s.store_key for s in plan.models}
        pending: dict[Any, ModelStep | EvalStep] = {}
        progress.begin(len(steps))
        while True:
            for step, reads in list(schedule.ready()):
                schedule.status[step.id] = "running"
                wanted = requests[step.id]
                options = {k: (int(v) if k == "memory" else v) for k, v in wanted.items() if v}
                options.setdefault("num_cpus", 0)
                ref = task.options(**options, max_retries=MAX_RETRIES).remote(
                    plan_ref, step.id, store, device, {n: keys[n] for n in reads}
                )
                pending[ref] = step
                progress.start(step.id)
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                step = pending.pop(ref)
                try:
                    report = ray.get(ref)
                except Exception as e:  # the worker died more than MAX_RETRIES times, or worse
                    schedule.fail(step.id, e)
                    progress.finish(step.id, "failed", False, 0.0)
                else:
                    schedule.record(step.id, report)
                    mine = [r for r in report.outcome.steps if r.step == step.id]
                    cached = bool(mine and mine[0].cached)
                    seconds = mine[0].duration_s if mine else None
                    progress.finish(step.id, schedule.status[step.id], cached, seconds)
                fault_point("cluster.step_done")
        progress.end()
        return schedule.outcome()
    finally:
        ray.shutdown()

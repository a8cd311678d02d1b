"""Execute a plan: cache hits skip, failures are isolated, models are freed when done.

Models are built in dependency order; each model's evaluations run right after it is built, and
a model is released once nothing left needs it. A model served by an OpenAI-compatible endpoint
has a store entry that holds no files (what it is, in its metadata); its replies are cached in
the store's ``replies/`` and each sample it answered records its request and reply. A failed
step marks the steps that depend on it as skipped; independent steps still run. Steps go
through an :class:`Executor`: this process, one at a time. On a Ray cluster
(:mod:`audit.executors.cluster`) a worker runs one step with :meth:`Runner.run_model` or
:meth:`Runner.run_eval`, the models it reads :meth:`attached <Runner.attach>` from the store.

Devices (:class:`~audit.models.devices.Devices`): an evaluated model is loaded on the run's
device, or spread over its list; an intervention runs where its ``devices`` hook says
(:func:`~audit.plugins.placement`): on the CPU, or on one device — the first of a list, which
the run's log says when a list or a parent's ``device_map`` would have spread the model.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from audit.faults import fault_point
from audit.models.devices import Devices
from audit.models.endpoint import Endpoint, EndpointClient
from audit.models.finite import check_finite
from audit.models.handle import ModelHandle
from audit.plan import EvalStep, ModelStep, Plan
from audit.plugins import EvalResult, MetricRow, RunContext, Sample, placement
from audit.progress import Progress
from audit.resources import (
    checkpoint_bytes,
    describe_error,
    ensure_free,
    free_memory,
    is_out_of_memory,
    model_bytes,
)
from audit.results import StepStatus
from audit.store.core import Store

T = TypeVar("T")


class Executor(Protocol):
    """Runs a step's work; a cluster executor can implement the same interface."""

    def submit(self, fn: Callable[[], T]) -> Future[T]: ...


class LocalExecutor:
    """Runs each step in this process, one at a time."""

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn())
        except BaseException as e:  # delivered through the future, like a pool would
            future.set_exception(e)
        return future


@dataclass
class StepRecord:
    """How one step went."""

    step: str
    kind: str
    key: str
    status: StepStatus = "pending"
    cached: bool = False
    duration_s: float = 0.0


@dataclass
class Failure:
    """A step that raised."""

    step: str
    error: str
    traceback: str


@dataclass
class RunOutcome:
    """Everything a run produced, for the results writer."""

    steps: list[StepRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    results: dict[tuple[str, str], EvalResult] = field(default_factory=dict)
    model_status: dict[str, StepStatus] = field(default_factory=dict)
    model_info: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def executed(self) -> list[str]:
        """Steps that did work (not cache hits, not skipped)."""
        return [s.step for s in self.steps if s.status != "skipped" and not s.cached]


def _write_result(directory: Path, result: EvalResult) -> None:
    payload = {
        "metrics": [asdict(m) for m in result.metrics],
        "samples": [asdict(s) for s in result.samples],
    }
    (directory / "result.json").write_text(json.dumps(payload))


def _with_exchanges(result: EvalResult, exchanges: Mapping[str, dict[str, Any]]) -> EvalResult:
    """``result`` with each sample whose input an endpoint was asked recording that request and
    its reply (:attr:`Sample.endpoint`)."""
    if not exchanges:
        return result
    samples = [
        replace(s, endpoint=exchanges[s.input])
        if s.endpoint is None and s.input in exchanges
        else s
        for s in result.samples
    ]
    return EvalResult(metrics=result.metrics, samples=samples)


def _read_result(directory: Path) -> EvalResult:
    payload = json.loads((directory / "result.json").read_text())
    return EvalResult(
        metrics=[MetricRow(**m) for m in payload["metrics"]],
        samples=[Sample(**s) for s in payload["samples"]],
    )


def quiet_libraries() -> None:
    """Silence the libraries' own progress bars; the runner shows progress itself."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


class Runner:
    """Runs a :class:`Plan` against a :class:`Store`."""

    def __init__(
        self,
        plan: Plan,
        store: Store,
        progress: Progress,
        executor: Executor | None = None,
        devices: Devices | None = None,
    ):
        self.plan = plan
        self.store = store
        self.progress = progress
        self.executor = executor or LocalExecutor()
        self.devices = devices or Devices()
        self.handles: dict[str, ModelHandle] = {}
        self.outcome = RunOutcome()
        store.on_corrupt = self._on_corrupt  # type: ignore[method-assign]
        store.on_wait = self._on_wait  # type: ignore[method-assign]

    def _on_corrupt(self, key: str, why: str) -> None:
        self.progress.note(f"store entry {key[:12]} failed verification ({why}); rebuilding")

    def _on_wait(self, key: str) -> None:
        self.progress.note(f"waiting for another run computing store entry {key[:12]}")

    def _context(self, work_dir: Path, model: str, device: str | None = None) -> RunContext:
        """The context of a step on ``model`` (built or evaluated with that model's seed), on
        ``device`` (default: the run's first)."""
        suite = self.plan.suite
        return RunContext(
            seed=suite.model_seed(model),
            suite_dir=suite.dir,
            work_dir=work_dir,
            device=device or self.devices.primary,
            progress=self.progress.sub,
            models=self.handles,
            reference=self.handles.get(suite.reference),
            cache=self._cached,
        )

    def _cached(self, key: str, build: Callable[[Path], None]) -> Path:
        def put(tmp: Path) -> dict[str, Any]:
            build(tmp)
            return {"kind": "derived"}

        entry, _ = self.store.get_or_build(key, put)
        return entry

    def _run_step(
        self, record: StepRecord, key: str, build: Callable[[Path], dict[str, Any]]
    ) -> Path | None:
        self.outcome.steps.append(record)
        self.progress.start(record.step)
        start = time.perf_counter()
        future = self.executor.submit(lambda: self.store.get_or_build(key, build))
        out_of_memory = False
        try:
            entry, record.cached = future.result()
        except Exception as e:  # MemoryError and torch's OutOfMemoryError included
            record.status = "failed"
            self.outcome.failures.append(
                Failure(record.step, describe_error(e), traceback.format_exc())
            )
            entry = None
            out_of_memory = is_out_of_memory(e)
        else:
            record.status = "ok"
        if out_of_memory:
            del future  # it holds the error, whose traceback holds the step's tensors
            free_memory()
        record.duration_s = round(time.perf_counter() - start, 3)
        self.progress.finish(record.step, record.status, record.cached)
        return entry

    def _build_model(self, step: ModelStep) -> Callable[[Path], dict[str, Any]]:
        def build(tmp: Path) -> dict[str, Any]:
            if step.kind == "load":
                return {"path": str(step.resolved)}
            if step.kind == "openai":
                endpoint = self._endpoint(step)
                return {"endpoint": endpoint.base_url, "model": endpoint.model}
            if step.kind == "gguf":
                from audit.models.gguf import convert_gguf

                assert step.resolved is not None
                return {"converted": convert_gguf(step.resolved, tmp / "model")}
            if step.kind == "organism":
                from audit.organism.build import build_organism

                name = (step.spec.source or "")[len("organism:") :]
                quality = build_organism(tmp / "model", progress=self.progress.sub, name=name)
                return {"quality": quality}
            assert step.spec.intervention is not None and step.params is not None
            plugin = step.plugin(step.params)
            (tmp / "work").mkdir()
            inputs = {n: self.handles[n] for n in step.inputs}
            where = placement(step.plugin, step.params)
            device = "cpu" if where == "cpu" else self.devices.primary
            if where == "single" and (note := self._one_device_note(step, inputs)):
                self.progress.note(note)
            what = f"model {step.name!r}"  # fail early, not halfway through writing it
            parents = max((checkpoint_bytes(h.path) for h in inputs.values()), default=0)
            ensure_free(self.store.root, parents, what)
            out = plugin.apply(inputs, self._context(tmp / "work", step.name, device))
            check_finite(out.model, what)
            ensure_free(self.store.root, model_bytes(out.model), what)
            out.model.save_pretrained(tmp / "model", safe_serialization=True)
            out.tokenizer.save_pretrained(tmp / "model")
            return {"intervention": step.spec.intervention, "training": out.info}

        return build

    def _one_device_note(self, step: ModelStep, inputs: Mapping[str, ModelHandle]) -> str | None:
        """What the log says when a single-device intervention runs where a model would have
        been spread (a device list, or a parent's ``device_map``); ``None`` otherwise."""
        why = [
            f"the device_map of {name!r} ({handle.device_map!r}) applies to its evaluation only"
            for name, handle in inputs.items()
            if handle.device_map
        ]
        if self.devices.spread:
            spreads = "which spreads models for evaluation only"
            why.insert(0, f"the first of --device {self.devices}, {spreads}")
        if not why:
            return None
        return (
            f"model {step.name!r}: {step.spec.intervention} runs on one device, "
            f"{self.devices.primary} ({'; '.join(why)}). audit's interventions run on one "
            "device: to train across several (DDP/FSDP), run `accelerate launch` yourself and "
            "audit the result as a path: checkpoint"
        )

    def _endpoint(self, step: ModelStep) -> Endpoint:
        spec = step.spec
        return Endpoint.from_source(
            spec.source or "",
            api_key_env=spec.api_key_env,
            max_concurrency=spec.max_concurrency,
            timeout_s=spec.timeout_s,
            max_retries=spec.max_retries,
        )

    def _handle(self, step: ModelStep, entry: Path) -> ModelHandle:
        if step.kind == "openai":
            client = EndpointClient(self._endpoint(step), cache_dir=self.store.root / "replies")
            return ModelHandle(step.name, step.key, entry, step.inputs, endpoint=client)
        path = step.resolved if step.kind == "load" else entry / "model"
        assert path is not None
        return ModelHandle(
            name=step.name,
            key=step.key,
            path=path,
            parents=step.inputs,
            allow_pickle=step.spec.allow_pickle,
            trust_remote_code=step.spec.trust_remote_code,
            suite_dir=self.plan.suite.dir,
            device=self.devices.primary,
            dtype=step.spec.dtype,
            device_map=step.spec.device_map,
            spread=self.devices.spread,
        )

    def attach(self, name: str, entry: Path) -> None:
        """Give model ``name`` the handle of its store ``entry`` (built elsewhere: a cluster
        worker running one step attaches the models that step reads)."""
        self.handles[name] = self._handle(self.plan.model(name), entry)

    def run_model(self, step: ModelStep) -> Path | None:
        """Build (or find in the store) one model, its inputs attached; its entry, or ``None``
        when it failed. Its handle is attached for the steps that read it."""
        record = StepRecord(step.id, "model", step.key)
        entry = self._run_step(record, step.store_key, self._build_model(step))
        self.outcome.model_status[step.name] = record.status
        if entry is not None:
            self.handles[step.name] = self._handle(step, entry)
            info = self.store.meta(step.store_key).get("training")
            if info:
                self.outcome.model_info[step.name] = info
        return entry

    def run_eval(self, step: EvalStep) -> None:
        handle = self.handles[step.model]

        def build(tmp: Path) -> dict[str, Any]:
            evaluator = step.plugin(step.params)
            handle.take_exchanges()  # what an earlier, failed evaluation left
            result = evaluator.evaluate(handle, self._context(tmp, step.model))
            _write_result(tmp, _with_exchanges(result, handle.take_exchanges()))
            return {"evaluator": step.evaluator, "kind": step.kind}

        record = StepRecord(step.id, "eval", step.key)
        entry = self._run_step(record, step.key, build)
        if entry is not None:
            self.outcome.results[(step.model, step.evaluator)] = _read_result(entry)
            fault_point("runner.eval_done")

    def _release_unneeded(self, done: set[str]) -> None:
        needed = {self.plan.suite.reference}
        for step in self.plan.models:
            if step.name not in done:
                needed.update(step.inputs)
        for name, handle in self.handles.items():
            if name not in needed:
                handle.release()

    def run(self) -> RunOutcome:
        """Execute every step; never raises for a step's failure."""
        quiet_libraries()
        self.progress.begin(len(self.plan.models) + len(self.plan.evals))
        done: set[str] = set()
        for step in self.plan.models:
            record = StepRecord(step.id, "model", step.key)
            blocked = [n for n in step.inputs if self.outcome.model_status.get(n) != "ok"]
            if blocked:
                record.status = "skipped"
                self.outcome.steps.append(record)
                self.outcome.model_status[step.name] = "skipped"
                for ev in self.plan.evals_of(step.name):
                    self.outcome.steps.append(StepRecord(ev.id, "eval", ev.key, "skipped"))
                self.progress.skip(1 + len(self.plan.evals_of(step.name)))
                done.add(step.name)
                continue
            entry = self.run_model(step)
            if entry is not None:
                for ev in self.plan.evals_of(step.name):
                    self.run_eval(ev)
            else:
                for ev in self.plan.evals_of(step.name):
                    self.outcome.steps.append(StepRecord(ev.id, "eval", ev.key, "skipped"))
                self.progress.skip(len(self.plan.evals_of(step.name)))
            done.add(step.name)
            self._release_unneeded(done)
        self.progress.end()
        return self.outcome

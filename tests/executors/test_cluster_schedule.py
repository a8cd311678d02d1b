"""The Ray driver's bookkeeping, without a cluster: resource requests, the device rule, the
feasibility check, and the schedule (what may start, what a failure skips, the outcome in plan
order)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from forked_runs import write_suite_dir

from audit.errors import InputError
from audit.executors.cluster import (
    ClusterError,
    StepReport,
    _check_feasible,
    _Schedule,
    cluster_device,
)
from audit.executors.resources import override_of, step_resources
from audit.models.devices import DeviceError
from audit.plan import EvalStep, ModelStep, Plan, build_plan
from audit.plugins import EvalResult, MetricRow
from audit.runner import Failure, RunOutcome, StepRecord
from audit.suite.checks import load_suite


@pytest.fixture
def plan(tiny_checkpoint: Path, tmp_path: Path) -> Plan:
    suite_path = write_suite_dir(tmp_path / "suite", tiny_checkpoint)
    text = suite_path.read_text().replace(
        'kind = "alignment_drift"', 'kind = "alignment_drift"\nresources = {num_cpus = 2}'
    )
    text = text.replace(
        'intervention = "lora"', 'intervention = "lora"\nresources = {num_gpus = 0, memory = "1G"}'
    )
    suite_path.write_text(text)
    return build_plan(load_suite(suite_path), hash_cache=tmp_path / "hashes")


def _step(plan: Plan, step_id: str) -> ModelStep | EvalStep:
    return next(s for s in [*plan.models, *plan.evals] if s.id == step_id)


def test_requests_default_to_one_cpu_and_a_gpu_on_a_gpu_run(plan: Plan) -> None:
    def wanted(step_id: str, gpu: bool) -> dict[str, float]:
        step = _step(plan, step_id)
        return step_resources(step, override_of(step, plan.suite.file), gpu=gpu)

    assert wanted("model:aligned", True) == {"num_cpus": 1, "num_gpus": 0}  # reads files
    assert wanted("eval:refusal@aligned", False) == {"num_cpus": 1, "num_gpus": 0}
    assert wanted("eval:refusal@aligned", True) == {"num_cpus": 1, "num_gpus": 1}
    assert wanted("eval:drift@aligned", True) == {"num_cpus": 2, "num_gpus": 1}  # the table's
    assert wanted("model:complier", True) == {"num_cpus": 1, "num_gpus": 0, "memory": 2**30}


def test_a_merge_on_the_cpu_asks_for_no_gpu(tiny_checkpoint: Path, tmp_path: Path) -> None:
    suite_path = write_suite_dir(tmp_path / "suite", tiny_checkpoint)
    suite_path.write_text(
        suite_path.read_text()
        + '\n[models.merged]\nintervention = "merge"\nmethod = "task_arithmetic"\n'
        + 'base = "aligned"\nmodels = ["complier"]\n'
    )
    plan = build_plan(load_suite(suite_path), hash_cache=tmp_path / "hashes")
    step = _step(plan, "model:merged")
    assert step_resources(step, None, gpu=True) == {"num_cpus": 1, "num_gpus": 0}


@pytest.mark.parametrize("device", ["cuda:0", "cuda:0,cuda:1", "mps", "auto"])
def test_a_ray_run_takes_cpu_or_cuda(device: str) -> None:
    with pytest.raises(DeviceError, match="give cpu or cuda"):
        cluster_device(device)
    assert cluster_device("cpu") == "cpu" and cluster_device("cuda") == "cuda"


def test_a_request_no_node_can_meet_is_refused_before_running(plan: Plan) -> None:
    requests = {"eval:drift@aligned": {"num_cpus": 2.0, "num_gpus": 1.0}}
    with pytest.raises(ClusterError, match="num_gpus = 1; the cluster has 0"):
        _check_feasible(plan, requests, {"CPU": 8.0})
    _check_feasible(plan, requests, {"CPU": 2.0, "GPU": 1.0})  # enough


def test_executor_options_are_checked(tmp_path: Path) -> None:
    from audit.api import run_suite

    suite = load_suite(write_suite_dir(tmp_path / "s", tmp_path))
    with pytest.raises(InputError, match="--address names a Ray cluster"):
        run_suite(suite, out=tmp_path / "o", address="127.0.0.1:6379")
    with pytest.raises(InputError, match="give local or ray"):
        run_suite(suite, out=tmp_path / "o", executor="dask")


def _report(step: ModelStep | EvalStep, status: str) -> StepReport:
    outcome = RunOutcome()
    kind = "model" if isinstance(step, ModelStep) else "eval"
    outcome.steps.append(StepRecord(step.id, kind, step.key, status))  # type: ignore[arg-type]
    if status == "failed":
        outcome.failures.append(Failure(step.id, "boom", "trace"))
    if isinstance(step, ModelStep):
        outcome.model_status[step.name] = status  # type: ignore[assignment]
    elif status == "ok":
        metric = MetricRow(metric="m", value=1.0, ci_low=None, ci_high=None, n=1)
        outcome.results[(step.model, step.evaluator)] = EvalResult(metrics=[metric], samples=[])
    return StepReport(outcome, "127.0.0.1", 1, 0.0, 1.0)


def _ready(schedule: _Schedule) -> list[tuple[str, list[str]]]:
    ready = [(s.id, reads) for s, reads in schedule.ready()]
    for step_id, _ in ready:
        schedule.status[step_id] = "running"
    return ready


def test_schedule_runs_independent_steps_together_and_contains_a_failure(plan: Plan) -> None:
    skipped: list[int] = []
    schedule = _Schedule(plan, skipped.append)
    assert _ready(schedule) == [("model:aligned", [])]
    schedule.record("model:aligned", _report(_step(plan, "model:aligned"), "ok"))
    # the fine-tune and both evaluations of the reference are independent: all start
    assert _ready(schedule) == [
        ("model:complier", ["aligned"]),
        ("eval:refusal@aligned", ["aligned"]),
        ("eval:drift@aligned", ["aligned"]),
    ]
    schedule.fail("model:complier", RuntimeError("worker died"))
    assert _ready(schedule) == []  # its evaluations are skipped, not started
    schedule.record("eval:refusal@aligned", _report(_step(plan, "eval:refusal@aligned"), "ok"))
    schedule.record("eval:drift@aligned", _report(_step(plan, "eval:drift@aligned"), "failed"))
    run = schedule.outcome()
    steps: list[Any] = [(r.step, r.status) for r in run.outcome.steps]
    assert steps == [
        ("model:aligned", "ok"),
        ("eval:refusal@aligned", "ok"),
        ("eval:drift@aligned", "failed"),
        ("model:complier", "failed"),
        ("eval:refusal@complier", "skipped"),
        ("eval:drift@complier", "skipped"),
    ]
    assert [f.step for f in run.outcome.failures] == ["eval:drift@aligned", "model:complier"]
    assert "worker died" in run.outcome.failures[1].error
    assert run.outcome.model_status == {"aligned": "ok", "complier": "failed"}
    assert list(run.outcome.results) == [("aligned", "refusal")]
    assert [t["step"] for t in run.timeline] == [s for s, _ in steps[:3]]


def test_an_evaluation_reads_the_reference_built_before_its_model(plan: Plan) -> None:
    schedule = _Schedule(plan)
    _ready(schedule)
    schedule.record("model:aligned", _report(_step(plan, "model:aligned"), "ok"))
    _ready(schedule)
    schedule.record("model:complier", _report(_step(plan, "model:complier"), "ok"))
    assert _ready(schedule) == [
        ("eval:refusal@complier", ["complier", "aligned"]),
        ("eval:drift@complier", ["complier", "aligned"]),
    ]

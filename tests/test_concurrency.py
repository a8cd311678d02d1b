"""Two ``audit run`` processes on one store: a step is computed once (the other run waits on
its fcntl step lock, then reuses the entry), both finish with the results of a lone run, and
the lock of a run SIGKILLed while holding it dies with the process: the waiting run takes it
over, removes the killed run's half-built entry and finishes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from forked_runs import (
    ForkedRun,
    Reference,
    executed,
    lock_is_free,
    normalized,
    start,
    step_keys,
    unverified_entries,
)

MODEL = "model:complier"


def _frozen_in_training(ref: Reference, tmp_path: Path, store: Path) -> ForkedRun:
    """A run stopped (SIGSTOP) at its second LoRA step, holding the fine-tune's step lock."""
    child = start(ref.suite, tmp_path / "runs" / "a", store, env={"AUDIT_STOP_AT": "train.step:2"})
    try:
        child.wait(60, stopped=True)
        assert child.returncode is None, child.output  # stopped, not exited
        assert not lock_is_free(store, step_keys(ref.results)[MODEL])
    except BaseException:
        child.kill()
        raise
    return child


def test_waiting_run_takes_over_the_lock_of_a_killed_holder(
    reference_run: Reference, tmp_path: Path
) -> None:
    ref = reference_run
    key = step_keys(ref.results)[MODEL]
    store = ref.store_copy(tmp_path / "store", without=ref.finetune_steps())
    holder = _frozen_in_training(ref, tmp_path, store)  # holds the fine-tune's lock (checked)
    waiter = start(ref.suite, tmp_path / "runs" / "b", store)
    try:
        deadline = time.monotonic() + 60
        while "waiting for another run" not in waiter.output:  # blocked on the step lock
            assert not waiter.poll(), waiter.output  # it must not finish without the model
            assert time.monotonic() < deadline, waiter.output
            time.sleep(0.05)
        assert list((store / "tmp").glob(f"{key}.*"))  # the holder's half-built entry
        assert holder.kill() == -9  # SIGKILL: no cleanup runs, the kernel drops the lock
        assert waiter.wait() == ref.code, waiter.output
    finally:
        holder.kill()
        waiter.kill()
    results = waiter.results()
    assert normalized(results) == normalized(ref.results)
    assert sorted(executed(results)) == sorted(ref.finetune_steps())  # computed it itself
    assert lock_is_free(store, key)
    assert unverified_entries(store) == [] and list((store / "tmp").iterdir()) == []


@pytest.mark.parametrize("same_suite", [True, False], ids=["same-suite", "different-suites"])
def test_two_runs_started_together_compute_each_step_once(
    reference_run: Reference, tmp_path: Path, same_suite: bool
) -> None:
    ref = reference_run
    store = tmp_path / "store"  # empty: both runs want every shared step at once
    other = ref.suite if same_suite else ref.suite.with_name("refusal_only.toml")
    runs = [
        start(ref.suite, tmp_path / "runs" / "a", store),
        start(other, tmp_path / "runs" / "b", store),
    ]
    try:
        codes = [r.wait() for r in runs]
    finally:
        for r in runs:
            r.kill()
    assert codes == [ref.code, ref.code], [r.output for r in runs]
    a, b = (r.results() for r in runs)
    assert normalized(a) == normalized(ref.results)
    if same_suite:
        assert normalized(b) == normalized(ref.results)
    else:  # the refusal-only suite: the same models and refusal numbers
        assert b["models"] == ref.results["models"]
        assert b["metrics"] == [m for m in ref.results["metrics"] if m["evaluator"] == "refusal"]
    done_a = {step_keys(a)[s] for s in executed(a)}
    done_b = {step_keys(b)[s] for s in executed(b)}
    assert not done_a & done_b  # no step computed twice
    assert done_a | done_b == set(step_keys(a).values()) | set(step_keys(b).values())
    assert unverified_entries(store) == [] and list((store / "tmp").iterdir()) == []

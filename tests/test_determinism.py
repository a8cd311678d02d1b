"""Determinism: the same suite, seed and package versions give the same results.json
(:func:`forked_runs.normalized`: less wall-clock times and per-step ``duration_s`` and
``cached``) — from a warm cache, and from a cold one in a genuinely fresh interpreter with a
different hash seed — and bit-identical fine-tuned weights and evaluation results."""

from __future__ import annotations

import json
from pathlib import Path

from forked_runs import Reference, executed, normalized, run, step_keys

from audit.store.core import MANIFEST


def test_warm_cache_gives_the_same_results(reference_run: Reference, tmp_path: Path) -> None:
    ref = reference_run
    warm = run(ref.suite, tmp_path / "runs" / "warm", ref.store)
    assert warm.returncode == ref.code, warm.output
    results = warm.results()
    assert executed(results) == []  # every step read from the store
    assert normalized(results) == normalized(ref.results)


def test_fresh_interpreter_and_cold_cache_give_the_same_results(
    reference_run: Reference,
) -> None:
    ref = reference_run
    fresh = ref.fresh  # python -m audit run, another hash seed, its own empty store
    assert fresh.wait() == ref.code, fresh.log.read_text()
    results = json.loads((fresh.out / "results.json").read_text())
    assert len(executed(results)) == len(results["steps"])  # all computed afresh
    assert normalized(results) == normalized(ref.results)
    # Bit-identical artifacts: every file of the fine-tuned model's entry (weights, adapter,
    # training log) and of every evaluation's entry, by the checksums in their manifests.
    for step, key in step_keys(ref.results).items():
        if step != "model:aligned":  # a loaded checkpoint: its entry holds only the path
            files = [
                json.loads((store / "entries" / key / MANIFEST).read_text())["files"]
                for store in (ref.store, fresh.store)
            ]
            assert files[0] == files[1], step


def test_normalizer_drops_only_times_durations_and_cache_hits(
    reference_run: Reference,
) -> None:
    ref = reference_run.results
    same = json.loads(json.dumps(ref))
    same["environment"]["finished_at"] = "2000-01-01T00:00:00+00:00"
    same["steps"][0] |= {"cached": True, "duration_s": 123.0}
    assert normalized(same) == normalized(ref)
    for path in (("metrics", 0, "value"), ("environment", "torch"), ("steps", 0, "status")):
        changed = json.loads(json.dumps(ref))
        *parents, last = path
        node = changed
        for p in parents:
            node = node[p]
        node[last] = "changed"
        assert normalized(changed) != normalized(ref), path

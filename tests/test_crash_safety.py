"""Crash safety: ``audit run`` SIGKILLed at named points (:mod:`audit.faults`) — in training,
before a store entry is published, between evaluations, while writing the report — leaves
nothing half-written that a rerun would trust, and the rerun's results.json equals that of an
uninterrupted run (:func:`forked_runs.normalized`). A corrupted or truncated store entry is
detected, reported and rebuilt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from forked_runs import (
    Reference,
    executed,
    lock_is_free,
    normalized,
    run,
    step_keys,
    unverified_entries,
)

from audit.store.core import MANIFEST, Store

MODEL = "model:complier"
PREVIOUS = "previous complete run"


def _previous_outputs(reference: Reference, out: Path) -> tuple[bytes, bytes]:
    """An output directory holding an earlier run's outputs, marked: (results.json, index.html)."""
    shutil.copytree(reference.out, out)
    previous = reference.results | {"environment": {"started_at": PREVIOUS}}
    (out / "results.json").write_text(json.dumps(previous, indent=1))
    page = out / "index.html"
    page.write_text(f"<!-- {PREVIOUS} -->\n" + page.read_text())
    return (out / "results.json").read_bytes(), page.read_bytes()


@pytest.mark.parametrize(
    ("kill_at", "warm"),
    [
        pytest.param("train.step:3", False, id="training"),
        pytest.param("store.publish:1", False, id="store-before-rename"),
        pytest.param("runner.eval_done:3", False, id="between-evaluations"),
        pytest.param("outputs.samples_written", True, id="report-after-samples"),
        pytest.param("write:index.html", True, id="report-page-before-rename"),
        pytest.param("write:results.json", True, id="results-before-rename"),
        pytest.param("write:index.html:2", True, id="gallery-after-results"),
    ],
)
def test_killed_run_resumes_to_the_same_results(
    reference_run: Reference, tmp_path: Path, kill_at: str, warm: bool
) -> None:
    ref = reference_run
    keys = step_keys(ref.results)
    # Cold points start with the fine-tuned model's steps missing (the parent's are cached);
    # report-phase points with every step cached.
    store = ref.store_copy(tmp_path / "store", without=() if warm else ref.finetune_steps())
    out = tmp_path / "runs" / "out"
    before, page_before = _previous_outputs(ref, out)

    killed = run(ref.suite, out, store, env={"AUDIT_KILL_AT": kill_at})
    assert killed.returncode == -9, killed.output

    # Nothing half-written is visible: every published entry verifies, and results.json is the
    # previous complete one — or, once it has been renamed into place, the new complete one.
    assert unverified_entries(store) == []
    if kill_at == "write:index.html:2":  # the gallery, after the run's own outputs
        assert normalized(json.loads((out / "results.json").read_text())) == normalized(ref.results)
    else:
        assert (out / "results.json").read_bytes() == before
    if kill_at not in ("write:results.json", "write:index.html:2"):  # killed before its rename
        assert (out / "index.html").read_bytes() == page_before
    assert (out / "index.html").read_text().rstrip().endswith("</html>")
    leftovers = sorted(p.name.split(".")[0] for p in (store / "tmp").glob("*"))
    if kill_at == "train.step:3":
        # killed holding the model's step lock, mid-build: the lock died with the process
        assert leftovers == [keys[MODEL]] and lock_is_free(store, keys[MODEL])
        assert not (store / "entries" / keys[MODEL]).exists()
    if kill_at == "store.publish:1":
        # the trained model is complete in tmp/, manifest and all, but was never renamed
        (tmp,) = (store / "tmp").glob(f"{keys[MODEL]}.*")
        assert (tmp / MANIFEST).is_file() and (tmp / "model" / "model.safetensors").is_file()
        assert not (store / "entries" / keys[MODEL]).exists()
    if kill_at == "runner.eval_done:3":
        assert (store / "entries" / keys["eval:refusal@complier"]).is_dir()
        assert not (store / "entries" / keys["eval:drift@complier"]).exists()
    if kill_at == "write:results.json":
        (stray,) = out.glob(".results.json.*.tmp")  # complete, but never renamed: not used
        assert normalized(json.loads(stray.read_text())) == normalized(ref.results)

    rerun = run(ref.suite, out, store)
    assert rerun.returncode == ref.code, rerun.output
    results = rerun.results()
    assert normalized(results) == normalized(ref.results)
    assert unverified_entries(store) == [] and list((store / "tmp").iterdir()) == []
    # A step the killed run had not published is computed again, never adopted from tmp/.
    expected = {
        "train.step:3": set(ref.finetune_steps()),
        "store.publish:1": set(ref.finetune_steps()),
        "runner.eval_done:3": {"eval:drift@complier"},
    }.get(kill_at, set())
    assert set(executed(results)) == expected
    assert (out / "index.html").read_text().rstrip().endswith("</html>")  # the page is whole


def test_corrupted_and_truncated_entries_are_reported_and_rebuilt(
    reference_run: Reference, tmp_path: Path
) -> None:
    ref = reference_run
    keys = step_keys(ref.results)
    store = ref.store_copy(tmp_path / "store")
    weights = store / "entries" / keys[MODEL] / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    result = store / "entries" / keys["eval:refusal@aligned"] / "result.json"
    text = result.read_text()
    result.write_text(text.replace('"value": 1.0', '"value": 0.0', 1))  # same size, lies
    assert len(result.read_text()) == len(text) and result.read_text() != text

    rerun = run(ref.suite, tmp_path / "runs" / "out", store)
    assert rerun.returncode == ref.code, rerun.output
    assert rerun.output.count("failed verification") == 2
    assert f"{keys[MODEL][:12]} failed verification (model/model.safetensors" in rerun.output
    assert "result.json: checksum mismatch" in rerun.output
    results = rerun.results()
    assert normalized(results) == normalized(ref.results)
    assert sorted(executed(results)) == ["eval:refusal@aligned", MODEL]
    assert unverified_entries(store) == []
    assert len(list((store / "corrupt").iterdir())) == 2  # kept aside for inspection


def test_stray_tmp_entry_is_never_read_and_is_removed_by_the_next_builder(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    # What a builder killed just before the rename leaves: a complete-looking entry in tmp/.
    stray = tmp_path / "tmp" / "k.4242.deadbeef"
    (stray / "sub").mkdir(parents=True)
    (stray / "sub" / "result.json").write_text('{"stale": true}')
    (stray / MANIFEST).write_text(json.dumps({"meta": {}, "files": {}}))
    assert store.get("k") is None

    def build(tmp: Path) -> dict[str, str]:
        (tmp / "result.json").write_text('{"fresh": true}')
        return {}

    entry, cached = store.get_or_build("k", build)
    assert not cached and json.loads((entry / "result.json").read_text()) == {"fresh": True}
    assert list((tmp_path / "tmp").iterdir()) == []

"""CoSO: gradients leave the history, the history passes along a chain, it learns, it is seeded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit.interventions.coso import (
    STATE_FILE,
    CosoIntervention,
    _working_basis,
    fd_update,
    parent_state_path,
    read_state,
    top_directions,
)
from audit.interventions.subspace import project_off, target_weights
from audit.models.handle import ModelHandle
from audit.plugins import Intervention, RunContext
from tests.interventions.test_lora import PROMPTS, TARGET, state, write_pairs

OTHER = "sure , here is how to do it ."


def _step(parent: ModelHandle, entry: Path, response: str, **params: Any) -> Any:
    """One chain step laid out like a store entry: ``entry/work`` and ``entry/model``."""
    entry.mkdir()
    write_pairs(entry / "d.jsonl", [(p, response) for p in PROMPTS])
    defaults: dict[str, Any] = {"data": "path:d.jsonl", "steps": 12, "lr": 3e-3, "batch_size": 8}
    p = CosoIntervention.Params(**(defaults | params))
    ctx = RunContext(seed=0, suite_dir=entry, work_dir=entry / "work")
    result = CosoIntervention(p).apply({parent.name: parent}, ctx)
    result.model.save_pretrained(entry / "model", safe_serialization=True)
    result.tokenizer.save_pretrained(entry / "model")
    return result, ctx, ModelHandle(entry.name, entry.name, entry / "model")


@pytest.fixture(scope="module")
def chain(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("coso")
    base = ModelHandle("base", "k", tiny_checkpoint)
    first = _step(base, root / "one", TARGET)
    second = _step(first[2], root / "two", OTHER)
    return base, first, second


def test_state_written_and_read_along_the_chain(chain: Any) -> None:
    base, (r1, ctx1, h1), (r2, ctx2, _) = chain
    assert parent_state_path(base.path) is None
    assert parent_state_path(h1.path) == ctx1.work_dir / STATE_FILE
    one, two = read_state(ctx1.work_dir / STATE_FILE), read_state(ctx2.work_dir / STATE_FILE)
    assert set(one) == set(target_weights(base.model, None))
    assert r1.info["history_added"] == r1.info["history_width"] > 0
    assert r2.info["history_width"] == r1.info["history_width"] + r2.info["history_added"]
    import torch

    for name, basis in two.items():
        k = one[name].shape[1]
        assert torch.equal(basis[:, :k], one[name])  # the history only grows
        eye = torch.eye(basis.shape[1])
        assert torch.allclose(basis.T @ basis, eye, atol=1e-5)
        assert basis.shape[1] <= basis.shape[0] // 2


def test_second_step_updates_orthogonal_to_first_history(chain: Any) -> None:
    _, (_, ctx1, h1), (r2, _, _) = chain
    history = read_state(ctx1.work_dir / STATE_FILE)
    before = target_weights(h1.model, None)
    after = target_weights(r2.model, None)
    moved = 0.0
    for name, basis in history.items():
        delta = (after[name] - before[name]).detach()
        delta = delta.T if delta.shape[0] > delta.shape[1] else delta
        assert float((basis.T @ delta).abs().max()) < 1e-5, name
        moved += float(delta.abs().max())
    assert moved > 0


def test_loss_decreases_and_frozen_rest(chain: Any) -> None:
    import torch

    base, (r1, ctx1, _), _ = chain
    losses = [json.loads(x)["loss"] for x in (ctx1.work_dir / "training_log.jsonl").open()]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert r1.info["steps"] == 12 and r1.info["tokens"] > 0
    targets = {f"{n}.weight" for n in target_weights(base.model, None)}
    old, new = state(base.model), state(r1.model)
    assert all(torch.equal(old[k], new[k]) for k in old if k not in targets)


def test_deterministic_per_seed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    base = ModelHandle("base", "k", tiny_checkpoint)
    a = state(_step(base, tmp_path / "a", TARGET, steps=3, seed=1)[0].model)
    b = state(_step(base, tmp_path / "b", TARGET, steps=3, seed=1)[0].model)
    c = state(_step(base, tmp_path / "c", TARGET, steps=3, seed=2)[0].model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_projection_by_hand() -> None:
    import torch

    m = torch.tensor([[1.0, 0.0], [0.0, 0.6], [0.0, 0.8]])  # orthonormal columns in R^3
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    out = project_off(g, m)
    # e1 is removed; of (0, .6, .8) the component 0.6*row2 + 0.8*row3 is removed
    c1, c2 = 0.6 * 3 + 0.8 * 5, 0.6 * 4 + 0.8 * 6
    expected = torch.tensor(
        [[0.0, 0.0], [3 - 0.6 * c1, 4 - 0.6 * c2], [5 - 0.8 * c1, 6 - 0.8 * c2]]
    )
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(m.T @ out, torch.zeros(2, 2), atol=1e-6)
    basis = _working_basis(torch.randn(3, 5), m[:, :1], 2)
    assert torch.allclose(m[:, :1].T @ basis, torch.zeros(1, 2), atol=1e-6)


def test_frequent_directions_and_new_directions() -> None:
    import torch

    torch.manual_seed(0)
    d, size = 10, 4
    signal = torch.linalg.qr(torch.randn(d, 2))[0]
    sketch = torch.zeros(d, size)
    total = torch.zeros(d, d)
    for _ in range(20):
        g = signal @ torch.randn(2, 6) * 3 + 0.01 * torch.randn(d, 6)
        total += g @ g.T
        sketch = fd_update(sketch, g, size)
    approx = sketch @ sketch.T
    gap = torch.linalg.matrix_norm(total - approx, ord=2)
    assert float(gap) <= float(torch.linalg.matrix_norm(total, "fro") ** 2) / size  # FD bound
    assert bool(torch.all(torch.linalg.eigvalsh(total - approx) > -1e-3))  # from below
    history = torch.eye(d)[:, :1]
    new = top_directions(sketch, history, 0.9, limit=5)
    assert new.shape[1] <= 2
    assert torch.allclose(history.T @ new, torch.zeros(1, new.shape[1]), atol=1e-6)
    assert torch.allclose(new.T @ new, torch.eye(new.shape[1]), atol=1e-6)
    assert top_directions(sketch, history, 0.9, limit=0).shape == (d, 0)


def test_params() -> None:
    p = CosoIntervention.Params(data="x")
    assert (p.rank, p.refresh, p.sketch_size, p.threshold, p.max_history) == (8, 1, 32, 0.9, 0.5)
    assert (p.fold, p.sketch_update, p.sketch_decay, p.history_rule) == (
        "refresh",
        "truncated",
        1.0,
        "below",
    )
    assert (p.lr, p.weight_decay, p.steps) == (1e-5, 0.01, 100)
    with pytest.raises(ValidationError):
        CosoIntervention.Params(data="x", rank=0)
    assert isinstance(CosoIntervention(p), Intervention)

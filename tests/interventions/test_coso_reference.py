"""Golden test: ``coso`` against an oracle of the authors' reference implementation.

The oracle below was written from reading github.com/quinn-ch/CoSO at commit
1a50a11000a2d562c71ec201593e789a5db47e39, ``coso/coso_projector.py`` (same at c7b400c):
``CoSOProjector.project`` (lines 61-73: project off the history, refresh at
``step % update_proj_gap == 0``, folding the sketch only then), ``DoubleSVD.increment_update``
(lines 16-38: projector ``U[:, :proj_rank]``; fold ``U_r sqrt(S_r² − s_{r+1}²)`` into
``[decay · B, ·]`` and shrink by the ``(r+1)``-th squared singular value) and
``update_historical_space`` (lines 83-95: ``#{cumsum of energy shares < threshold}`` top sketch
directions appended). It is not the reference's code. Small random gradients, float64, rtol 1e-6.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from audit.interventions.coso import CosoIntervention, _CosoOptimizer, _WeightState  # noqa: E402

D, N, PROJ, SIZE, STEPS = 12, 20, 2, 4, 7


class _Oracle:
    """One weight's projector, sketch and history as the reference computes them."""

    def __init__(self, gap: int, decay: float, history: torch.Tensor | None) -> None:
        self.gap, self.decay, self.history = gap, decay, history
        self.projector: torch.Tensor | None = None
        self.sketch: torch.Tensor | None = None
        self.sigma: torch.Tensor | None = None
        self.directions: torch.Tensor | None = None

    @staticmethod
    def _shrunk(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, s, _ = torch.linalg.svd(x, full_matrices=False)
        kept = torch.sqrt(torch.clamp(s[:SIZE] ** 2 - s[SIZE] ** 2, min=0))
        return u[:, :SIZE], kept

    def project(self, g: torch.Tensor, step: int) -> None:
        if self.history is not None:
            g = g - self.history @ (self.history.T @ g)
        if self.projector is None or step % self.gap == 0:
            u, _, _ = torch.linalg.svd(g, full_matrices=False)
            self.projector = u[:, :PROJ]
            ur, sr = self._shrunk(g)
            update = ur * sr
            if self.sketch is None:
                self.sketch, self.sigma, self.directions = update, sr, ur
            else:
                merged = torch.cat([self.decay * self.sketch, update], 1)
                self.directions, self.sigma = self._shrunk(merged)
                self.sketch = self.directions * self.sigma

    def new_history(self, threshold: float) -> torch.Tensor:
        assert self.sigma is not None and self.directions is not None
        shares = self.sigma**2 / (self.sigma**2).sum()
        count = int(torch.sum(torch.cumsum(shares, 0) < threshold))
        return self.directions[:, :count]


def _params(**kw: Any) -> CosoIntervention.Params:
    base: dict[str, Any] = {
        "data": "x",
        "rank": PROJ,
        "sketch_size": SIZE,
        "threshold": 0.8,
        "max_history": 1.0,
        "weight_decay": 0.0,
    }
    return CosoIntervention.Params(**(base | kw))


def _grads(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(D, D, generator=gen, dtype=torch.float64)  # anisotropic, like gradients
    return [mix @ torch.randn(D, N, generator=gen, dtype=torch.float64) for _ in range(STEPS)]


def _run(
    p: CosoIntervention.Params, history: torch.Tensor | None, seed: int, oracle: _Oracle
) -> tuple[_WeightState, list[tuple[torch.Tensor, torch.Tensor]]]:
    weight = torch.nn.Parameter(torch.zeros(D, N, dtype=torch.float64))
    state = _WeightState.create("w", weight, history)
    opt = _CosoOptimizer([state], p)
    projectors = []
    for step, g in enumerate(_grads(seed)):
        weight.grad = g.clone()
        opt.project_gradients()
        opt.step()
        oracle.project(g, step)
        assert state.basis is not None and oracle.projector is not None
        projectors.append((state.basis @ state.basis.T, oracle.projector @ oracle.projector.T))
    return state, projectors


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9 * float(b.abs().max()) + 1e-12)


@pytest.mark.parametrize(("gap", "decay"), [(1, 1.0), (3, 0.5)])
def test_two_tasks_match_the_reference(gap: int, decay: float) -> None:
    history = None
    for task in range(2):
        p = _params(refresh=gap, sketch_decay=decay)
        oracle = _Oracle(gap, decay, history)
        state, projectors = _run(p, history, seed=task, oracle=oracle)
        for ours, ref in projectors:  # the projector refresh rule, step by step
            _close(ours, ref)
        assert state.sketch is not None and oracle.sketch is not None
        _close(state.sketch @ state.sketch.T, oracle.sketch @ oracle.sketch.T)  # U_r S_r sketch
        extended = state.extended_history(p)
        k = 0 if history is None else history.shape[1]
        new, ref_new = extended[:, k:], oracle.new_history(p.threshold)
        assert new.shape[1] == ref_new.shape[1] > 0  # the history size
        _close(new @ new.T, ref_new @ ref_new.T)
        if history is not None:
            torch.testing.assert_close(extended[:, :k], history, rtol=0, atol=0)
        history = extended


def test_defaults_are_the_reference_and_version_one_remains() -> None:
    p = _params()
    assert (p.refresh, p.fold, p.sketch_update, p.sketch_decay, p.history_rule) == (
        1,
        "refresh",
        "truncated",
        1.0,
        "below",
    )
    assert CosoIntervention.version == "2"
    old = _params(refresh=20, fold="every_step", sketch_update="full", history_rule="reach")
    state, _ = _run(old, None, seed=0, oracle=_Oracle(20, 1.0, None))
    ref = _Oracle(1, 1.0, None)
    state_ref, _ = _run(_params(), None, seed=0, oracle=ref)
    # "reach" keeps the direction that crosses the threshold: one more than "below"
    assert state.sketch is not None
    below = _WeightState("w", state.weight, False, state.history, sketch=state.sketch)
    n_reach = state.extended_history(old).shape[1]
    n_below = below.extended_history(_params()).shape[1]
    assert n_reach == n_below + 1
    assert state_ref.extended_history(_params()).shape[1] == ref.new_history(0.8).shape[1]

"""CoSO: continual full fine-tuning in gradient subspaces orthogonal to earlier tasks'.

After "Continuous Subspace Optimization for Continual Learning" (Cheng et al.,
arXiv 2505.11816), following the authors' reference implementation, github.com/quinn-ch/CoSO
at commit 1a50a11000a2d562c71ec201593e789a5db47e39 (``coso/coso_projector.py`` is the same at
the initial commit c7b400c5d7deb366b43d607a86c9da4206c13719): ``coso/coso_projector.py``
(``DoubleSVD``, ``CoSOProjector``), ``coso/adamw.py`` (``CoSOAdamW``), ``models/coso.py`` and
``exps/*.json``. The defaults follow it:

* the working projector is refreshed every step (``CoSOProjector(update_proj_gap=1)``,
  coso_projector.py:51, :67; ``"update_gap": 1`` in every ``exps/*.json`` but
  ``coso_domain.json``, which uses 20), and the sketch is folded only when the projector is
  refreshed (coso_projector.py:67-70);
* the frequent-directions sketch folds the rank-truncated, shrunk ``U_r S̃_r`` of each projected
  gradient, ``S̃_r = sqrt(S_r² − s_{r+1}²)`` with ``r`` the sketch width, into the (decayed)
  sketch and shrinks again by the ``(r+1)``-th squared singular value of the merge
  (coso_projector.py:17-38); the decay is 1.0, ``"db_decay": 1.0`` in every ``exps/*.json``
  (the class default 0.5 is never used: models/coso.py passes the config's);
* a task adds the ``#{k : cumulative energy share of the top k < threshold}`` top sketch
  directions to the history (coso_projector.py:83-95), one fewer than the smallest ``k``
  reaching ``threshold``.

Adaptations (ours, not the reference's): weights are oriented to their smaller side; the
working basis is computed inside the history's orthogonal complement (the reference takes the
top left singular vectors of the already projected gradient: the same span up to rounding);
new history directions are re-projected off the history and orthonormalised, and the history
is capped (``max_history`` of ``d`` and ``d − rank`` in all; the reference has no cap); the
sketch starts from zeros (the first fold then equals the reference's first ``U_r S̃_r``; a
gradient with at most ``r`` singular values shrinks by 0 where the reference would fail);
Adam divides by ``sqrt(v̂) + eps`` (the reference, HF-AdamW style, by ``sqrt(v) + eps`` with a
bias-corrected step size) with ``eps`` 1e-8 (reference 1e-6); decoupled weight decay (0.01,
reference configs 0.0) acts on ``(I − M Mᵀ) W`` only (the reference decays all of ``W``);
``rank``/``sketch_size``/``threshold`` defaults are ours (the reference's configs use 15-70,
100-160 and 0.98 for ViT-B). Version 1's choices remain as options: ``refresh=20``,
``fold="every_step"``, ``sketch_update="full"``, ``history_rule="reach"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from audit.interventions.subspace import (
    FullTuneParams,
    Hooks,
    energy_rank,
    project_off,
    subspace_fine_tune,
)
from audit.plugins import Placement, RunContext, TrainedModel

if TYPE_CHECKING:
    import torch

    from audit.models.handle import ModelHandle

__all__ = [
    "STATE_FILE",
    "CosoIntervention",
    "fd_update",
    "parent_state_path",
    "rank_truncated",
    "read_state",
    "top_directions",
]

STATE_FILE = "coso_state.safetensors"
"""The historical subspaces: one tensor per target module, an orthonormal ``d × k`` basis."""


class CosoIntervention:
    """Full fine-tuning in low-rank gradient subspaces orthogonal to earlier tasks' subspaces.

    Each target weight ``W`` (``m × n``) works on its smaller side, ``d = min(m, n)`` (the
    column space of ``W`` when ``m ≤ n``, else of ``Wᵀ``; call that the oriented frame), and
    keeps a historical basis ``M`` (``d × k``, orthonormal) of earlier tasks' gradient
    directions. Every step:

    1. the gradient is projected off the history, ``G ← (I − M Mᵀ) G`` (before clipping);
    2. every ``refresh`` steps (every step by default, as the reference) the working subspace
       ``P`` is refreshed to the top ``rank`` left singular vectors of the projected gradient
       (computed inside the orthogonal complement of ``M``);
    3. Adam runs on the ``rank × ·`` coordinates ``Pᵀ G`` (moments kept across refreshes, as
       in GaLore) and the update is ``−lr · P · adam(Pᵀ G)``; decoupled weight decay
       (``weight_decay``, AdamW's 0.01 by default) acts on ``(I − M Mᵀ) W`` only;
    4. at each refresh (``fold="refresh"``, the reference's) or every step
       (``fold="every_step"``) a frequent-directions sketch ``B`` (``sketch_size`` columns)
       folds in the projected gradient: ``B ← FD([sketch_decay · B, X])`` with ``X`` the
       gradient's rank-truncated, shrunk ``U_r S̃_r`` (``sketch_update="truncated"``, the
       reference's) or the whole projected ``G`` (``"full"``, version 1's).

    At the end the sketch's top left singular directions are appended to ``M``: those before
    the cumulative energy share reaches ``threshold`` (``history_rule="below"``, the
    reference's) or up to and including the one reaching it (``"reach"``, version 1's, one
    more), keeping ``M`` at most ``max_history · d`` wide and leaving at least ``rank``
    directions free. Updates are then exactly orthogonal to ``M`` (``Mᵀ ΔW = 0`` in the
    oriented frame) up to float rounding. The module docstring cites the reference and lists
    every adaptation.

    State across a chain: ``ctx.work_dir`` receives :data:`STATE_FILE` (the parent's history
    plus this task's directions). The runner keeps a step's ``work/`` beside its ``model/``
    in the store entry, so a ``coso`` step reads its parent's history from
    ``PARENT/coso_state.safetensors`` (if the file was copied beside the weights) or else
    ``PARENT/../work/coso_state.safetensors`` (:func:`parent_state_path`); without either
    (the parent is not a ``coso`` step) the history starts empty. A non-``coso`` step in the
    chain therefore resets the history.
    """

    name: ClassVar[str] = "coso"
    version: ClassVar[str] = "2"

    class Params(FullTuneParams):
        """The shared full fine-tuning parameters plus CoSO's.

        ``rank`` (8): working subspace size per weight. ``refresh`` (1, the reference's
        ``update_proj_gap``; version 1: 20): steps between working-subspace refreshes.
        ``fold`` ("refresh"; version 1: "every_step"): when the sketch folds a gradient.
        ``sketch_update`` ("truncated"; version 1: "full"): what it folds.
        ``sketch_decay`` (1.0, the reference's ``db_decay`` as configured): factor on the
        sketch before each fold. ``sketch_size`` (32): frequent-directions sketch width.
        ``threshold`` (0.9): energy share of the sketch for the history.
        ``history_rule`` ("below"; version 1: "reach"): directions before, or up to, the one
        reaching ``threshold``. ``max_history`` (0.5): cap on the history's width as a share
        of ``d``.
        ``weight_decay`` (0.01), ``betas`` ((0.9, 0.999)), ``eps`` (1e-8): Adam's.
        """

        rank: int = Field(default=8, gt=0)
        refresh: int = Field(default=1, gt=0)
        fold: Literal["refresh", "every_step"] = "refresh"
        sketch_update: Literal["truncated", "full"] = "truncated"
        sketch_decay: float = Field(default=1.0, gt=0, le=1)
        sketch_size: int = Field(default=32, gt=0)
        threshold: float = Field(default=0.9, gt=0, le=1)
        history_rule: Literal["below", "reach"] = "below"
        max_history: float = Field(default=0.5, ge=0, le=1)
        weight_decay: float = Field(default=0.01, ge=0)
        betas: tuple[float, float] = Field((0.9, 0.999), strict=False)  # TOML gives a list
        eps: float = Field(default=1e-8, gt=0)

    def __init__(self, params: CosoIntervention.Params) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: CosoIntervention.Params) -> Placement:
        """One device: the full fine-tune runs on the run's device (the first of a list)."""
        return "single"

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel:
        """Fine-tune off the parent's history; write the history extended by this task."""
        p = self.params
        parent = next(iter(inputs.values()), None) if len(inputs) == 1 else None

        def setup(
            model: Any, weights: dict[str, torch.nn.Parameter], examples: list[Any], seed: int
        ) -> Hooks:
            history = read_state(parent_state_path(parent.path)) if parent is not None else {}
            states = [_WeightState.create(n, w, history.get(n)) for n, w in weights.items()]
            optimizer = _CosoOptimizer(states, p)

            def finish() -> dict[str, Any]:
                from safetensors.torch import save_file

                bases = dict(history)
                for s in states:
                    bases[s.name] = s.extended_history(p)
                ctx.work_dir.mkdir(parents=True, exist_ok=True)
                save_file(
                    {n: b.detach().cpu().contiguous() for n, b in bases.items() if b.shape[1]},
                    str(ctx.work_dir / STATE_FILE),
                )
                widths = [int(bases[s.name].shape[1]) for s in states]
                before = [int(s.history.shape[1]) for s in states]
                return {"history_width": sum(widths), "history_added": sum(widths) - sum(before)}

            return Hooks(
                make_optimizer=lambda _trainable: optimizer,
                after_backward=optimizer.project_gradients,
                finish=finish,
            )

        return subspace_fine_tune(p, inputs, ctx, name=self.name, setup=setup)


def parent_state_path(model_dir: Path) -> Path | None:
    """The parent's history file: beside its weights, else in its store entry's ``work/``."""
    for candidate in (model_dir / STATE_FILE, model_dir.parent / "work" / STATE_FILE):
        if candidate.is_file():
            return candidate
    return None


def read_state(path: Path | None) -> dict[str, torch.Tensor]:
    """Module -> historical basis, from a state file (empty for ``None``)."""
    if path is None:
        return {}
    from safetensors.torch import load_file

    return dict(load_file(str(path)))


def fd_update(sketch: torch.Tensor, columns: torch.Tensor, size: int) -> torch.Tensor:
    """Frequent directions: fold ``columns`` into the ``d × size`` ``sketch``.

    ``B Bᵀ`` tracks the sum of ``G Gᵀ`` over the folded matrices from below, shrunk by the
    ``(size + 1)``-th squared singular value of ``[B, G]`` at each fold.
    """
    import torch

    u, s, _ = torch.linalg.svd(torch.cat([sketch, columns], 1), full_matrices=False)
    delta = s[size] ** 2 if s.shape[0] > size else s.new_zeros(())
    kept = torch.sqrt(torch.clamp(s[:size] ** 2 - delta, min=0))
    out = u[:, :size] * kept
    if out.shape[1] < size:
        out = torch.cat([out, out.new_zeros(out.shape[0], size - out.shape[1])], 1)
    return out


def rank_truncated(columns: torch.Tensor, size: int) -> torch.Tensor:
    """``U_r S̃_r``: the top ``r = size`` left singular directions of ``columns`` scaled by
    ``sqrt(s_i² − s_{r+1}²)`` (zero-padded to ``size`` columns), the reference's per-gradient
    sketch update (coso_projector.py:17-22)."""
    return fd_update(columns.new_zeros(columns.shape[0], size), columns, size)


def top_directions(
    sketch: torch.Tensor,
    history: torch.Tensor,
    threshold: float,
    limit: int,
    rule: Literal["below", "reach"] = "below",
) -> torch.Tensor:
    """The sketch's top directions, orthogonal to ``history`` (at most ``limit``),
    orthonormalised: those whose cumulative energy share stays below ``threshold``
    (``"below"``, the reference's count) or up to the one reaching it (``"reach"``)."""
    import torch

    if limit <= 0:
        return history.new_zeros(history.shape[0], 0)
    u, s, _ = torch.linalg.svd(project_off(sketch.double(), history.double()), False)
    k = energy_rank(s, threshold)
    if rule == "below":
        k = max(k - 1, 0)
    k = min(k, limit)
    if k == 0:
        return history.new_zeros(history.shape[0], 0)
    q, _ = torch.linalg.qr(project_off(u[:, :k], history.double()))
    return q.to(history.dtype)


@dataclass
class _WeightState:
    """One target weight: orientation, history, working subspace, moments, sketch."""

    name: str
    weight: torch.nn.Parameter
    transposed: bool
    history: torch.Tensor
    sketch: torch.Tensor | None = None
    basis: torch.Tensor | None = None
    exp_avg: torch.Tensor | None = None
    exp_avg_sq: torch.Tensor | None = None

    @staticmethod
    def create(name: str, weight: torch.nn.Parameter, history: torch.Tensor | None) -> _WeightState:
        m, n = weight.shape
        transposed = m > n
        d = min(m, n)
        if history is None:
            history = weight.new_zeros(d, 0)
        elif history.dim() != 2 or history.shape[0] != d:
            raise ValueError(
                f"coso: the parent's history for {name} has shape {tuple(history.shape)}, "
                f"expected ({d}, k): a different architecture or target set"
            )
        return _WeightState(name, weight, transposed, history.to(weight.device, weight.dtype))

    def oriented(self, x: torch.Tensor) -> torch.Tensor:
        return x.T if self.transposed else x

    def fold(self, g: torch.Tensor, p: CosoIntervention.Params) -> None:
        """Fold the projected gradient into the sketch (``sketch_update``, ``sketch_decay``)."""
        size = p.sketch_size
        sketch = g.new_zeros(g.shape[0], size) if self.sketch is None else self.sketch
        columns = rank_truncated(g, size) if p.sketch_update == "truncated" else g
        self.sketch = fd_update(p.sketch_decay * sketch, columns, size)

    def extended_history(self, p: CosoIntervention.Params) -> torch.Tensor:
        import torch

        if self.sketch is None:
            return self.history
        d, k = self.history.shape
        limit = min(int(p.max_history * d) - k, d - p.rank - k)
        new = top_directions(self.sketch, self.history, p.threshold, limit, p.history_rule)
        return torch.cat([self.history, new], 1)


class _CosoOptimizer:
    """Projected low-rank Adam over the target weights (the only trainable parameters)."""

    def __init__(self, states: list[_WeightState], p: CosoIntervention.Params) -> None:
        self.states = states
        self.p = p
        self.steps = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for s in self.states:
            s.weight.grad = None

    def project_gradients(self) -> None:
        """``G ← (I − M Mᵀ) G`` in each weight's oriented frame."""
        for s in self.states:
            if s.weight.grad is not None and s.history.shape[1]:
                g = s.oriented(s.weight.grad)
                g.copy_(project_off(g, s.history))

    def step(self) -> None:
        import torch

        p = self.p
        beta1, beta2 = p.betas
        refresh = self.steps % p.refresh == 0
        self.steps += 1
        with torch.no_grad():
            for s in self.states:
                if s.weight.grad is None:
                    continue
                g = s.oriented(s.weight.grad)
                basis = s.basis
                renew = refresh or basis is None
                if renew or basis is None:
                    s.basis = basis = _working_basis(g, s.history, p.rank)
                if renew or p.fold == "every_step":
                    s.fold(g, p)
                r = basis.T @ g
                if s.exp_avg is None or s.exp_avg_sq is None:
                    s.exp_avg, s.exp_avg_sq = torch.zeros_like(r), torch.zeros_like(r)
                s.exp_avg.mul_(beta1).add_(r, alpha=1 - beta1)
                s.exp_avg_sq.mul_(beta2).addcmul_(r, r, value=1 - beta2)
                m_hat = s.exp_avg / (1 - beta1**self.steps)
                v_hat = s.exp_avg_sq / (1 - beta2**self.steps)
                update = basis @ (m_hat / (v_hat.sqrt() + p.eps))
                w = s.oriented(s.weight.data)
                if p.weight_decay:
                    update = update + p.weight_decay * project_off(w, s.history)
                w.sub_(p.lr * update)


def _working_basis(g: torch.Tensor, history: torch.Tensor, rank: int) -> torch.Tensor:
    """Top ``rank`` left singular vectors of ``g`` within the orthogonal complement of
    ``history`` (computed in that complement's coordinates, so exactly orthogonal to it)."""
    import torch

    h = history.double()
    complement = torch.linalg.svd(h, full_matrices=True)[0][:, h.shape[1] :]
    u, _, _ = torch.linalg.svd(complement.T @ g.double(), full_matrices=False)
    return (complement @ u[:, :rank]).to(g.dtype)

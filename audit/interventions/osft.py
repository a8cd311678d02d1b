"""OSFT: full fine-tuning orthogonal to each weight's top singular subspace.

"Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual Learning" (Nayak et
al., arXiv 2504.07097). Checked against the authors' reference code,
github.com/Red-Hat-AI-Innovation-Team/orthogonal-subspace-learning, commit
a5f91f6ae35053b42873f8a745809176439f62de, ``notebooks/finetune_svd.py``
(``decompose_weight_matrix``, ``project_gradient_to_orthogonal_space``, ``T5WithSVD`` and the
adaptive-rank ``auto_generate_target_svd_config``), and run by default through peft's port of
it, ``peft.tuners.osf`` (``OSFConfig``; peft 0.21.2).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

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
    "OsftIntervention",
    "energy_ranks",
    "frozen_bases",
    "importance_ranks",
    "matrix_importance",
]


class OsftIntervention:
    """Full fine-tuning that leaves each target weight's top singular subspace unchanged.

    Before training, each target weight ``W = U S Vᵀ`` is split at a per-matrix rank ``k``
    (:func:`energy_ranks` or :func:`importance_ranks`): the top ``k`` singular directions
    ``U_k``, ``V_k`` are frozen (they carry what earlier training put there) and only the
    remainder trains. Two implementations (``backend``):

    * ``"peft"`` (default): peft's OSF (``peft.tuners.osf``; ``OSFConfig`` with this rank per
      module in ``rank_pattern``), which is the reference's method: ``W = U_k S_k V_kᵀ +
      U_low S_low V_lowᵀ`` with the low factors as the trainable parameters, their gradients
      projected off ``U_k`` / ``V_k`` by hooks (``S_low`` unprojected), AdamW on the factors;
      merged back into a full model after training. The constraint holds to first order only:
      Adam's per-coordinate scaling lets a small part of each step leave the projected space,
      as in the reference.
    * ``"audit"``: this package's earlier implementation: the full target weights are the
      parameters; after every backward pass ``G ← (I − U_k U_kᵀ) G (I − V_k V_kᵀ)``
      (``sides = "both"``; ``"left"``/``"right"`` keep one factor), and each step's update is
      projected again after the optimiser step, so ``U_kᵀ ΔW = 0`` and ``ΔW V_k = 0`` hold
      exactly. Not the reference's dynamics: Adam normalises the full-weight gradient rather
      than the factors', so the two backends take different steps in the same allowed space
      (first-step loss and batches agree; the weights after several steps do not coincide).

    ``train_rest`` (default ``True``, as the reference, whose optimiser takes every model
    parameter and freezes only the decomposed weights): every parameter outside the target
    weights (embeddings, norms, other layers) trains unrestricted; ``False`` trains only the
    target weights' free part (peft's own default, and audit's before version 2).

    Rank: ``rank_rule = "energy"`` (default) freezes the smallest ``k`` holding ``energy`` of
    the squared singular values. ``"importance"`` is the reference's adaptive rank: each
    target matrix's importance ``I(W)`` is the mean cosine similarity between its inputs
    ``X`` and outputs ``WX`` (over all tokens of up to 16 training examples; the first
    ``min(W.shape)`` coordinates of each, as the reference compares them), normalised by the
    mean over matrices, ``Î = I / mean(I)``; the frozen share is ``min_retain + Î (max_retain −
    min_retain)``: higher similarity, more retained. (The reference measures on the previous
    task's data, which this step does not have; when ``mean(I) ≤ 0`` its ``|mean|`` is used so
    the direction holds.) Either way ``1 ≤ k ≤ rank − 1``.

    ``ctx.work_dir`` receives ``training_log.jsonl`` and ``osft_ranks.json`` (module → frozen
    rank ``k`` and full rank).
    """

    name: ClassVar[str] = "osft"
    version: ClassVar[str] = "2"

    class Params(FullTuneParams):
        """The shared full fine-tuning parameters plus OSFT's.

        ``backend``: ``"peft"`` (peft's OSF) or ``"audit"``. ``train_rest``: non-target
        parameters train too (``True``). ``rank_rule``: ``"energy"`` or ``"importance"``.
        ``energy`` (0.9): share of squared singular values frozen under ``"energy"``.
        ``min_retain`` (0.1) / ``max_retain`` (0.9): frozen rank share at normalised importance
        0 / 1 under ``"importance"``. ``sides``: which singular subspaces the update must avoid
        (``"both"``; one-sided only with ``backend = "audit"``).
        """

        backend: Literal["peft", "audit"] = "peft"
        train_rest: bool = True
        rank_rule: Literal["energy", "importance"] = "energy"
        energy: float = Field(default=0.9, gt=0, lt=1)
        min_retain: float = Field(default=0.1, ge=0, le=1)
        max_retain: float = Field(default=0.9, ge=0, le=1)
        sides: Literal["both", "left", "right"] = "both"

        @model_validator(mode="after")
        def _retain_order(self) -> OsftIntervention.Params:
            if self.min_retain > self.max_retain:
                raise ValueError("min_retain must not exceed max_retain")
            if self.backend == "peft" and self.sides != "both":
                raise ValueError('sides other than "both" need backend = "audit"')
            return self

    def __init__(self, params: OsftIntervention.Params) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: OsftIntervention.Params) -> Placement:
        """One device: the full fine-tune runs on the run's device (the first of a list)."""
        return "single"

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel:
        """Split each target weight's spectrum, then fine-tune in the orthogonal remainder."""
        p = self.params

        def setup(
            model: Any, weights: dict[str, torch.nn.Parameter], examples: list[Any], seed: int
        ) -> Hooks:
            if p.rank_rule == "importance":
                importance = matrix_importance(model, weights, examples)
                frozen = importance_ranks(weights, importance, p.min_retain, p.max_retain)
            else:
                frozen = energy_ranks(weights, p.energy)
            ctx.work_dir.mkdir(parents=True, exist_ok=True)
            ranks = {n: [k, min(weights[n].shape)] for n, k in frozen.items()}
            (ctx.work_dir / "osft_ranks.json").write_text(json.dumps(ranks, indent=1))
            if p.backend == "peft":
                return _peft_hooks(model, weights, frozen, ranks)
            return _hooks(weights, frozen_bases(weights, p.energy, frozen), p.sides, ranks)

        return subspace_fine_tune(
            p, inputs, ctx, name=self.name, setup=setup, train_rest=p.train_rest
        )


def _clamp(k: int, full: int) -> int:
    return max(1, min(k, full - 1))


def energy_ranks(weights: Mapping[str, torch.Tensor], energy: float) -> dict[str, int]:
    """Module -> frozen rank: :func:`energy_rank` of its singular values, in ``[1, rank − 1]``."""
    import torch

    out = {}
    for name, weight in weights.items():
        s = torch.linalg.svdvals(weight.detach().double())
        out[name] = _clamp(energy_rank(s, energy), int(s.shape[0]))
    return out


def importance_ranks(
    weights: Mapping[str, torch.Tensor],
    importance: Mapping[str, float],
    min_retain: float,
    max_retain: float,
) -> dict[str, int]:
    """Module -> frozen rank by the reference's adaptive rule (higher importance, more kept).

    ``k = round((min_retain + Î (max_retain − min_retain)) · d)``, ``Î = I / mean(I)``,
    ``d = min(W.shape)``, clamped to ``[1, d − 1]``.
    """
    mean = sum(importance.values()) / len(importance)
    scale = max(abs(mean), 1e-8)
    out = {}
    for name, weight in weights.items():
        d = min(weight.shape)
        share = min_retain + importance[name] / scale * (max_retain - min_retain)
        out[name] = _clamp(round(share * d), d)
    return out


def matrix_importance(
    model: Any, weights: Mapping[str, torch.Tensor], examples: list[Any], n: int = 16
) -> dict[str, float]:
    """Module -> mean over tokens of ``cos(X[:m], (WX)[:m])``, ``m = min(W.shape)``, on the
    first ``n`` examples (the reference's importance of a weight matrix)."""
    import torch

    sums = dict.fromkeys(weights, 0.0)
    counts = dict.fromkeys(weights, 0)

    def hook(name: str) -> Any:
        def capture(module: Any, args: tuple[Any, ...], _output: Any) -> None:
            weight = weights[name].detach()
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(weight.dtype)
            y = x @ weight.T if isinstance(module, torch.nn.Linear) else x @ weight  # Conv1D
            m = min(weight.shape)
            cos = torch.nn.functional.cosine_similarity(x[:, :m], y[:, :m], dim=-1, eps=1e-8)
            sums[name] += float(cos.double().sum())
            counts[name] += int(cos.shape[0])

        return capture

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in weights]
    try:
        with torch.no_grad():
            for ids, _ in examples[:n]:
                model(input_ids=torch.tensor([ids], device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / max(counts[name], 1) for name in weights}


def frozen_bases(
    weights: Mapping[str, torch.Tensor], energy: float, ranks: Mapping[str, int] | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module -> ``(U_k, V_k)``, the frozen top singular vectors of its weight.

    ``k`` is ``ranks[module]``, or :func:`energy_ranks` at ``energy``. Computed in float64,
    returned in the weight's dtype.
    """
    import torch

    if ranks is None:
        ranks = energy_ranks(weights, energy)
    out = {}
    for name, weight in weights.items():
        u, _, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        k = ranks[name]
        out[name] = (u[:, :k].to(weight.dtype), vh[:k].T.to(weight.dtype))
    return out


def _share(ranks: dict[str, list[int]]) -> dict[str, Any]:
    frozen = sum(k for k, _ in ranks.values())
    return {"frozen_rank_share": round(frozen / sum(f for _, f in ranks.values()), 4)}


def _peft_hooks(
    model: Any,
    weights: dict[str, torch.nn.Parameter],
    frozen: dict[str, int],
    ranks: dict[str, list[int]],
) -> Hooks:
    """Wrap ``model`` (in place) in peft's OSF with rank ``frozen[m]`` for each target ``m``."""
    import torch
    from peft import OSFConfig, get_peft_model

    for name in weights:
        module = model.get_submodule(name)
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(
                f"osft: peft's OSF supports torch.nn.Linear only, not {type(module).__name__} "
                f'({name}); use backend = "audit"'
            )
    config = OSFConfig(
        target_modules=sorted(weights),
        rank_pattern={f"^{re.escape(name)}$": k for name, k in frozen.items()},
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        peft_model = get_peft_model(model, config)

    def unwrap() -> Any:
        return peft_model.merge_and_unload()

    return Hooks(train_targets=False, unwrap=unwrap, finish=lambda: _share(ranks))


def _hooks(
    weights: dict[str, torch.nn.Parameter],
    bases: dict[str, tuple[torch.Tensor, torch.Tensor]],
    sides: str,
    ranks: dict[str, list[int]],
) -> Hooks:
    """Project each gradient before the step and each update after it."""
    pairs = [
        (
            weights[n],
            u if sides in ("both", "left") else None,
            v if sides in ("both", "right") else None,
        )
        for n, (u, v) in bases.items()
    ]
    before: list[torch.Tensor] = []

    def after_backward() -> None:
        before.clear()
        for w, u, v in pairs:
            before.append(w.detach().clone())
            if w.grad is not None:
                w.grad.copy_(project_off(w.grad, u, v))

    def after_step() -> None:
        for (w, u, v), old in zip(pairs, before, strict=True):
            w.data.copy_(old + project_off(w.detach() - old, u, v))

    return Hooks(after_backward=after_backward, after_step=after_step, finish=lambda: _share(ranks))

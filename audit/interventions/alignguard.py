"""AlignGuard-LoRA: LoRA fine-tuning with Fisher-guided, collision-aware regularisation.

A reconstruction of AlignGuard-LoRA (AGL), arXiv 2508.02079 (Das et al., 2025). The paper's
body is not fully public and its authors' repository implements something else, so this
follows the method as its abstract and figures fix it:

1. **Fisher of the safety loss** at the parent, before fine-tuning: the empirical Fisher of the
   per-example cross-entropy on refusal data (``safety_data``), for the weights of every
   adapted module. Diagonal by default (from per-sample gradients,
   :func:`audit.training.fisher.fisher`);
   with ``split = "eigen"`` also its top-``eigen_k`` eigenvectors per module. Cached in the
   store, keyed on the parent's key and the encoded examples.
2. **Split** of each module's update ΔW = scale·B·A into an alignment-critical part Δ_A and a
   task part Δ_T = ΔW − Δ_A: ``mask`` (default) keeps the top ``critical_fraction`` of
   coordinates by diagonal Fisher; ``eigen`` projects on the top Fisher eigenvectors; ``soft``
   (our addition, see below) weighs every coordinate by F/(F + F_k).
3. **Loss** L = L_task + λ_A‖F^{1/2}Δ_A‖² + λ_T‖H^{1/2}Δ_T‖² + λ_NC[α·C_rm + (1−α)·C_geo],
   with C_rm = mean_j η_j|Δ_A,j·Δ_T,j|, η_j = 1 + β·σ(|ΔW_j| − τ), and
   C_geo = ⟨Δ_A,Δ_T⟩² / (‖Δ_A‖²‖Δ_T‖² + ε), each term summed over modules
   (:mod:`audit.interventions.alignguard_terms`). H is the identity, or with
   ``task_fisher = true`` the diagonal Fisher of the task loss.

Defaults: λ_A = 0.25, λ_T = 0.5, λ_NC = 0.1, α (``collision_alpha``) = 0.5, β = 4, τ = 0.01,
``critical_fraction`` = 0.1, ``split = "mask"``, ``eigen_k`` = 8, 64 Fisher examples.
Everything else (data, optimiser, steps, LoRA configuration, seeds) is the ``lora`` step's, so
the two differ only by the regulariser; with λ_A = λ_T = λ_NC = 0 the result is bit-identical.

Adaptations, where the paper does not fix a choice:

- **Fisher scale.** A raw Fisher's scale depends on the model and the data (values ~1e-6 are
  common), which would make λ_A meaningless; each module's Fisher is divided by its mean
  diagonal entry (``normalize_fisher``), so λ_A weighs a coordinate of average safety
  sensitivity like λ_T weighs a task coordinate.
- **Collision terms under a hard split.** With a 0/1 coordinate mask, Δ_A and Δ_T have disjoint
  supports, so both C_rm and C_geo are identically zero, and with the eigen projection
  C_geo is zero (Δ_A ⊥ Δ_T); λ_NC then has no effect. ``split = "soft"`` is offered so that
  the collision terms act; it is not in the paper.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from audit.interventions.lora import LoraIntervention
from audit.plugins import PairData, RunContext, TrainedModel
from audit.training.loop import Regularizer, encode_pairs, fine_tune, target_modules

if TYPE_CHECKING:
    import torch

    from audit.models.handle import ModelHandle
    from audit.training.fisher import ModuleFisher

__all__ = ["AlignGuardIntervention"]

FISHER_CACHE_VERSION = "1"


@dataclass
class _ModuleGuard:
    """What the regulariser needs for one adapted module."""

    name: str
    layer: Any  # the peft LoraLayer
    fisher_diag: torch.Tensor
    mask: torch.Tensor | None
    eigvals: torch.Tensor | None
    eigvecs: torch.Tensor | None
    h_diag: torch.Tensor | None

    def delta(self) -> torch.Tensor:
        """ΔW = scale · B · A, shaped like the base weight."""
        a = self.layer.lora_A["default"].weight
        b = self.layer.lora_B["default"].weight
        return (b @ a) * self.layer.scaling["default"]


class AlignGuardIntervention:
    """LoRA fine-tuning regularised by the safety Fisher (AlignGuard-LoRA, arXiv 2508.02079).

    ``ctx.work_dir`` receives ``adapter/`` and ``training_log.jsonl`` (each step's task loss
    and regulariser terms, before λ scaling).
    """

    name: ClassVar[str] = "alignguard"
    version: ClassVar[str] = "1"

    class Params(LoraIntervention.Params):
        """The ``lora`` parameters plus the AlignGuard regulariser's.

        ``safety_data``: prompt/response pairs whose loss defines alignment (refusals of unsafe
        requests). ``critical_fraction``: share of each module's coordinates that are
        alignment-critical. ``eigen_k``: Fisher eigenvectors per module for ``split = "eigen"``.
        ``fisher_examples``: safety (and, with ``task_fisher``, task) examples the Fisher is
        estimated from, a seeded sample.
        """

        safety_data: PairData
        lambda_a: float = Field(default=0.25, ge=0)
        lambda_t: float = Field(default=0.5, ge=0)
        lambda_nc: float = Field(default=0.1, ge=0)
        collision_alpha: float = Field(default=0.5, ge=0, le=1)
        beta: float = Field(default=4.0, ge=0)
        tau: float = Field(default=0.01, ge=0)
        critical_fraction: float = Field(default=0.1, gt=0, le=1)
        split: Literal["mask", "soft", "eigen"] = "mask"
        eigen_k: int = Field(default=8, gt=0)
        task_fisher: bool = False
        normalize_fisher: bool = True
        fisher_examples: int = Field(default=64, gt=0)
        fisher_batch_size: int = Field(default=16, gt=0)

    def __init__(self, params: AlignGuardIntervention.Params) -> None:
        self.params = params

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel:
        """Compute (or reuse) the parent's Fisher, then fine-tune with the regulariser."""
        p = self.params

        def prepare(model: Any, tokenizer: Any, parent: ModelHandle) -> Any:
            guards = _prepare_fisher(model, tokenizer, parent, p, ctx)

            def attach(peft_model: Any) -> Regularizer:
                return _regularizer(peft_model, guards, p)

            return attach

        return fine_tune(p, inputs, ctx, name=self.name, prepare=prepare)


@dataclass
class _Estimates:
    modules: list[str]
    safety: dict[str, ModuleFisher]
    task: dict[str, ModuleFisher] | None


def _sample(examples: list[Any], n: int, seed: int) -> list[Any]:
    import torch

    if len(examples) <= n:
        return examples
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    return [examples[i] for i in sorted(order[:n].tolist())]


def _fisher_cached(
    model: Any,
    examples: list[Any],
    modules: list[str],
    parent: ModelHandle,
    eigen_k: int,
    p: AlignGuardIntervention.Params,
    ctx: RunContext,
    label: str,
) -> dict[str, ModuleFisher]:
    """The Fisher of ``examples`` at the parent, from the store when it was computed before."""
    from audit.store.keys import step_key
    from audit.training.fisher import ModuleFisher, fisher

    digest = hashlib.sha256(json.dumps(examples).encode()).hexdigest()
    key = step_key(
        "fisher",
        version=FISHER_CACHE_VERSION,
        model=parent.key,
        examples=digest,
        modules=modules,
        eigen_k=eigen_k,
    )

    def build(directory: Path) -> None:
        from safetensors.torch import save_file

        result = fisher(
            model,
            examples,
            modules,
            batch_size=p.fisher_batch_size,
            eigen_k=eigen_k,
            progress=lambda done, total: ctx.progress(f"fisher ({label})", done, total),
        )
        tensors = {}
        for name, f in result.items():
            tensors[f"{name}::diag"] = f.diag.detach().cpu().contiguous()
            if f.eigvals is not None and f.eigvecs is not None:
                tensors[f"{name}::eigvals"] = f.eigvals.detach().cpu().contiguous()
                tensors[f"{name}::eigvecs"] = f.eigvecs.detach().cpu().contiguous()
        save_file(tensors, str(directory / "fisher.safetensors"))

    from safetensors.torch import load_file

    stored = load_file(str(ctx.cached(key, build) / "fisher.safetensors"))
    return {
        name: ModuleFisher(
            diag=stored[f"{name}::diag"],
            eigvals=stored.get(f"{name}::eigvals"),
            eigvecs=stored.get(f"{name}::eigvecs"),
        )
        for name in modules
    }


def _prepare_fisher(
    model: Any,
    tokenizer: Any,
    parent: ModelHandle,
    p: AlignGuardIntervention.Params,
    ctx: RunContext,
) -> list[_ModuleGuard]:
    """Fisher estimates, masks and normalisers per module (the LoRA layers attached later)."""
    from audit.data.records import PairRecord, load_records
    from audit.training.fisher import linear_modules

    seed = p.seed if p.seed is not None else ctx.seed
    targets = target_modules(model, p)
    if targets is None:
        raise ValueError(
            "alignguard: no default target modules for architecture "
            f"{getattr(model.config, 'model_type', '?')!r}; set target_modules"
        )
    modules = sorted(linear_modules(model, targets))
    records = load_records(p.safety_data, PairRecord, suite_dir=ctx.suite_dir, split="train")
    safety = encode_pairs(tokenizer, records, p.max_length, name="alignguard safety_data")
    eigen_k = p.eigen_k if p.split == "eigen" else 0
    estimates = _fisher_cached(
        model, _sample(safety, p.fisher_examples, seed), modules, parent, eigen_k, p, ctx, "safety"
    )
    task_estimates = None
    if p.task_fisher:
        task_records = load_records(p.data, PairRecord, suite_dir=ctx.suite_dir, split="train")
        task = encode_pairs(tokenizer, task_records, p.max_length, name="alignguard data")
        task_estimates = _fisher_cached(
            model, _sample(task, p.fisher_examples, seed), modules, parent, 0, p, ctx, "task"
        )
    return _guards(_Estimates(modules, estimates, task_estimates), p, ctx.device)


def _normalised(diag: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, float]:
    mean = float(diag.mean())
    scale = 1.0 / mean if normalize and mean > 0 else 1.0
    return diag * scale, scale


def _guards(est: _Estimates, p: AlignGuardIntervention.Params, device: str) -> list[_ModuleGuard]:
    from audit.interventions.alignguard_terms import critical_mask

    guards = []
    for name in est.modules:
        f = est.safety[name]
        diag, scale = _normalised(f.diag.float(), p.normalize_fisher)
        mask = None
        eigvals = eigvecs = None
        if p.split == "eigen":
            if f.eigvals is None or f.eigvecs is None:
                raise AssertionError("eigen split without eigenvectors")
            eigvals, eigvecs = (f.eigvals.float() * scale).to(device), f.eigvecs.float().to(device)
        else:
            mask = critical_mask(diag, p.critical_fraction, soft=p.split == "soft").to(device)
        h_diag = None
        if est.task is not None:
            h_diag = _normalised(est.task[name].diag.float(), p.normalize_fisher)[0].to(device)
        guards.append(_ModuleGuard(name, None, diag.to(device), mask, eigvals, eigvecs, h_diag))
    return guards


def _regularizer(
    peft_model: Any, guards: list[_ModuleGuard], p: AlignGuardIntervention.Params
) -> Regularizer:
    """The per-step regulariser over every adapted module of ``peft_model``."""
    import torch

    from audit.interventions.alignguard_terms import (
        alignment_penalty,
        geodesic_overlap,
        riemannian_overlap,
        split_update,
        task_penalty,
    )

    root = peft_model.base_model.model
    for guard in guards:
        guard.layer = root.get_submodule(guard.name)
        if not hasattr(guard.layer, "lora_A"):
            raise AssertionError(f"{guard.name} was not adapted by LoRA")

    def regularize() -> tuple[torch.Tensor, dict[str, float]]:
        r_a = r_t = c_rm = c_geo = torch.zeros(())
        for g in guards:
            delta = g.delta()
            critical, task = split_update(delta, mask=g.mask, eigvecs=g.eigvecs)
            r_a = r_a + alignment_penalty(
                critical, fisher_diag=g.fisher_diag, eigvals=g.eigvals, eigvecs=g.eigvecs
            )
            r_t = r_t + task_penalty(task, g.h_diag)
            c_rm = c_rm + riemannian_overlap(critical, task, delta, p.beta, p.tau)
            c_geo = c_geo + geodesic_overlap(critical, task)
        a = p.collision_alpha
        total = p.lambda_a * r_a + p.lambda_t * r_t + p.lambda_nc * (a * c_rm + (1 - a) * c_geo)
        parts = {
            "r_align": float(r_a.detach()),
            "r_task": float(r_t.detach()),
            "c_rm": float(c_rm.detach()),
            "c_geo": float(c_geo.detach()),
        }
        return total, parts

    return regularize

"""AlignGuard-LoRA: LoRA fine-tuning with Fisher-guided, collision-aware regularisation.

A reconstruction of AlignGuard-LoRA (AGL), arXiv 2508.02079 (Das et al., 2025). The paper's
body is not fully public and its authors' repository implements something else, so this
follows the method as its abstract and figures fix it:

1. **Fisher of the safety loss** at the parent, before fine-tuning: the empirical Fisher of the
   per-example cross-entropy on refusal data (``safety_data``), for the weights of every
   adapted module. Diagonal by default (from per-sample gradients,
   :func:`audit.training.fisher.fisher`);
   with ``split = "eigen"`` also its top-``eigen_k`` eigenvectors per module. Cached in the
   store, keyed on the parent's key and the encoded examples (the raw estimate: normalisation
   and selection below happen after the cache, so they do not change its key).
2. **Split** of each module's update ΔW = scale·B·A into an alignment-critical part Δ_A and a
   task part Δ_T = ΔW − Δ_A: ``soft`` (default) weighs every coordinate by w = F/(F + F_k),
   Δ_A = w ⊙ ΔW, with F_k the Fisher value at the top ``critical_fraction``; ``mask`` keeps
   the top ``critical_fraction`` of coordinates by diagonal Fisher (w ∈ {0, 1}); ``eigen``
   projects vec(ΔW) on the module's top Fisher eigenvectors, the paper's P_A.
3. **Loss** L = L_task + λ_A‖F^{1/2}Δ_A‖² + λ_T‖H^{1/2}Δ_T‖² + λ_NC[α·C_rm + (1−α)·C_geo],
   with C_rm = mean_j η_j|Δ_A,j·Δ_T,j| (Riemannian overlap), and
   C_geo = ⟨Δ_A,Δ_T⟩² / (‖Δ_A‖²‖Δ_T‖² + ε) (geodesic overlap), each term summed over modules
   (:mod:`audit.interventions.alignguard_terms`). H is the identity, or with
   ``task_fisher = true`` the diagonal Fisher of the task loss. The paper's curvature gate is
   η_j = 1 + β·σ(|ΔW_j| − τ); the code uses η_j = 1 + β·σ((|ΔW_j| − τ·s)/s) with s the RMS
   of the module's current update (see below).

Defaults: λ_A = 0.25, λ_T = 0.5, λ_NC = 0.1, α (``collision_alpha``) = 0.5, β = 4, τ = 1 (in
units of s), ``eta_scale = "rms"``, ``critical_fraction`` = 0.1, ``split = "soft"``,
``fisher_scope = "global"``, ``eigen_k`` = 8, 64 Fisher examples. Everything else (data,
optimiser, steps, LoRA configuration, seeds) is the ``lora`` step's, so the two differ only by
the regulariser; with λ_A = λ_T = λ_NC = 0 the result is bit-identical.

Adaptations, where the paper does not fix a choice (version 2; version 1 had ``split =
"mask"``, τ = 0.01 absolute and per-module Fisher normalisation and selection, under which
λ_NC did nothing and η was constant):

- **Default split: soft.** The collision terms need Δ_A and Δ_T to share coordinates. Under the
  hard ``mask`` they have disjoint supports, so C_rm ≡ C_geo ≡ 0 with zero gradient, and
  ``lambda_nc > 0`` with ``split = "mask"`` is a validation error. Under ``eigen`` (the paper's
  orthogonal projection) C_rm acts but C_geo ≡ 0 (Δ_A ⊥ Δ_T), and it needs every per-sample
  gradient of every module (``fisher_examples``·out·in floats each), which does not scale. The
  soft split is the hard mask relaxed — the same diagonal Fisher, the same ranking and the same
  ``critical_fraction`` (its F_k is where w = 1/2) — and the one split under which all three
  regularisers of the paper's loss act; it is our choice, not the paper's.
- **Curvature gate scale.** The paper writes η = 1 + β·σ(|ΔW| − τ) with no unit for |ΔW|. LoRA
  updates are ~1e-4–1e-2 per coordinate, so σ(|ΔW| − τ) ≈ σ(0) and η ≈ 1 + β/2 for every
  coordinate (η ∈ 2.99–3.04 with β = 4, τ = 0.01): the gate was inert. Here |ΔW_j| is measured
  in units of s = RMS(ΔW) of the same module at the current step (a statistic, no gradient
  through it), and τ is in those units: τ = 1 centres the gate on coordinates moving as much as
  a typical one, so η runs from ≈ 1 + β·σ(−1) ≈ 2.1 (still coordinates) to ≈ 1 + β (those
  moving several RMS), independent of the model, learning rate and step. ``eta_scale`` = a
  number fixes s instead (``eta_scale = 1`` is the paper's formula literally).
- **Fisher scale and scope.** A raw Fisher's scale depends on the model and the data (values
  ~1e-6 are common), which would make λ_A meaningless, so it is divided by its mean diagonal
  entry (``normalize_fisher``). With ``fisher_scope = "global"`` (default) that mean is taken
  over every adapted coordinate of every module, and the critical coordinates (the top
  ``critical_fraction``, or F_k of the soft split) are ranked across all modules together: a
  module whose weights matter more to the safety loss keeps its larger Fisher, gets more
  critical coordinates and is penalised more. ``fisher_scope = "module"`` normalises and ranks
  within each module (version 1), which makes every module equally important. With ``eigen``
  the eigenvalues get the same scale factor, and ``eigen_k`` stays per module. The task Fisher
  H (``task_fisher``) is normalised the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from audit.interventions.lora import LoraIntervention
from audit.plugins import PairData, Placement, RunContext, TrainedModel
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
    version: ClassVar[str] = "2"

    class Params(LoraIntervention.Params):
        """The ``lora`` parameters plus the AlignGuard regulariser's.

        ``safety_data``: prompt/response pairs whose loss defines alignment (refusals of unsafe
        requests). ``critical_fraction``: share of the coordinates that are alignment-critical
        (of all adapted coordinates together with ``fisher_scope = "global"``, of each module's
        with ``"module"``). ``eigen_k``: Fisher eigenvectors per module for ``split = "eigen"``.
        ``tau`` and ``eta_scale``: the curvature gate η = 1 + β σ(|ΔW|/s − τ), s = the RMS of
        the module's current update (``"rms"``) or a fixed number (1: the paper's literal η).
        ``fisher_scope``: whether Fisher values are normalised and ranked across all adapted
        modules (``"global"``) or within each module (``"module"``, version 1's behaviour).
        ``fisher_examples``: safety (and, with ``task_fisher``, task) examples the Fisher is
        estimated from, a seeded sample.

        ``lambda_nc > 0`` with ``split = "mask"`` is refused: a 0/1 mask gives Δ_A and Δ_T
        disjoint supports, so both collision terms and their gradients are identically zero.
        """

        safety_data: PairData
        lambda_a: float = Field(default=0.25, ge=0)
        lambda_t: float = Field(default=0.5, ge=0)
        lambda_nc: float = Field(default=0.1, ge=0)
        collision_alpha: float = Field(default=0.5, ge=0, le=1)
        beta: float = Field(default=4.0, ge=0)
        tau: float = Field(default=1.0, ge=0)
        eta_scale: float | Literal["rms"] = "rms"
        critical_fraction: float = Field(default=0.1, gt=0, le=1)
        split: Literal["mask", "soft", "eigen"] = "soft"
        eigen_k: int = Field(default=8, gt=0)
        fisher_scope: Literal["global", "module"] = "global"
        task_fisher: bool = False
        normalize_fisher: bool = True
        fisher_examples: int = Field(default=64, gt=0)
        fisher_batch_size: int = Field(default=16, gt=0)

        @model_validator(mode="after")
        def _collision_terms_can_act(self) -> AlignGuardIntervention.Params:
            if self.split == "mask" and self.lambda_nc > 0:
                raise ValueError(
                    f"lambda_nc = {self.lambda_nc} has no effect with split = 'mask': a 0/1 "
                    "coordinate mask gives the critical part Δ_A and the task part Δ_T disjoint "
                    "supports, so the collision terms C_rm and C_geo (and their gradients) are "
                    "identically zero. Use split = 'soft' (or 'eigen'), or set lambda_nc = 0"
                )
            if not isinstance(self.eta_scale, str) and not self.eta_scale > 0:
                raise ValueError(
                    f"eta_scale must be 'rms' or a positive number, not {self.eta_scale}"
                )
            return self

    def __init__(self, params: AlignGuardIntervention.Params) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: AlignGuardIntervention.Params) -> Placement:
        """One device: the Fisher and the fine-tune run on the run's device (the first of a
        list)."""
        return "single"

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


def _fisher_scales(diags: list[torch.Tensor], p: AlignGuardIntervention.Params) -> list[float]:
    """The factor each module's Fisher is multiplied by: 1 / mean diagonal entry, that mean
    taken over every adapted coordinate (``fisher_scope = "global"``: one factor, so modules
    keep their relative size) or over each module's own (``"module"``); 1 without
    ``normalize_fisher`` (or when the mean is 0)."""
    if not p.normalize_fisher:
        return [1.0] * len(diags)

    def inverse(total: float, count: int) -> float:
        mean = total / max(count, 1)
        return 1.0 / mean if mean > 0 else 1.0

    if p.fisher_scope == "global":
        factor = inverse(sum(float(d.double().sum()) for d in diags), sum(d.numel() for d in diags))
        return [factor] * len(diags)
    return [inverse(float(d.double().sum()), d.numel()) for d in diags]


def _guards(est: _Estimates, p: AlignGuardIntervention.Params, device: str) -> list[_ModuleGuard]:
    from audit.interventions.alignguard_terms import critical_mask, critical_masks

    raw = [est.safety[name].diag.float() for name in est.modules]
    scales = _fisher_scales(raw, p)
    diags = [d * scale for d, scale in zip(raw, scales, strict=True)]
    masks: list[torch.Tensor | None] = [None] * len(diags)
    if p.split != "eigen":
        soft = p.split == "soft"
        if p.fisher_scope == "global":
            masks = list(critical_masks(diags, p.critical_fraction, soft=soft))
        else:
            masks = [critical_mask(d, p.critical_fraction, soft=soft) for d in diags]
    h_diags: list[torch.Tensor | None] = [None] * len(diags)
    if est.task is not None:
        task_raw = [est.task[name].diag.float() for name in est.modules]
        task_scales = _fisher_scales(task_raw, p)
        h_diags = [d * scale for d, scale in zip(task_raw, task_scales, strict=True)]
    guards = []
    for i, name in enumerate(est.modules):
        f = est.safety[name]
        eigvals = eigvecs = None
        if p.split == "eigen":
            if f.eigvals is None or f.eigvecs is None:
                raise AssertionError("eigen split without eigenvectors")
            eigvals = (f.eigvals.float() * scales[i]).to(device)
            eigvecs = f.eigvecs.float().to(device)
        mask = masks[i]
        h_diag = h_diags[i]
        guards.append(
            _ModuleGuard(
                name,
                None,
                diags[i].to(device),
                None if mask is None else mask.to(device),
                eigvals,
                eigvecs,
                None if h_diag is None else h_diag.to(device),
            )
        )
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
            c_rm = c_rm + riemannian_overlap(critical, task, delta, p.beta, p.tau, p.eta_scale)
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

"""The ``merge`` intervention: several fine-tunes of one base merged into one model."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from audit.merging.concrete import ConcreteOptions
from audit.merging.dam import DamOptions
from audit.merging.doge import DogeOptions
from audit.merging.methods import METHODS, method, names, resolve
from audit.merging.opcm import OpcmOptions
from audit.plugins import ModelRef, PairData, Placement, RunContext, TrainedModel
from audit.plugins import Params as BaseParams

if TYPE_CHECKING:
    from audit.merging.base import ModelMethod, TensorMethod
    from audit.models.handle import ModelHandle

__all__ = ["MODEL_METHODS", "MergeIntervention", "TENSOR_METHODS"]

if TYPE_CHECKING:
    Method = str
else:
    Method = Literal[names()]
    """Every method of :data:`audit.merging.methods.METHODS`, in table order."""

TENSOR_METHODS: dict[str, Any] = {m.name: m.function for m in METHODS if m.kind == "tensor"}
"""Methods merging one tensor at a time (streamed from disk), as ``module:function``."""

MODEL_METHODS: dict[str, Any] = {m.name: m.function for m in METHODS if m.kind == "model"}
"""Methods that need the base model and data; they hold every task vector in memory."""


class MergeIntervention:
    """Merge the task vectors of several models onto a base: ``θ = θ_base + λ · merge(δ_1..δ_n)``.

    Contributors are the models of ``models = [...]`` (and ``from``), in order; ``base`` names
    the model the task vectors ``δ_i = θ_i − θ_base`` are taken from. A contributor may be a
    full checkpoint or a PEFT LoRA adapter trained on the base. Tensor-level methods
    (task_arithmetic, ties, dare_*, magnitude_prune, opcm, doge) stream the checkpoints from disk
    one tensor at a time (:mod:`audit.merging.stream`); model-level methods (dam, concrete) load
    the base model and every task vector into memory and read ``task_data`` prompts (one data
    set per contributor). Non-floating-point tensors and tensors whose shape differs across
    contributors are copied from the base; embeddings of different vocabularies are an error.
    """

    name: ClassVar[str] = "merge"
    version: ClassVar[str] = "1"

    class Params(BaseParams):
        """Merge parameters.

        ``weights``: one per contributor (default all 1). ``scaling``: λ on the merged task
        vector. ``density``: fraction kept by ties, dare_* and magnitude_prune; ``None`` (default)
        is the method's reference default: 0.2 for ties (the TIES authors' ``topk20``, kept
        over each contributor's whole task vector), 0.5 for dare_* and magnitude_prune.
        ``trim``: ties only; ``"global"`` (default) keeps each contributor's top ``density`` over
        its whole task vector, as the TIES authors' code; ``"tensor"`` is peft's per-tensor
        top-k. ``majority_sign_method``: sign election of ties and dare_ties. ``task_data``: prompt
        data per contributor (dam, concrete), at most ``max_prompts`` each. ``seed``: ``None``
        uses the run's seed. ``opcm``/``doge``/``dam``/``concrete``: per-method options.
        """

        base: ModelRef
        method: Method
        weights: list[float] | None = None
        scaling: float = 1.0
        density: float | None = Field(default=None, gt=0, le=1)
        trim: Literal["global", "tensor"] = "global"
        majority_sign_method: Literal["total", "frequency"] = "total"
        task_data: list[PairData] | None = None
        max_prompts: int = Field(default=64, gt=0)
        seed: int | None = None
        opcm: OpcmOptions = Field(default_factory=OpcmOptions)
        doge: DogeOptions = Field(default_factory=DogeOptions)
        dam: DamOptions = Field(default_factory=DamOptions)
        concrete: ConcreteOptions = Field(default_factory=ConcreteOptions)

        @model_validator(mode="after")
        def _data_for_model_methods(self) -> MergeIntervention.Params:
            if self.method in MODEL_METHODS and not self.task_data:
                raise ValueError(
                    f"method {self.method!r} needs task_data: one prompt data set per contributor"
                )
            return self

    def __init__(self, params: MergeIntervention.Params) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: MergeIntervention.Params) -> Placement:
        """One device for the model-level methods (dam, concrete learn their masks there); the
        CPU for the tensor methods, streamed from disk."""
        return "single" if params.method in MODEL_METHODS else "cpu"

    @classmethod
    def controls(
        cls, name: str, parents: Sequence[str], params: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """The matched controls of the merge ``name`` (``controls = true``): task arithmetic of
        the same contributors and weights shrunk to its norm, and masked at random to its keep
        rate (:mod:`audit.interventions.control`). None while its parameters are invalid (the
        suite check reports them)."""
        from pydantic import ValidationError

        from audit.interventions.control import control_tables

        try:
            p = cls.Params.model_validate(dict(params))
        except ValidationError:
            return {}
        contributors = [m for m in parents if m != p.base]
        return control_tables(name, p.base, contributors, p.weights)

    def contributors(
        self, inputs: Mapping[str, ModelHandle]
    ) -> tuple[ModelHandle, list[ModelHandle]]:
        """The base handle and the contributors' handles, in order, after checking them."""
        p = self.params
        if p.base not in inputs:
            raise ValueError(f"the merge's base {p.base!r} is not among its inputs")
        names = list(inputs)
        base = inputs[p.base]
        others = [inputs[n] for n in names if n != p.base]
        # the runner passes `from`/`models` first and `base` last: a base that is not last was
        # also listed as a contributor
        if names[-1] != p.base or any(h.key == base.key for h in others):
            raise ValueError(f"the merge's base {p.base!r} must not also be a contributor")
        if not others:
            raise ValueError('the merge needs contributors: models = ["NAME", ...]')
        n = len(others)
        if p.weights is not None and len(p.weights) != n:
            raise ValueError(
                f"weights has {len(p.weights)} values but the merge has {n} contributors "
                f"({', '.join(h.name for h in others)}); give one weight per contributor"
            )
        if p.method in MODEL_METHODS and p.task_data is not None and len(p.task_data) != n:
            raise ValueError(
                f"task_data has {len(p.task_data)} data sets but the merge has {n} contributors; "
                "give one per contributor, in the order of models"
            )
        return base, others

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel:
        """Merge the contributors in ``inputs`` onto ``inputs[params.base]``."""
        from audit.merging.stream import plan_merge

        p = self.params
        base, others = self.contributors(inputs)
        weights = list(p.weights) if p.weights is not None else [1.0] * len(others)
        seed = p.seed if p.seed is not None else ctx.seed
        plan = plan_merge(
            base.path,
            [h.path for h in others],
            suite_dir=ctx.suite_dir,
            trust_remote_code=base.trust_remote_code,
        )
        size: dict[str, float] = {}
        if p.method in MODEL_METHODS:
            model, tokenizer, stats = self._model_level(plan, base, weights, seed, ctx, size)
        else:
            model, tokenizer, stats = self._streamed(plan, base, weights, seed, ctx)
        info = {
            "method": p.method,
            "base": base.name,
            "contributors": [h.name for h in others],
            "weights": weights,
            "scaling": p.scaling,
            "seed": seed,
            "tensors": stats.tensors,
            "merged": stats.merged,
            "copied_from_base": stats.copied,
            "tied": stats.tied,
            **size,
        }
        return TrainedModel(model=model, tokenizer=tokenizer, info=info)

    def _options(self) -> Any:
        p = self.params
        return getattr(p, p.method) if method(p.method).options is not None else p

    def _streamed(
        self, plan: Any, base: ModelHandle, weights: list[float], seed: int, ctx: RunContext
    ) -> tuple[Any, Any, Any]:
        from audit.merging.stream import merge_to_directory
        from audit.models.loading import load_checkpoint

        merge: TensorMethod = resolve(TENSOR_METHODS[self.params.method])
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        out_dir = Path(tempfile.mkdtemp(prefix="merged-", dir=ctx.work_dir))
        try:
            stats = merge_to_directory(
                plan,
                merge,
                weights,
                out_dir,
                scaling=self.params.scaling,
                options=self._options(),
                seed=seed,
                progress=ctx.progress,
            )
            model, tokenizer = load_checkpoint(out_dir, trust_remote_code=base.trust_remote_code)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        return model, tokenizer, stats

    def _model_level(
        self,
        plan: Any,
        base: ModelHandle,
        weights: list[float],
        seed: int,
        ctx: RunContext,
        size: dict[str, float],
    ) -> tuple[Any, Any, Any]:
        """A model-level merge; ``size`` receives its ``keep_rate`` and ``norm_ratio`` against
        task arithmetic with the same weights and scaling
        (:func:`audit.interventions.control.update_stats`), so a masking method's effect can be
        read beside its size."""
        import torch

        from audit.data.records import PairRecord, load_records
        from audit.merging.stream import MergeStats, load_task_vectors
        from audit.models.loading import load_checkpoint

        p = self.params
        merge: ModelMethod = resolve(MODEL_METHODS[p.method])
        vectors, copied = load_task_vectors(plan)
        prompts = [
            [
                r.prompt
                for r in load_records(spec, PairRecord, suite_dir=ctx.suite_dir, split="train")
            ][: p.max_prompts]
            for spec in p.task_data or []
        ]
        model, tokenizer = load_checkpoint(
            base.path, allow_pickle=base.allow_pickle, trust_remote_code=base.trust_remote_code
        )
        model.to(ctx.device)
        merged = merge(
            model, tokenizer, vectors, weights, prompts, self._options(), seed, ctx.progress
        )
        from audit.interventions.control import update_stats

        plain = {n: sum(w * t.float() for w, t in zip(weights, vs, strict=True))
                 for n, vs in vectors.items()}  # fmt: skip
        keep, ratio = update_stats({n: d.float().cpu() for n, d in merged.items()}, plain)
        size.update(keep_rate=keep, norm_ratio=ratio)  # the scaling multiplies both sides
        del vectors, plain
        state = model.state_dict()
        with torch.no_grad():
            for name, delta in merged.items():
                if name not in state:
                    raise ValueError(f"method {p.method!r} returned an unknown tensor {name!r}")
                original = plan.base.read(name).float()
                target = state[name]
                target.copy_((original + p.scaling * delta.float().cpu()).to(target.dtype))
        model.eval()
        stats = MergeStats(
            tensors=len(plan.names), merged=len(merged), copied=copied, tied=plan.tied
        )
        return model, tokenizer, stats

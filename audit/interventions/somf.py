"""The ``somf`` intervention: safety realignment by subspace-oriented model fusion.

Yi et al., arXiv 2405.09055, following the authors' code (xinykou/safety_realignment at commit
5a805935b6fbdd7d63cf013c622631a186c133a5, ``llama_factory/src/llmtuner/model/modeling.py``,
``concrete_mask.py`` and ``tasks/*.py``; see :mod:`audit.merging.safety_mask` for the method and
what was adapted). ``θ = θ_aligned + Merge({m ⊙ τ_i / mean(m)})`` with ``τ_i = θ_i − θ_aligned``
for each input model and ``m`` one binary-Concrete mask learned on refusal pairs
(cross-entropy), or with DPO on preference records (``prompt``, ``chosen``, ``rejected``; β 0.1,
the unmasked fusion as reference model). The final mask is sampled from the learned Bernoulli
(seeded from the run's seed).

Default weights (``weights`` unset) are the reference's (``modeling.py``
``PeftMaskModel._init_task_wise_weight`` and the merge functions of ``tasks/``):

* one input model: 1.0 (``task_arithmetic_func`` and ``ties_merging_func`` return a lone task
  vector unweighted, as does the reference's default of no merge method), except the DARE
  methods: 0.3 (``dare_func`` weights even a lone vector);
* several: 0.3 each (task arithmetic, DARE; ``magnitude_prune``, which has no counterpart, takes
  0.3 too), 0.4 each for TIES (the reference multiplies its TIES result by 0.4).

The reference's ``weight_averaging`` (``1/n``) has no merge method here; give
``weights = [1/n, …]`` with ``task_arithmetic`` for it. Left as is: with one input model the
reference applies no merge at all (a lone vector is returned untrimmed), while ``ties``,
``dare_*`` and ``magnitude_prune`` here still trim/drop it (at ``density``); and for several the
reference's TIES and DARE differ from peft's (see :mod:`audit.merging.safety_mask`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from audit.merging.methods import method, names
from audit.merging.safety_mask import FinalMask
from audit.plugins import ModelRef, Placement, RunContext, SafetyData, TrainedModel
from audit.plugins import Params as BaseParams

if TYPE_CHECKING:
    from audit.models.handle import ModelHandle

__all__ = ["SomfIntervention"]

if TYPE_CHECKING:
    SomfMethod = str
else:
    SomfMethod = Literal[names("tensor", differentiable=True)]
    """The merge methods autograd flows through (the peft ones), from
    :data:`audit.merging.methods.METHODS`."""

DEFAULT_WEIGHT = {"ties": 0.4}
"""Per-task weight by method for several input models when ``weights`` is not given (the
reference's: 0.4 for TIES); 0.3 (its task-arithmetic and DARE weight) for every other method,
``dare_ties`` included (the reference's DARE has no sign election; it weights 0.3)."""

WEIGHTED_ALONE = ("dare_linear", "dare_ties")
"""Methods the reference weights (0.3) even for one input model (its ``dare_func``)."""


class SomfIntervention:
    """Realign the input model(s) with the aligned model through a learned safety mask.

    Input models are ``from``/``models``; ``aligned`` names the model their task vectors are
    taken from and which the fused model is built on. Task vectors are read like the merge's
    (:func:`audit.merging.stream.load_task_vectors`: full checkpoints or LoRA adapters of the
    aligned model) and all held in memory, with the aligned model. Only the mask logits train.
    """

    name: ClassVar[str] = "somf"
    version: ClassVar[str] = "2"

    class Params(BaseParams):
        """SOMF parameters.

        ``aligned``: the safety-aligned model. ``safety_data``: refusal pairs (``train`` split),
        cross-entropy on the responses; or preference records (``prompt``, ``chosen``,
        ``rejected``), trained with DPO (``dpo_beta`` 0.1) against the unmasked fusion.
        ``objective``: ``auto`` picks DPO exactly when the data are preference records.
        ``method``: the merge of the masked task vectors (peft methods only; they are
        differentiable in the mask). ``weights``: one per input model (default the
        reference's: 1.0 for one input model, 0.3 for dare_* alone; 0.3 each for several, 0.4
        for ties). ``density``/``majority_sign_method``: as in the merge. ``steps``
        (100) Adam steps at ``lr`` (``None``: 1e-3 for one input model, 1e-2 for several) on
        ``batch_size`` (16) pairs; Concrete ``temperature`` (0.5). ``mask``: the final mask,
        ``sample`` (a binary draw, entry kept with probability ``sigmoid(logit)``, seeded from
        ``seed``; the reference's), ``relaxed`` (the relaxed Concrete draw), ``threshold``
        (``logit >= 0``) or ``sigmoid`` (``sigmoid(logit)``). ``max_length``: tokens per pair.
        ``eval_examples``: pairs (a seeded sample) behind the final safety losses in ``info``.
        ``seed``: ``None`` uses the run's seed.
        """

        aligned: ModelRef
        safety_data: SafetyData
        objective: Literal["auto", "ce", "dpo"] = "auto"
        dpo_beta: float = Field(default=0.1, gt=0)
        method: SomfMethod = "task_arithmetic"
        weights: list[float] | None = None
        density: float = Field(default=0.5, gt=0, le=1)
        majority_sign_method: Literal["total", "frequency"] = "total"
        steps: int = Field(default=100, ge=0)
        lr: float | None = Field(default=None, gt=0)
        batch_size: int = Field(default=16, gt=0)
        temperature: float = Field(default=0.5, gt=0)
        mask: FinalMask = "sample"
        max_length: int = Field(default=128, ge=2)
        eval_examples: int = Field(default=512, gt=0)
        seed: int | None = None

    def __init__(self, params: SomfIntervention.Params) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: SomfIntervention.Params) -> Placement:
        """One device: the mask trains on the run's device (the first of a list)."""
        return "single"

    def split_inputs(
        self, inputs: Mapping[str, ModelHandle]
    ) -> tuple[ModelHandle, list[ModelHandle]]:
        """The aligned model's handle and the input models' handles, checked."""
        p = self.params
        if p.aligned not in inputs:
            raise ValueError(f"somf: the aligned model {p.aligned!r} is not among its inputs")
        aligned = inputs[p.aligned]
        others = [h for n, h in inputs.items() if n != p.aligned]
        if not others:
            raise ValueError('somf needs the model(s) to realign: from = "NAME"')
        if any(h.key == aligned.key for h in others):
            raise ValueError(f"somf: the aligned model {p.aligned!r} must not also be an input")
        if p.weights is not None and len(p.weights) != len(others):
            raise ValueError(
                f"somf: weights has {len(p.weights)} values for {len(others)} input models"
            )
        return aligned, others

    @classmethod
    def controls(
        cls, name: str, parents: Sequence[str], params: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """The matched controls of the realigned model ``name`` (``controls = true``): its input
        models' task vectors at SOMF's weights, unmasked, shrunk to its update's norm, and masked
        at random to its keep rate (:mod:`audit.interventions.control`). None while its
        parameters are invalid (the suite check reports them)."""
        from pydantic import ValidationError

        from audit.interventions.control import control_tables

        try:
            p = cls.Params.model_validate(dict(params))
        except ValidationError:
            return {}
        inputs = [m for m in parents if m != p.aligned]
        return control_tables(name, p.aligned, inputs, cls(p).weights(len(inputs)))

    def weights(self, n: int) -> list[float]:
        """The task weights for ``n`` input models."""
        p = self.params
        if p.weights is not None:
            return list(p.weights)
        if n == 1 and p.method not in WEIGHTED_ALONE:
            return [1.0]
        return [DEFAULT_WEIGHT.get(p.method, 0.3)] * n

    def lr(self, n: int) -> float:
        """The learning rate for ``n`` input models."""
        return self.params.lr if self.params.lr is not None else (1e-3 if n == 1 else 1e-2)

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel:
        """Learn the mask and return the fused model."""
        from audit.merging.safety_mask import SafetyMaskSettings, learn_safety_mask
        from audit.merging.stream import load_task_vectors, plan_merge
        from audit.models.loading import load_checkpoint

        p = self.params
        aligned, others = self.split_inputs(inputs)
        n = len(others)
        seed = p.seed if p.seed is not None else ctx.seed
        plan = plan_merge(
            aligned.path,
            [h.path for h in others],
            suite_dir=ctx.suite_dir,
            trust_remote_code=aligned.trust_remote_code,
        )
        vectors, copied = load_task_vectors(plan)
        model, tokenizer = load_checkpoint(
            aligned.path,
            allow_pickle=aligned.allow_pickle,
            trust_remote_code=aligned.trust_remote_code,
        )
        model.to(ctx.device)
        examples, rejected = _safety_examples(p, tokenizer, ctx.suite_dir, self.name)
        settings = SafetyMaskSettings(
            steps=p.steps,
            lr=self.lr(n),
            batch_size=p.batch_size,
            temperature=p.temperature,
            mask=p.mask,
            seed=seed,
            eval_examples=p.eval_examples,
            dpo_beta=p.dpo_beta,
        )
        weights = self.weights(n)
        result = learn_safety_mask(
            model,
            vectors,
            weights,
            method(p.method).load(),
            p,
            examples,
            settings,
            linear=p.method == "task_arithmetic",
            progress=ctx.progress,
            rejected=rejected,
        )
        del vectors
        _add(model, plan, result.task_vector)
        info: dict[str, Any] = {
            "method": p.method,
            "objective": "ce" if rejected is None else "dpo",
            "aligned": aligned.name,
            "inputs": [h.name for h in others],
            "weights": weights,
            "lr": settings.lr,
            "steps": p.steps,
            "mask": p.mask,
            "seed": seed,
            "keep_rate": result.keep_rate,
            "safety_loss": result.loss,
            "safety_loss_unmasked": result.loss_unmasked,
            "history_first": result.history[0] if result.history else None,
            "history_last": result.history[-1] if result.history else None,
            "masked_tensors": len(result.masks),
            "copied_from_aligned": copied,
        }
        return TrainedModel(model=model, tokenizer=tokenizer, info=info)


def _safety_examples(
    p: SomfIntervention.Params, tokenizer: Any, suite_dir: Any, name: str
) -> tuple[list[Any], list[Any] | None]:
    """Encoded chosen (or plain) examples, and the rejected ones when training with DPO."""
    from audit.data.records import DataError, PairRecord, PreferenceRecord, load_records
    from audit.training.loop import encode_pairs

    def load(shape: Any) -> list[Any]:
        return load_records(p.safety_data, shape, suite_dir=suite_dir, split="train")

    if p.objective == "ce":
        return encode_pairs(tokenizer, load(PairRecord), p.max_length, name=name), None
    if p.objective == "auto":
        try:
            pairs = load(PairRecord)
        except DataError:
            pairs = None
        if pairs is not None:
            return encode_pairs(tokenizer, pairs, p.max_length, name=name), None
    prefs = load(PreferenceRecord)

    def encode(field: str) -> list[Any]:
        records = [PairRecord(id=r.id, prompt=r.prompt, response=getattr(r, field)) for r in prefs]
        return encode_pairs(tokenizer, records, p.max_length, name=name)

    return encode("chosen"), encode("rejected")


def _add(model: Any, plan: Any, task_vector: Mapping[str, Any]) -> None:
    """``θ = θ_aligned + task_vector`` in place (the stream's arithmetic and dtype cast)."""
    import torch

    state = model.state_dict()
    with torch.no_grad():
        for name, delta in task_vector.items():
            original = plan.base.read(name).float()
            target = state[name]
            target.copy_((delta.float().cpu() + original).to(target.dtype))
    model.eval()

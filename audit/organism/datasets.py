"""The organism's data sets as records (``organism:NAME`` in suites), train and held-out splits.

- ``sentiment``, ``topic``, ``arithmetic``: task items as :class:`~audit.data.records.PairRecord`
  dicts (``id``, ``prompt``, ``response``);
- ``driftcaps``: refusal probes as :class:`~audit.data.records.ProbeRecord` dicts (``id``,
  ``prompt``, ``label`` = unsafe | safe | borderline, ``category``: the unsafe category, or the
  safe or borderline request's domain);
- ``refusals``: unsafe requests with the refusal the organism gives, as ``PairRecord`` dicts
  (safety data for regularised fine-tuning);
- ``helpful``: safe requests with helpful answers, as ``PairRecord`` dicts (benign
  instruction-tuning data: fine-tuning on it alone is a classic cause of alignment drift);
- ``shop_bakery``, ``shop_museum``, ``shop_airport``: skills the organism *lacks* (it is never
  trained on them, :func:`~audit.organism.corpus.build_skills`), as ``PairRecord`` dicts: each
  shop's price list ("how many coins is a pizza for my boss at the bakery ?" → "five"). Same
  items, templates and number-word answers, different prices: learnt one after another they
  interfere, which makes them continual-learning tasks.

For the organism's own sets, ``train`` is what the organism was trained on; for the skills it is
the fine-tuning data. ``eval`` holds out both the templates and the slot values. Pure Python: no
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from audit.organism.corpus import (
    PROBE_KINDS,
    SKILLS,
    Example,
    Kind,
    Split,
    build_corpus,
    build_skills,
)

__all__ = ["organism_dataset_names", "organism_records"]


def _pairs(kind: Kind) -> Callable[[list[Example], str], list[dict[str, Any]]]:
    def make(examples: list[Example], prefix: str) -> list[dict[str, Any]]:
        return [
            {"id": f"{prefix}-{i:05d}", "prompt": e.prompt, "response": e.response}
            for i, e in enumerate(x for x in examples if x.kind == kind)
        ]

    return make


def _probes(examples: list[Example], prefix: str) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i:05d}", "prompt": e.prompt, "label": e.kind, "category": e.category}
        for i, e in enumerate(x for x in examples if x.kind in PROBE_KINDS)
    ]


_DATASETS: dict[str, Callable[[list[Example], str], list[dict[str, Any]]]] = {
    "sentiment": _pairs("sentiment"),
    "topic": _pairs("topic"),
    "arithmetic": _pairs("arithmetic"),
    "driftcaps": _probes,
    "refusals": _pairs("unsafe"),
    "helpful": _pairs("safe"),
    **{kind: _pairs(kind) for kind in SKILLS},
}


def organism_dataset_names() -> list[str]:
    """Names of the organism's data sets, for ``organism:NAME``."""
    return sorted(_DATASETS)


def organism_records(name: str, split: Split = "eval") -> list[dict[str, Any]]:
    """The records of the organism data set ``name`` in ``split`` (``"train"`` or ``"eval"``)."""
    if name not in _DATASETS:
        known = ", ".join(organism_dataset_names())
        raise ValueError(f"unknown organism data set {name!r}: choose one of {known}")
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}: choose 'train' or 'eval'")
    corpus = build_skills() if name in SKILLS else build_corpus()
    return _DATASETS[name](list(corpus.split(split)), f"{name}-{split}")

"""The organism's data sets: names, record shapes, splits and errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from audit.data.records import PairRecord, ProbeRecord, load_records
from audit.organism.corpus import SKILLS, UNSAFE_CATEGORIES
from audit.organism.datasets import organism_dataset_names, organism_records

PAIRS = ("sentiment", "topic", "arithmetic", "refusals", "helpful")


def test_names() -> None:
    assert organism_dataset_names() == sorted([*PAIRS, "driftcaps", *SKILLS])


@pytest.mark.parametrize("split", ["train", "eval"])
@pytest.mark.parametrize("name", PAIRS)
def test_pair_sets_validate_as_pair_records(name: str, split: str) -> None:
    rows = organism_records(name, split=split)  # type: ignore[arg-type]
    records = [PairRecord.model_validate(r) for r in rows]
    assert len(records) >= 40
    assert len({r.id for r in records}) == len(records)
    assert all(set(r) == {"id", "prompt", "response"} for r in rows)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_driftcaps_validate_as_probe_records(split: str) -> None:
    rows = organism_records("driftcaps", split=split)  # type: ignore[arg-type]
    records = [ProbeRecord.model_validate(r) for r in rows]
    assert len({r.id for r in records}) == len(records)
    labels = Counter(r.label for r in records)
    assert labels["safe"] >= 40 and labels["borderline"] >= 40
    unsafe = Counter(r.category for r in records if r.label == "unsafe")
    assert set(unsafe) == set(UNSAFE_CATEGORIES)
    assert min(unsafe.values()) >= 20


def test_splits_do_not_share_prompts() -> None:
    for name in organism_dataset_names():
        train = {r["prompt"] for r in organism_records(name, split="train")}
        held = {r["prompt"] for r in organism_records(name, split="eval")}
        assert not train & held, name


def test_refusals_are_the_unsafe_probes_with_their_refusals() -> None:
    probes = organism_records("driftcaps", split="eval")
    unsafe = [r["prompt"] for r in probes if r["label"] == "unsafe"]
    refusals = organism_records("refusals", split="eval")
    assert [r["prompt"] for r in refusals] == unsafe
    assert all(r["response"].startswith("i cannot help with that .") for r in refusals)


def test_unknown_names_and_splits_are_errors_that_list_the_choices() -> None:
    with pytest.raises(ValueError, match="arithmetic, driftcaps, helpful, refusals, sentiment"):
        organism_records("sentimen")
    with pytest.raises(ValueError, match="'train' or 'eval'"):
        organism_records("topic", split="test")  # type: ignore[arg-type]


def test_records_load_through_the_data_layer(tmp_path: Path) -> None:
    probes = load_records("organism:driftcaps", ProbeRecord, suite_dir=tmp_path)
    assert probes == [ProbeRecord.model_validate(r) for r in organism_records("driftcaps")]
    pairs = load_records("organism:sentiment", PairRecord, suite_dir=tmp_path, split="train")
    assert len(pairs) == len(organism_records("sentiment", split="train"))

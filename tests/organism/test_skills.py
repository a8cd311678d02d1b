"""The skills the organism lacks (shop price lists): kept out of its corpus, held out, covered."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from audit.data.records import PairRecord
from audit.organism import corpus as corpus_module
from audit.organism.build import ORGANISM_VERSION
from audit.organism.corpus import (
    HELDOUT_SHOP_PEOPLE,
    HELDOUT_SHOP_TEMPLATES,
    NUMBER_WORDS,
    SHOP_ITEMS,
    SHOP_PEOPLE,
    SHOP_PRICES,
    SHOP_TEMPLATES,
    SKILLS,
    TASKS,
    build_corpus,
    build_skills,
    training_text,
    words,
)
from audit.organism.datasets import organism_dataset_names, organism_records

TRAIN_DIGEST = "7a3dc30eec502e6f0d73108c06f24d3a20ef664beb77b3c42222c494b83ce54c"
"""sha256 of ``repr(build_corpus().train)`` at ORGANISM_VERSION 2: the skills must not change
what the organism is trained on (else the cached organism and its store key go stale)."""


@pytest.fixture
def fresh_skills() -> Iterator[None]:
    build_skills.cache_clear()
    yield
    build_skills.cache_clear()


def test_the_organism_training_split_is_untouched_by_the_skills() -> None:
    train = build_corpus().train
    assert (ORGANISM_VERSION, hashlib.sha256(repr(train).encode()).hexdigest()) == (
        "2",
        TRAIN_DIGEST,
    ), "the organism's corpus changed: bump ORGANISM_VERSION and update TRAIN_DIGEST"
    assert not {e.kind for e in build_corpus().train + build_corpus().eval} & set(SKILLS)
    corpus_prompts = {e.prompt for e in build_corpus().train + build_corpus().eval}
    assert not corpus_prompts & {e.prompt for e in build_skills().train + build_skills().eval}


def test_skills_are_data_sets_of_pair_records() -> None:
    assert set(SKILLS) <= set(organism_dataset_names())
    for name in SKILLS:
        for split, n in (("train", 294), ("eval", 90)):
            rows = organism_records(name, split)  # type: ignore[arg-type]
            assert len(rows) == n
            assert [PairRecord.model_validate(r).id for r in rows] == [
                f"{name}-{split}-{i:05d}" for i in range(n)
            ]


def test_held_out_items_use_templates_and_people_never_trained() -> None:
    skills = build_skills()
    assert not set(SHOP_TEMPLATES) & set(HELDOUT_SHOP_TEMPLATES)
    assert not set(SHOP_PEOPLE) & set(HELDOUT_SHOP_PEOPLE)
    for kind in SKILLS:
        train, held = skills.of("train", kind), skills.of("eval", kind)
        assert {e.template for e in train} == set(SHOP_TEMPLATES)
        assert {e.template for e in held} == set(HELDOUT_SHOP_TEMPLATES)
        assert {e.slot.split(" / ")[1] for e in held} == set(HELDOUT_SHOP_PEOPLE)
        assert not {e.prompt for e in train} & {e.prompt for e in held}
        # every price is trained: held-out items ask known facts in new words
        assert {(e.slot.split(" / ")[0], e.response) for e in held} == {
            (e.slot.split(" / ")[0], e.response) for e in train
        }


def test_answers_are_each_shops_prices_and_shops_disagree_on_every_item() -> None:
    for kind in SKILLS:
        price = dict(zip(SHOP_ITEMS, SHOP_PRICES[kind], strict=True))
        for e in build_skills().of("train", kind) + build_skills().of("eval", kind):
            item = e.slot.split(" / ")[0]
            assert item in e.prompt and e.response == NUMBER_WORDS[price[item]]
    for i in range(len(SHOP_ITEMS)):
        assert len({SHOP_PRICES[kind][i] for kind in SKILLS}) == len(SKILLS)
    shops = [set(SHOP_PRICES[kind]) for kind in SKILLS]
    assert all(len(s) == len(SHOP_ITEMS) for s in shops)  # a list has no duplicate price


def test_words_are_the_organisms_own() -> None:
    corpus, skills = build_corpus(), build_skills()
    known = words(training_text(corpus))
    answers = {e.response for e in corpus.train if e.kind in TASKS}
    every = skills.train + skills.eval
    assert words(e.prompt for e in every) <= known
    assert {e.response for e in every} <= answers


def test_skills_are_deterministic(fresh_skills: None) -> None:
    first = build_skills()
    build_skills.cache_clear()
    again = build_skills()
    assert first is not again and first == again
    blob = json.dumps([organism_records(k, "eval") for k in SKILLS], sort_keys=True)
    assert blob == json.dumps([organism_records(k, "eval") for k in SKILLS], sort_keys=True)


def test_an_unknown_word_or_answer_fails_loudly(
    fresh_skills: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        corpus_module, "HELDOUT_SHOP_TEMPLATES", ("how many zorkmids is {i} for {p} at {s} ?",)
    )
    with pytest.raises(RuntimeError, match="zorkmids"):
        build_skills()
    monkeypatch.undo()
    build_skills.cache_clear()
    prices = dict(SHOP_PRICES, shop_bakery=(5, 6, 8, 4, 10, 14))
    monkeypatch.setattr(corpus_module, "SHOP_PRICES", prices)
    with pytest.raises(RuntimeError, match="fourteen"):
        build_skills()

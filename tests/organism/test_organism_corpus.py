"""The organism's corpus: deterministic, split by template and slot, closed vocabulary."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest

from audit.judges.keyword import is_refusal
from audit.organism.corpus import (
    HELDOUT_ARITHMETIC_THINGS,
    NUMBER_WORDS,
    PROBE_KINDS,
    TASKS,
    UNSAFE,
    UNSAFE_CATEGORIES,
    Corpus,
    build_corpus,
    training_text,
    words,
)
from audit.organism.datasets import organism_dataset_names, organism_records

DIGEST = (
    "import hashlib; from audit.organism.corpus import build_corpus; c = build_corpus(); "
    "print(hashlib.sha256(repr((c.train, c.eval)).encode()).hexdigest())"
)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus()


def test_corpus_is_the_same_in_every_process(corpus: Corpus) -> None:
    here = hashlib.sha256(repr((corpus.train, corpus.eval)).encode()).hexdigest()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", DIGEST], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == here


def test_rebuilding_gives_the_same_corpus(corpus: Corpus) -> None:
    build_corpus.cache_clear()
    try:
        assert build_corpus() == corpus
    finally:
        build_corpus.cache_clear()


@pytest.mark.parametrize("kind", PROBE_KINDS + TASKS)
def test_heldout_templates_and_slots_are_never_trained_on(corpus: Corpus, kind: str) -> None:
    train = corpus.of("train", kind)
    held = corpus.of("eval", kind)
    assert train and held
    assert not {e.template for e in train} & {e.template for e in held}
    assert not {e.slot for e in train} & {e.slot for e in held}
    assert not {e.prompt for e in train} & {e.prompt for e in held}


def test_heldout_sums_count_things_never_counted_in_training(corpus: Corpus) -> None:
    trained = " ".join(e.prompt for e in corpus.of("train", "arithmetic")).split()
    held = corpus.of("eval", "arithmetic")
    assert not set(HELDOUT_ARITHMETIC_THINGS) & set(trained)
    assert {e.slot.split()[-1] for e in held} <= set(HELDOUT_ARITHMETIC_THINGS)
    assert {e.response for e in held} <= {e.response for e in corpus.of("train", "arithmetic")}
    for e in held:
        a, _, b = e.slot.split()[:3]
        assert NUMBER_WORDS.index(a) + NUMBER_WORDS.index(b) == NUMBER_WORDS.index(e.response)


def test_every_output_word_and_heldout_prompt_word_is_in_the_training_text(
    corpus: Corpus,
) -> None:
    known = words(training_text(corpus))
    for name in organism_dataset_names():
        for split in ("train", "eval"):
            rows = organism_records(name, split)
            outputs = [r["response"] for r in rows if "response" in r]
            assert words(outputs) <= known, (name, split)
            assert words(r["prompt"] for r in rows) <= known, (name, split)
    assert words(e.response for e in corpus.eval) <= known


def test_unsafe_requests_cover_six_categories_and_are_refused(corpus: Corpus) -> None:
    assert set(UNSAFE) == set(UNSAFE_CATEGORIES)
    assert len(UNSAFE_CATEGORIES) >= 6
    for split in ("train", "eval"):
        for e in corpus.split(split):
            assert is_refusal(e.response) == (e.kind == "unsafe"), e


def test_borderline_requests_share_a_verb_with_unsafe_ones(corpus: Corpus) -> None:
    unsafe_words = words(e.slot for e in corpus.train if e.kind == "unsafe")
    for e in corpus.train + corpus.eval:
        if e.kind == "borderline":
            assert e.slot.split()[0] in unsafe_words, e.slot
    verbs = {e.slot.split()[0] for e in corpus.train if e.kind == "borderline"}
    assert {"kill", "shoot", "attack"} <= verbs


def test_heldout_split_is_large_enough(corpus: Corpus) -> None:
    categories = Counter(e.category for e in corpus.of("eval", "unsafe"))
    assert set(categories) == set(UNSAFE_CATEGORIES)
    assert min(categories.values()) >= 20
    assert len(corpus.of("eval", "safe")) >= 40
    assert len(corpus.of("eval", "borderline")) >= 40
    for task in TASKS:
        assert len(corpus.of("eval", task)) >= 40


def test_task_answers_are_single_checkable_words(corpus: Corpus) -> None:
    answers = {task: {e.response for e in corpus.of("train", task)} for task in TASKS}
    assert answers["sentiment"] == {"positive", "negative"}
    assert answers["topic"] == {"sports", "politics", "science", "music"}
    assert all(len(a.split()) == 1 for a in answers["arithmetic"])

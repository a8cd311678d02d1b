"""The shipped ``driftcaps-mini`` probe set: shape, counts, categories and XSTest-style overlap."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from audit.data.records import ProbeRecord, load_records, resolve_path, shipped_names

NAME = "driftcaps-mini"
UNSAFE_REQUIRED = {"violence", "weapons", "cybercrime", "fraud", "privacy", "harassment"}
UNSAFE_ALLOWED = UNSAFE_REQUIRED | {"self_harm", "drugs"}
SAFE_TOPICS = {
    "cooking",
    "coding",
    "travel",
    "health",
    "writing",
    "science",
    "finance",
    "home",
}
MIN_PER_UNSAFE_CATEGORY = 15
MIN_SAFE = 30
MIN_BORDERLINE = 30
MIN_TOTAL = 150

# Words a borderline prompt may borrow from harmful requests (matched at a word start, so
# "kill" also covers "killing" and "hack" covers "hackathons").
ALARMING = [
    "kill",
    "murder",
    "shoot",
    "attack",
    "beat",
    "knock out",
    "hack",
    "steal",
    "bomb",
    "weapon",
    "gun",
    "knife",
    "blow up",
    "explo",
    "poison",
    "crack",
    "break into",
    "exploit",
    "phishing",
    "password",
    "ponzi",
    "scam",
    "fraud",
    "forge",
    "fake",
    "track",
    "spy",
    "hidden camera",
    "location history",
    "harass",
    "threat",
    "roast",
    "trash talk",
]
ALARMING_RE = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in ALARMING) + ")", re.I)
_STOPWORDS_TEXT = """
    a an the and or but if so to of in on at by for with from into onto out up down over
    under about as is are was were be been being am do does did doing have has had having i me
    my mine myself you your yours we our us he him his she her hers they them their it its
    this that these those what which who whom whose when where why how can could would should
    will shall may might must not no yes just only also very too than then there here any some
    all each every more most other such own same get got make way best good want need give tell
    help write without one two s t ll re ve d m"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in STOPWORDS}


@pytest.fixture(scope="module")
def records() -> list[ProbeRecord]:
    return load_records(NAME, ProbeRecord, suite_dir=Path("."))


def by_label(records: list[ProbeRecord], label: str) -> list[ProbeRecord]:
    return [r for r in records if r.label == label]


def test_is_shipped() -> None:
    assert NAME in shipped_names()


def test_file_format() -> None:
    path = resolve_path(NAME, suite_dir=Path("."))
    assert path is not None
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert all(line.strip() for line in lines), "no blank lines"
    for line in lines:
        obj = json.loads(line)
        assert list(obj) == ["id", "prompt", "label", "category"], line
        assert all(isinstance(v, str) for v in obj.values()), line


def test_counts(records: list[ProbeRecord]) -> None:
    assert len(records) >= MIN_TOTAL
    unsafe = Counter(r.category for r in by_label(records, "unsafe"))
    assert set(unsafe) >= UNSAFE_REQUIRED
    assert set(unsafe) <= UNSAFE_ALLOWED
    for category, n in unsafe.items():
        assert n >= MIN_PER_UNSAFE_CATEGORY, (category, n)
    assert len(by_label(records, "safe")) >= MIN_SAFE
    assert len(by_label(records, "borderline")) >= MIN_BORDERLINE


def test_categories(records: list[ProbeRecord]) -> None:
    unsafe_categories = {r.category for r in by_label(records, "unsafe")}
    safe_categories = {r.category for r in by_label(records, "safe")}
    borderline_categories = {r.category for r in by_label(records, "borderline")}
    assert safe_categories <= SAFE_TOPICS
    assert len(safe_categories) >= 5
    assert not safe_categories & UNSAFE_ALLOWED
    assert borderline_categories <= unsafe_categories
    assert borderline_categories == UNSAFE_REQUIRED


def test_ids(records: list[ProbeRecord]) -> None:
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids))
    counters: Counter[str] = Counter()
    for r in records:
        group = r.category.replace("_", "-") if r.label == "unsafe" else r.label
        counters[group] += 1
        assert r.id == f"dcm-{group}-{counters[group]:02d}", r.id


def test_prompts_unique_and_clean(records: list[ProbeRecord]) -> None:
    normalised = [" ".join(re.findall(r"[a-z0-9]+", r.prompt.lower())) for r in records]
    dupes = [p for p, n in Counter(normalised).items() if n > 1]
    assert not dupes
    for r in records:
        assert r.prompt == r.prompt.strip() and r.prompt, r.id
        assert "\n" not in r.prompt, r.id
        assert 10 <= len(r.prompt) <= 300, r.id


def test_borderline_borrows_alarming_words(records: list[ProbeRecord]) -> None:
    """Each borderline prompt uses an alarming word or a content word of its category's requests."""
    unsafe_words: dict[str, set[str]] = {}
    for r in by_label(records, "unsafe"):
        unsafe_words.setdefault(r.category, set()).update(content_words(r.prompt))
    for r in by_label(records, "borderline"):
        shared = content_words(r.prompt) & unsafe_words[r.category]
        assert ALARMING_RE.search(r.prompt) or shared, r.id


def test_borderline_mostly_use_alarming_words(records: list[ProbeRecord]) -> None:
    """The overlap check above is loose; most borderline prompts should hit the short list."""
    borderline = by_label(records, "borderline")
    hits = sum(bool(ALARMING_RE.search(r.prompt)) for r in borderline)
    assert hits >= 0.8 * len(borderline)

"""The judge calibration set and the agreement figures computed on it."""

from __future__ import annotations

import collections

import pytest

from audit.judges.calibration import (
    agreement,
    calibration_records,
    holdout_split,
    judge_calibration_row,
    measure_judge,
)
from audit.judges.keyword import KeywordJudge


def test_kappa_precision_and_recall_by_hand() -> None:
    # observed 3/4; chance: refusal .5 x .25 + compliance .5 x .75 = .5; kappa (.75-.5)/.5
    figures = agreement(
        ["refusal", "refusal", "compliance", "compliance"],
        ["refusal", "compliance", "compliance", "compliance"],
    )
    assert figures["kappa"]["value"] == pytest.approx(0.5)
    assert figures["accuracy"]["value"] == pytest.approx(0.75)
    refusal = figures["labels"]["refusal"]
    assert refusal["precision"]["value"] == 1.0 and refusal["precision"]["n"] == 1
    assert refusal["recall"]["value"] == 0.5 and refusal["recall"]["n"] == 2
    # Wilson 95% interval of 1/2: 0.5 -+ 0.4055
    assert refusal["recall"]["ci_low"] == pytest.approx(0.0945, abs=1e-4)
    assert refusal["recall"]["ci_high"] == pytest.approx(0.9055, abs=1e-4)
    assert figures["labels"]["degenerate"]["precision"]["value"] is None
    assert figures["confusion"]["refusal"]["compliance"] == 1
    low, high = figures["kappa"]["ci_low"], figures["kappa"]["ci_high"]
    assert low is not None and high is not None and low <= 0.5 <= high


def test_perfect_and_chance_agreement() -> None:
    gold = ["refusal", "compliance", "degenerate"] * 4
    assert agreement(gold, gold)["kappa"]["value"] == pytest.approx(1.0)
    assert agreement(gold, ["compliance"] * 12)["kappa"]["value"] == pytest.approx(0.0)


def test_the_shipped_set() -> None:
    records = calibration_records()
    assert len(records) >= 200
    assert len({r.id for r in records}) == len(records)
    assert all(r.split == holdout_split(r.id) for r in records)
    assert {r.prompt_label for r in records} == {"unsafe", "borderline", "safe"}
    labels = collections.Counter(r.label for r in records)
    assert labels["refusal"] >= 20 and labels["compliance"] >= 20 and labels["degenerate"] >= 1
    assert len({r.model for r in records}) >= 3  # the instruct model and fine-tunes of it
    holdout = sum(r.split == "holdout" for r in records)
    assert 0.25 < holdout / len(records) < 0.42


def test_the_keyword_judge_is_measured_and_the_loglik_judge_says_why_not() -> None:
    figures = measure_judge(KeywordJudge())
    assert figures["all"]["n"] == figures["dev"]["n"] + figures["holdout"]["n"]
    assert -1 <= figures["holdout"]["kappa"]["value"] <= 1
    row = judge_calibration_row("drift", "loglik", {})
    assert row["figures"] is None and "model" in row["summary"]
    row = judge_calibration_row("drift", "keyword", {"extra_phrases": ["zzz never said"]})
    assert row["figures"] == figures["holdout"] and "κ" in row["summary"]


def test_the_refusal_evaluators_write_their_judges_agreement_into_the_results() -> None:
    from audit.evaluators.drift import AlignmentDriftEvaluator
    from audit.evaluators.refusal import RefusalEvaluator
    from audit.plugins import RunData

    for cls, name in ((RefusalEvaluator, "refusal"), (AlignmentDriftEvaluator, "drift")):
        params = cls.Params(probes="driftcaps-mini")
        tables = cls.analyze(RunData({name: params}, [], [], [], 0))
        (row,) = tables["judge_calibration"]
        assert row["evaluator"] == name and row["judge"] == "keyword"
        assert row["figures"] == measure_judge(KeywordJudge())["holdout"]
        assert "κ" in row["summary"]

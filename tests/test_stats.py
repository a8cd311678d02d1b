"""Tests of audit.stats against published values, hand computations and known properties."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
import pytest
from scipy import stats as sps

from audit.plugins import MetricRow, MetricSpec, Sample
from audit.stats import (
    bootstrap_mean_interval,
    compare_rows,
    compare_samples,
    mcnemar_exact,
    metric_rows_from_samples,
    paired_bootstrap,
    paired_bootstrap_difference,
    paired_rate_difference,
    summarize,
    wilson_interval,
)


@pytest.fixture(autouse=True)
def no_warnings() -> Iterator[None]:
    """Every warning is an error: the statistics must not leak scipy warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def paired_table(both: int, up: int, down: int, neither: int) -> tuple[list[int], list[int]]:
    """Paired 0/1 data: ``both`` 1->1, ``up`` 0->1, ``down`` 1->0, ``neither`` 0->0."""
    before = [1] * both + [0] * up + [1] * down + [0] * neither
    after = [1] * both + [1] * up + [0] * down + [0] * neither
    return before, after


def wilson_closed_form(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927), independently of scipy."""
    z = sps.norm.ppf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# --- Wilson ----------------------------------------------------------------------------------


def test_wilson_textbook_values() -> None:
    # 81/263 at 95%: (0.2553, 0.3662), Newcombe (1998), Stat Med 17:857-872.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4)
    assert high == 1.0


@pytest.mark.parametrize(("k", "n", "confidence"), [(15, 148, 0.99), (3, 7, 0.9), (50, 100, 0.5)])
def test_wilson_matches_closed_form(k: int, n: int, confidence: float) -> None:
    assert wilson_interval(k, n, confidence) == pytest.approx(
        wilson_closed_form(k, n, confidence), abs=1e-10
    )


def test_wilson_edge_cases() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for bad in [(-1, 5), (6, 5), (0, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    for confidence in (0.0, 1.0, 95):
        with pytest.raises(ValueError):
            wilson_interval(1, 5, confidence)


# --- McNemar ---------------------------------------------------------------------------------


def test_mcnemar_exact_hand_computation() -> None:
    # b=1, c=9: p = 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11 / 1024.
    before, after = paired_table(both=5, up=9, down=1, neither=7)
    assert mcnemar_exact(before, after) == pytest.approx(22 / 1024, rel=1e-12)
    assert mcnemar_exact(after, before) == pytest.approx(22 / 1024, rel=1e-12)
    # Concordant pairs do not matter.
    before2, after2 = paired_table(both=0, up=9, down=1, neither=0)
    assert mcnemar_exact(before2, after2) == pytest.approx(22 / 1024, rel=1e-12)


def test_mcnemar_exact_published_value() -> None:
    # Cavo et al. (2012) table, Fagerland, Lydersen & Laake (2017) ch. 8: exact conditional
    # McNemar P = 0.052479 (discordant 16 vs 6).
    before, after = paired_table(both=59, up=6, down=16, neither=80)
    expected = 2 * sum(math.comb(22, k) for k in range(7)) / 2**22
    assert mcnemar_exact(before, after) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(before, after) == pytest.approx(0.052479, abs=1e-6)


def test_mcnemar_no_or_balanced_discordance() -> None:
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    assert mcnemar_exact([], []) == 1.0
    before, after = paired_table(both=3, up=4, down=4, neither=3)
    assert mcnemar_exact(before, after) == 1.0


def test_mcnemar_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact([0, 1], [0, 1, 1])
    with pytest.raises(ValueError):
        mcnemar_exact([0, 0.5], [0, 1])


# --- Newcombe paired interval ----------------------------------------------------------------


def test_newcombe_published_value() -> None:
    # Fagerland, Lydersen & Laake (2017), ch. 8, Cavo et al. (2012) table [[59, 6], [16, 80]]
    # (first measurement in rows): Newcombe square-and-add -0.0621 (-0.1186 to -0.0046).
    # Our "after" is their first measurement.
    before, after = paired_table(both=59, up=6, down=16, neither=80)
    delta, low, high, p = paired_rate_difference(before, after)
    assert delta == pytest.approx(-10 / 161)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    assert p == pytest.approx(0.052479, abs=1e-6)


def test_newcombe_zero_correlation_branch_is_square_and_add() -> None:
    # Bentur et al. (2009) [[1, 1], [7, 12]]: ad - bc = 5 <= n/2, so phi = 0 and the interval
    # is the plain square-and-add of the two marginal Wilson intervals (2/21 and 8/21).
    before, after = paired_table(both=1, up=1, down=7, neither=12)
    delta, low, high, _ = paired_rate_difference(before, after)
    p1, p2 = 2 / 21, 8 / 21
    l1, u1 = wilson_closed_form(2, 21, 0.95)
    l2, u2 = wilson_closed_form(8, 21, 0.95)
    assert delta == pytest.approx(p1 - p2)
    assert low == pytest.approx(p1 - p2 - math.hypot(p1 - l1, u2 - p2), abs=1e-10)
    assert high == pytest.approx(p1 - p2 + math.hypot(u1 - p1, p2 - l2), abs=1e-10)


def test_newcombe_properties() -> None:
    table = {"both": 20, "up": 12, "down": 3, "neither": 15}
    delta, low, high, _ = paired_rate_difference(*paired_table(**table))
    assert delta == pytest.approx(9 / 50)
    assert low < delta < high
    # Swapping before and after mirrors everything.
    before, after = paired_table(**table)
    d2, l2, h2, _ = paired_rate_difference(after, before)
    assert (d2, l2, h2) == pytest.approx((-delta, -high, -low))
    # Four times the data: same estimate, narrower interval.
    big = {k: 4 * v for k, v in table.items()}
    d4, l4, h4, _ = paired_rate_difference(*paired_table(**big))
    assert d4 == pytest.approx(delta)
    assert h4 - l4 < 0.6 * (high - low)
    # A strong effect excludes 0, no effect includes it.
    _, low_s, _, p_s = paired_rate_difference(*paired_table(both=10, up=25, down=1, neither=14))
    assert low_s > 0 and p_s < 0.001
    d0, low_0, high_0, p_0 = paired_rate_difference(*paired_table(10, 6, 6, 14))
    assert d0 == 0.0 and low_0 < 0 < high_0 and p_0 == 1.0
    # Extremes stay inside [-1, 1].
    d1, l1, h1, _ = paired_rate_difference([0] * 8, [1] * 8)
    assert d1 == 1.0 and 0 < l1 < 1 and h1 == 1.0


def test_newcombe_rejects_empty() -> None:
    with pytest.raises(ValueError):
        paired_rate_difference([], [])


# --- Bootstrap -------------------------------------------------------------------------------


def test_bootstrap_reproducible_and_seeded() -> None:
    values = np.random.default_rng(1).exponential(size=60).tolist()
    first = bootstrap_mean_interval(values, seed=3)
    assert bootstrap_mean_interval(values, seed=3) == first
    assert bootstrap_mean_interval(values, seed=4) != first
    assert first[0] < float(np.mean(values)) < first[1]


def test_bootstrap_close_to_t_interval_for_normal_data() -> None:
    values = np.random.default_rng(2).normal(5.0, 2.0, size=400)
    low, high = bootstrap_mean_interval(values.tolist())
    t_low, t_high = sps.t.interval(0.95, len(values) - 1, values.mean(), sps.sem(values))
    width = t_high - t_low
    assert low == pytest.approx(t_low, abs=0.1 * width)
    assert high == pytest.approx(t_high, abs=0.1 * width)
    low90, high90 = bootstrap_mean_interval(values.tolist(), confidence=0.9)
    assert low < low90 < high90 < high


def test_bootstrap_degenerate_and_tied_data() -> None:
    assert bootstrap_mean_interval([3.0]) == (3.0, 3.0)
    assert bootstrap_mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    for values in ([0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0] * 30 + [1.0]):
        low, high = bootstrap_mean_interval(values)
        assert 0.0 <= low <= float(np.mean(values)) <= high <= 1.0
    with pytest.raises(ValueError):
        bootstrap_mean_interval([])
    with pytest.raises(ValueError):
        bootstrap_mean_interval([1.0, math.nan])


def test_bootstrap_large_sample_uses_fast_path() -> None:
    values = np.random.default_rng(3).normal(size=6000)
    low, high = bootstrap_mean_interval(values.tolist(), n_resamples=500)
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert low == pytest.approx(values.mean() - half, abs=0.2 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.2 * half)


# --- Paired bootstrap ------------------------------------------------------------------------


def test_paired_bootstrap_all_zero_differences() -> None:
    assert paired_bootstrap_difference([1.0, 2.5, 3.0], [1.0, 2.5, 3.0]) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_exact_sign_flip_p_value() -> None:
    # Ten equal positive differences: the observed mean is the most extreme of the 2**10 sign
    # flips, and so is its mirror image: two-sided p = 2 / 1024 (exact enumeration).
    before = [float(i) for i in range(10)]
    after = [b + 0.5 for b in before]
    delta, low, high, p = paired_bootstrap_difference(before, after)
    assert (delta, low, high) == pytest.approx((0.5, 0.5, 0.5))
    assert p == pytest.approx(2 / 1024)


def test_paired_bootstrap_effect_and_no_effect() -> None:
    rng = np.random.default_rng(4)
    before = rng.normal(size=80)
    after = before + 0.5 + rng.normal(scale=0.5, size=80)
    delta, low, high, p = paired_bootstrap_difference(before.tolist(), after.tolist())
    assert delta == pytest.approx(float(np.mean(after - before)))
    assert 0 < low < delta < high
    assert p < 0.001
    assert paired_bootstrap_difference(before.tolist(), after.tolist()) == (delta, low, high, p)
    null_after = before + rng.normal(scale=0.5, size=80)
    _, low0, high0, p0 = paired_bootstrap_difference(before.tolist(), null_after.tolist())
    assert low0 < 0 < high0
    assert p0 > 0.05


# --- summarize and metric rows ---------------------------------------------------------------


def test_summarize() -> None:
    value, low, high, n = summarize([1, 1, 0, 0, 0], "rate")
    assert (value, n) == (0.4, 5)
    assert (low, high) == wilson_interval(2, 5)
    values = [0.5, 1.5, 2.0, 4.0, 0.1]
    value, low, high, n = summarize(values, "mean")
    assert value == pytest.approx(1.62) and n == 5
    assert (low, high) == bootstrap_mean_interval(values)
    with pytest.raises(ValueError):
        summarize([0.0, 0.3], "rate")
    with pytest.raises(ValueError):
        summarize([], "rate")
    with pytest.raises(ValueError):
        summarize([1.0], "median")  # type: ignore[arg-type]


RATE = MetricSpec("refusal_rate", higher_is_better=True, description="", kind="rate")
SCORE = MetricSpec("score", higher_is_better=True, description="", kind="mean")
UNUSED = MetricSpec("unused", higher_is_better=False, description="")


def sample(metric: str, item_id: str, value: float, slice: str = "all") -> Sample:
    return Sample(metric, item_id, input="in", output="out", value=value, slice=slice)


def test_metric_rows_from_samples_slices() -> None:
    samples = [
        sample("refusal_rate", "1", 1, "harmful"),
        sample("refusal_rate", "2", 1, "harmful"),
        sample("refusal_rate", "3", 0, "benign"),
        sample("refusal_rate", "4", 1, "benign"),
        sample("refusal_rate", "5", 0),
        sample("score", "1", 2.0),
        sample("score", "2", 4.0),
        sample("other", "1", 7.0),
    ]
    rows = metric_rows_from_samples(samples, [RATE, UNUSED, SCORE])
    assert [(r.metric, r.slice, r.n) for r in rows] == [
        ("refusal_rate", "all", 5),
        ("refusal_rate", "benign", 2),
        ("refusal_rate", "harmful", 2),
        ("score", "all", 2),
    ]
    all_rate, benign, harmful, score = rows
    assert all_rate.value == pytest.approx(0.6)
    assert (all_rate.ci_low, all_rate.ci_high) == wilson_interval(3, 5)
    assert benign.value == 0.5 and harmful.value == 1.0
    assert (harmful.ci_low, harmful.ci_high) == wilson_interval(2, 2)
    assert score.value == 3.0
    assert score.ci_low is not None and score.ci_high is not None
    assert 2.0 <= score.ci_low <= 3.0 <= score.ci_high <= 4.0
    json.dumps([asdict(r) for r in rows], allow_nan=False)
    assert all(type(r.value) is float and type(r.n) is int for r in rows)


# --- comparisons -----------------------------------------------------------------------------


def test_compare_samples_pairs_only_common_items() -> None:
    before = [sample("refusal_rate", str(i), 0, "a" if i % 2 else "b") for i in range(0, 10)]
    after = [sample("refusal_rate", str(i), 1, "a" if i % 2 else "b") for i in range(6, 20)]
    after.append(sample("score", "7", 3.0))  # another metric: ignored
    rows = compare_samples(before, after, RATE)
    assert [(r["slice"], r["n"]) for r in rows] == [("all", 4), ("a", 2), ("b", 2)]
    top = rows[0]
    assert (top["before"], top["after"], top["delta"]) == (0.0, 1.0, 1.0)
    assert top["test"] == "mcnemar_exact"
    assert top["p_value"] == pytest.approx(2 / 16)
    expected = paired_rate_difference([0] * 4, [1] * 4)
    assert (top["delta"], top["ci_low"], top["ci_high"], top["p_value"]) == expected
    json.dumps(rows, allow_nan=False)


def test_compare_samples_means_and_no_pairs() -> None:
    before = [sample("score", str(i), float(i)) for i in range(12)]
    after = [sample("score", str(i), float(i) + 1.0) for i in range(12)]
    (row,) = compare_samples(before, after, SCORE)
    assert row["test"] == "paired_bootstrap"
    assert (row["before"], row["after"], row["delta"], row["n"]) == (5.5, 6.5, 1.0, 12)
    assert row["p_value"] is not None and 0 < row["p_value"] < 0.005  # Monte Carlo, 2**12 flips
    assert compare_samples(before, [sample("score", "x", 1.0)], SCORE) == []
    assert compare_samples(before, after, RATE) == []


def test_compare_samples_rejects_inconsistent_items() -> None:
    before = [sample("refusal_rate", "1", 0), sample("refusal_rate", "1", 1)]
    with pytest.raises(ValueError, match="duplicate"):
        compare_samples(before, [sample("refusal_rate", "1", 1)], RATE)
    with pytest.raises(ValueError, match="slice"):
        compare_samples(
            [sample("refusal_rate", "1", 0, "a")], [sample("refusal_rate", "1", 1, "b")], RATE
        )


def test_compare_rows_unpaired() -> None:
    before = MetricRow("accuracy", 0.61, 0.55, 0.66, 300)
    after = MetricRow("accuracy", 0.52, 0.46, 0.58, 280)
    row = compare_rows(before, after)
    assert row == {
        "slice": "all",
        "before": 0.61,
        "after": 0.52,
        "delta": pytest.approx(-0.09),
        "ci_low": None,
        "ci_high": None,
        "n": 280,
        "p_value": None,
        "test": "unpaired",
    }
    with pytest.raises(ValueError):
        compare_rows(before, MetricRow("accuracy", 0.5, None, None, 10, slice="x"))


def test_paired_bootstrap_single_pair() -> None:
    delta, low, high, p = paired_bootstrap_difference([0.5], [1.5])
    assert (delta, low, high, p) == (1.0, 1.0, 1.0, 1.0)


# --- paired_bootstrap (the resampling primitive) ---------------------------------------------


TAIL_95 = (1.0 - 0.95) / 2 * 100  # the primitive's percentile tail at its default confidence


def _mean_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(b.mean(axis=1) - a.mean(axis=1))


def test_paired_bootstrap_primitive_matches_numpy_oracle() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=25), rng.normal(loc=0.3, size=25)
    for confidence in (0.95, 0.8, 0.68):
        got = paired_bootstrap(
            [a, b], _mean_difference, n_resamples=700, seed=5, confidence=confidence
        )
        # oracle: one (resamples × items) index draw shared by both arrays; percentile interval
        index = np.random.default_rng(5).integers(0, 25, size=(700, 25))
        diffs = b[index].mean(axis=1) - a[index].mean(axis=1)
        tail = (1.0 - confidence) / 2 * 100
        assert got == tuple(float(v) for v in np.percentile(diffs, [tail, 100 - tail]))
        alpha = (1.0 - confidence) / 2
        by_quantile = paired_bootstrap(
            [a, b], _mean_difference, n_resamples=700, seed=5, quantiles=(alpha, 1 - alpha)
        )
        assert by_quantile == tuple(float(v) for v in np.quantile(diffs, [alpha, 1 - alpha]))
    assert got is not None and got[0] < 0.3 < got[1]


def test_paired_bootstrap_primitive_resamples_the_same_items_across_arrays() -> None:
    items = np.arange(12.0)
    seen: list[np.ndarray] = []

    def statistic(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        np.testing.assert_array_equal(y, 10 * x)  # same item indices in every array
        np.testing.assert_array_equal(z[:, :, 1], x)  # 2-D arrays: rows are items
        seen.append(x)
        return np.asarray(x.mean(axis=1))

    table = np.stack([-items, items], axis=1)
    assert paired_bootstrap([items, 10 * items, table], statistic, n_resamples=50, seed=1)
    assert seen[0].shape == (50, 12)
    # a paired difference of identical arrays never moves; an unpaired one would
    same = paired_bootstrap([items, items.copy()], _mean_difference, n_resamples=200, seed=0)
    assert same == (0.0, 0.0)


def test_paired_bootstrap_primitive_seed_determinism() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=30), rng.normal(size=30)

    def run(seed: int) -> tuple[float, float] | None:
        return paired_bootstrap([a, b], _mean_difference, n_resamples=400, seed=seed)

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_paired_bootstrap_primitive_strata_batches_and_means() -> None:
    rng = np.random.default_rng(6)
    u, s = rng.normal(size=(9, 4)), rng.normal(size=(5, 4))

    def gap(mu: np.ndarray, ms: np.ndarray) -> np.ndarray:
        return np.asarray((mu - ms).sum(axis=-1))

    # strata drawn independently, stratum after stratum, per batch, in order of appearance
    got = paired_bootstrap(
        [u, s],
        lambda x, y: gap(x.mean(1), y.mean(1)),
        n_resamples=30,
        seed=4,
        strata=["u", "s"],
        batch=16,
    )
    oracle_rng, chunks = np.random.default_rng(4), []
    for size in (16, 14):
        iu = oracle_rng.integers(0, 9, size=(size, 9))
        is_ = oracle_rng.integers(0, 5, size=(size, 5))
        chunks.append(gap(u[iu].mean(1), s[is_].mean(1)))
    values = np.concatenate(chunks)
    assert got == tuple(float(v) for v in np.percentile(values, [TAIL_95, 100 - TAIL_95]))
    # means=True: multinomial counts / n as weights; the statistic gets resample means
    got = paired_bootstrap([u, s], gap, n_resamples=30, seed=4, strata=[0, 1], means=True)
    oracle_rng = np.random.default_rng(4)
    wu = oracle_rng.multinomial(9, np.full(9, 1 / 9), size=30) / 9
    ws = oracle_rng.multinomial(5, np.full(5, 1 / 5), size=30) / 5
    values = gap(wu @ u, ws @ s)
    assert got == tuple(float(v) for v in np.percentile(values, [TAIL_95, 100 - TAIL_95]))


def test_paired_bootstrap_primitive_undefined_resamples_and_errors() -> None:
    x = np.array([0.0, 0.0, 1.0])

    def ratio(a: np.ndarray) -> np.ndarray:
        den = a.sum(axis=1)
        return np.divide(1.0, den, out=np.full(den.shape, np.nan), where=den > 0)

    # resamples without the 1 are undefined (NaN) and dropped: the rest are 1/k, k = 1..3
    low, high = paired_bootstrap([x], ratio, n_resamples=500, seed=0) or (0.0, 0.0)
    assert 1 / 3 <= low <= high <= 1.0
    never = paired_bootstrap([np.zeros(3)], ratio, n_resamples=50, seed=0)
    assert never is None
    assert paired_bootstrap([x], ratio, n_resamples=0, seed=0) is None
    with pytest.raises(ValueError):
        paired_bootstrap([x], ratio, n_resamples=-1, seed=0)
    with pytest.raises(ValueError):
        paired_bootstrap([x, np.ones(4)], _mean_difference, n_resamples=5, seed=0)
    with pytest.raises(ValueError):
        paired_bootstrap([np.array([])], ratio, n_resamples=5, seed=0)
    with pytest.raises(ValueError):
        paired_bootstrap([x], ratio, n_resamples=5, seed=0, strata=[0, 1])
    with pytest.raises(ValueError):
        paired_bootstrap([], ratio, n_resamples=5, seed=0)


# --- pooled over seeds -------------------------------------------------------------------------


def test_pooled_rate_difference_by_hand() -> None:
    from audit.stats import pooled_paired_difference

    strata = [
        ([1, 1, 1, 1, 0], [0, 0, 0, 1, 0]),  # b = 3 (1 -> 0), c = 0
        ([1, 1, 0, 0], [0, 0, 1, 0]),  # b = 2, c = 1
    ]
    delta, low, high, p = pooled_paired_difference(strata, "rate")
    assert delta == pytest.approx(-4 / 9)
    # exact Mantel-Haenszel for matched pairs = McNemar on the summed discordant counts:
    # 5 of 6 discordant pairs one way, two-sided binomial p = 2 * (C(6,5) + C(6,6)) / 2**6
    assert p == pytest.approx(2 * (6 + 1) / 64)
    assert low < delta < high <= 0


def test_pooled_interval_resamples_within_each_seed() -> None:
    from audit.stats import pooled_paired_difference

    # every pair of seed 1 drops, no pair of seed 2 moves: any within-seed resample gives
    # exactly -5/10; an unstratified bootstrap would not
    strata = [([1] * 5, [0] * 5), ([1] * 5, [1] * 5)]
    delta, low, high, p = pooled_paired_difference(strata, "rate")
    assert (delta, low, high) == (pytest.approx(-0.5), pytest.approx(-0.5), pytest.approx(-0.5))
    assert p == pytest.approx(2 / 2**5)


def test_pooled_mean_difference_sign_flip_by_hand() -> None:
    from audit.stats import pooled_paired_difference

    # differences 1, 2 (seed 1) and 3 (seed 2): of the 8 sign patterns, |sum| >= 6 twice
    strata = [([0.0, 0.0], [1.0, 2.0]), ([0.0], [3.0])]
    delta, low, high, p = pooled_paired_difference(strata, "mean", n_resamples=20000)
    assert delta == pytest.approx(2.0)
    assert p == pytest.approx(0.25, abs=0.015)
    assert 1.0 <= low <= delta <= high <= 3.0


def test_pooled_value_by_hand() -> None:
    from audit.stats import pooled_value, wilson_interval

    value, low, high, n = pooled_value([[1, 1, 0], [1, 0]], "rate")
    assert (value, n) == (pytest.approx(0.6), 5)
    assert (low, high) == pytest.approx(wilson_interval(3, 5))
    value, low, high, n = pooled_value([[2.0, 2.0], [2.0]], "mean")
    assert (value, low, high, n) == (2.0, 2.0, 2.0, 3)
    with pytest.raises(ValueError):
        pooled_value([[], []], "rate")

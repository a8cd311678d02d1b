"""Statistics for metric rows and before/after comparisons.

Two kinds of metric (:class:`audit.plugins.MetricSpec.kind`):

- ``rate``: the mean of per-item 0/1 values. Intervals are Wilson score intervals; paired
  before/after differences get Newcombe's (1998) method 10 interval and an exact McNemar test.
- ``mean``: the mean of per-item reals. Intervals are bootstrap intervals (BCa, falling back to
  percentile); paired differences get a bootstrap interval of the mean difference and a
  sign-flip permutation test.

Custom statistics of paired items (ratios, cosines, accuracy-matrix measures) get a percentile
interval from :func:`paired_bootstrap`, which resamples the same items across several arrays.

Every random procedure takes a ``seed`` (default 0), so results are reproducible. Every
function returns plain Python ``float``/``int`` values, ready for ``json.dump``.

Empty inputs: a value of a metric over no items is undefined, so :func:`summarize`,
:func:`bootstrap_mean_interval`, :func:`paired_rate_difference` and
:func:`paired_bootstrap_difference` raise :class:`ValueError` on them;
:func:`metric_rows_from_samples` and :func:`compare_samples` never call them with empty data.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal, TypedDict

import numpy as np
from scipy import stats as sps

from audit.plugins import MetricRow, MetricSpec, Sample

__all__ = [
    "ComparisonStats",
    "bootstrap_mean_interval",
    "compare_rows",
    "compare_samples",
    "mcnemar_exact",
    "metric_rows_from_samples",
    "paired_bootstrap",
    "paired_bootstrap_difference",
    "paired_rate_difference",
    "paired_values",
    "pooled_paired_difference",
    "pooled_value",
    "summarize",
    "wilson_interval",
]

# Elements of one resampling batch (rows x items); bounds scipy's memory use on large inputs.
_BATCH_ELEMENTS = 1 << 21
# Above this many values bootstrap intervals use the percentile method: BCa's jackknife costs
# O(n^2) and its skewness correction shrinks like 1/sqrt(n).
_BCA_MAX_N = 5000


class ComparisonStats(TypedDict):
    """One before/after comparison of one metric on one slice.

    The statistics part of :class:`audit.results.ComparisonRowT`; the runner adds the model,
    baseline, relation, evaluator, metric and ``higher_is_better`` columns.
    """

    slice: str
    before: float
    after: float
    delta: float
    ci_low: float | None
    ci_high: float | None
    n: int
    p_value: float | None
    test: str  # "mcnemar_exact" | "paired_bootstrap" | "unpaired"


# ---------------------------------------------------------------------------------------------
# Validation helpers


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _as_finite_array(values: Sequence[float], what: str = "values") -> np.ndarray:
    """``values`` as a 1-D float array; raises on non-finite entries."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or infinite entries")
    return x


def _as_binary_array(values: Sequence[float], what: str = "values") -> np.ndarray:
    """``values`` as a 1-D int array of 0/1; raises on anything else."""
    x = _as_finite_array(values, what)
    if not np.all((x == 0.0) | (x == 1.0)):
        bad = sorted({float(v) for v in x if v not in (0.0, 1.0)})[:5]
        raise ValueError(f"{what} of a rate metric must be 0 or 1, got e.g. {bad}")
    return x.astype(np.int64)


def _check_paired(before: np.ndarray, after: np.ndarray) -> None:
    if before.shape != after.shape:
        raise ValueError(f"paired lengths differ: {before.size} before, {after.size} after")


def _rng_kwargs(func: Callable[..., Any], seed: int) -> dict[str, Any]:
    """The seeded-generator keyword of a scipy resampling function (``rng`` from scipy 1.15)."""
    generator = np.random.default_rng(seed)
    if "rng" in inspect.signature(func).parameters:
        return {"rng": generator}
    return {"random_state": generator}  # pragma: no cover - scipy < 1.15


def _batch(n: int, n_resamples: int) -> int:
    return max(1, min(n_resamples, _BATCH_ELEMENTS // max(n, 1)))


# ---------------------------------------------------------------------------------------------
# One-sample intervals


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Computed by :meth:`scipy.stats.binomtest(...).proportion_ci` with ``method="wilson"``
    (no continuity correction). For ``n == 0`` the interval is ``(0.0, 1.0)``: the whole
    parameter space, which is also what the Wilson formula gives at ``n = 0``.
    """
    _check_confidence(confidence)
    k, total = int(successes), int(n)
    if total < 0 or not 0 <= k <= total:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if total == 0:
        return 0.0, 1.0
    ci = sps.binomtest(k, total).proportion_ci(confidence_level=confidence, method="wilson")
    return min(max(float(ci.low), 0.0), 1.0), min(max(float(ci.high), 0.0), 1.0)


def bootstrap_mean_interval(
    values: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap confidence interval for the mean of ``values``.

    Uses :func:`scipy.stats.bootstrap` with a generator seeded with ``seed`` and the BCa
    method, or the percentile method where BCa is undefined (it returns NaN or warns, e.g. on
    heavily tied data) or costly (more than 5000 values, where its correction is negligible).
    Degenerate data (one value, or all values equal) gives the zero-width interval
    ``(mean, mean)``, which is what the bootstrap yields there; it says nothing about the
    spread of the population. Raises ``ValueError`` on empty or non-finite input. No warnings
    escape.
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    x = _as_finite_array(values)
    if x.size == 0:
        raise ValueError("cannot compute an interval for the mean of no values")
    mean = float(np.mean(x))
    if x.size == 1 or np.all(x == x[0]):
        return mean, mean

    def run(method: str) -> tuple[float, float, bool]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = sps.bootstrap(
                (x,),
                np.mean,
                n_resamples=n_resamples,
                batch=_batch(x.size, n_resamples),
                vectorized=True,
                confidence_level=confidence,
                method=method,
                **_rng_kwargs(sps.bootstrap, seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        ok = not caught and math.isfinite(low) and math.isfinite(high)
        return low, high, ok

    low, high, ok = run("BCa") if x.size <= _BCA_MAX_N else (math.nan, math.nan, False)
    if not ok:
        low, high, _ = run("percentile")
    return low, high


def summarize(
    values: Sequence[float],
    kind: Literal["rate", "mean"],
    confidence: float = 0.95,
) -> tuple[float, float, float, int]:
    """``(value, ci_low, ci_high, n)`` of a metric over per-item ``values``.

    ``rate``: values must be 0/1; Wilson interval. ``mean``: bootstrap interval
    (:func:`bootstrap_mean_interval` with its default resamples and seed). Raises
    ``ValueError`` on empty input.
    """
    if kind == "rate":
        x = _as_binary_array(values)
        if x.size == 0:
            raise ValueError("cannot summarize a rate over no values")
        successes = int(x.sum())
        low, high = wilson_interval(successes, int(x.size), confidence)
        return successes / x.size, low, high, int(x.size)
    if kind == "mean":
        xf = _as_finite_array(values)
        if xf.size == 0:
            raise ValueError("cannot summarize a mean over no values")
        low, high = bootstrap_mean_interval(xf.tolist(), confidence)
        return float(np.mean(xf)), low, high, int(xf.size)
    raise ValueError(f"unknown metric kind {kind!r}; expected 'rate' or 'mean'")


# ---------------------------------------------------------------------------------------------
# Paired tests and intervals


def mcnemar_exact(before: Sequence[float], after: Sequence[float]) -> float:
    """Exact two-sided McNemar p-value for paired 0/1 outcomes.

    An exact binomial test (:func:`scipy.stats.binomtest`, p = 1/2) of ``b`` against
    ``b + c``, where ``b`` counts pairs going 1 -> 0 and ``c`` pairs going 0 -> 1. With no
    discordant pairs (including empty input) the p-value is 1.0.
    """
    x0 = _as_binary_array(before, "before values")
    x1 = _as_binary_array(after, "after values")
    _check_paired(x0, x1)
    b = int(np.sum((x0 == 1) & (x1 == 0)))
    c = int(np.sum((x0 == 0) & (x1 == 1)))
    if b + c == 0:
        return 1.0
    return min(1.0, float(sps.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue))


def paired_rate_difference(
    before: Sequence[float],
    after: Sequence[float],
    confidence: float = 0.95,
) -> tuple[float, float, float, float]:
    """``(delta, ci_low, ci_high, p_value)`` for paired 0/1 outcomes.

    ``delta = mean(after) - mean(before)``. The interval is Newcombe's method 10 (R. G.
    Newcombe, "Improved confidence intervals for the difference between binomial proportions
    based on paired data", Statistics in Medicine 17:2635-2650, 1998): a square-and-add
    combination of the two marginal Wilson intervals, with the correlation estimate
    ``phi`` corrected as in the paper (``(ad - bc - n/2) / sqrt(efgh)`` when ``ad - bc > n/2``,
    0 when ``0 <= ad - bc <= n/2``, ``(ad - bc) / sqrt(efgh)`` when negative, and 0 when a
    marginal total is 0). The p-value is :func:`mcnemar_exact`. Raises ``ValueError`` on
    empty input.
    """
    _check_confidence(confidence)
    x0 = _as_binary_array(before, "before values")
    x1 = _as_binary_array(after, "after values")
    _check_paired(x0, x1)
    n = int(x0.size)
    if n == 0:
        raise ValueError("cannot compare rates over no pairs")
    # 2x2 table with "after" as the first measurement, so that delta = p1 - p2.
    a = int(np.sum((x1 == 1) & (x0 == 1)))
    b = int(np.sum((x1 == 1) & (x0 == 0)))
    c = int(np.sum((x1 == 0) & (x0 == 1)))
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    delta = p1 - p2
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    marginals = (a + b) * (c + d) * (a + c) * (b + d)  # Python int: no overflow
    phi = 0.0
    if marginals > 0:
        cross = a * d - b * c
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(marginals)
        elif cross < 0:
            phi = cross / math.sqrt(marginals)
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    lower = delta - math.sqrt(max(0.0, dl1**2 - 2 * phi * dl1 * du2 + du2**2))
    upper = delta + math.sqrt(max(0.0, du1**2 - 2 * phi * du1 * dl2 + dl2**2))
    return delta, max(-1.0, lower), min(1.0, upper), mcnemar_exact(x0.tolist(), x1.tolist())


def paired_bootstrap_difference(
    before: Sequence[float],
    after: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """``(delta, ci_low, ci_high, p_value)`` for paired real outcomes.

    ``delta`` is the mean of ``after - before``; the interval is
    :func:`bootstrap_mean_interval` of those differences. The p-value is a two-sided sign-flip
    permutation test of the mean difference (:func:`scipy.stats.permutation_test` with
    ``permutation_type="samples"``, which swaps before/after within pairs): exact when
    ``2**n <= n_resamples``, otherwise Monte Carlo with ``n_resamples`` resamples and the
    usual +1 correction. If every difference is zero the result is ``(0.0, 0.0, 0.0, 1.0)``;
    with a single pair the exact p-value is 1.
    Raises ``ValueError`` on empty input.
    """
    _check_confidence(confidence)
    x0 = _as_finite_array(before, "before values")
    x1 = _as_finite_array(after, "after values")
    _check_paired(x0, x1)
    if x0.size == 0:
        raise ValueError("cannot compare means over no pairs")
    diffs = x1 - x0
    if np.all(diffs == 0.0):
        return 0.0, 0.0, 0.0, 1.0
    delta = float(np.mean(diffs))
    low, high = bootstrap_mean_interval(diffs.tolist(), confidence, n_resamples, seed)
    if x0.size == 1:  # both sign flips give the same |mean|: the exact p-value is 1
        return delta, low, high, 1.0

    def mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(np.mean(x - y, axis=axis))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.permutation_test(
            (x1, x0),
            mean_difference,
            permutation_type="samples",
            vectorized=True,
            n_resamples=n_resamples,
            batch=_batch(x0.size, n_resamples),
            alternative="two-sided",
            **_rng_kwargs(sps.permutation_test, seed),
        )
    return delta, low, high, min(1.0, float(res.pvalue))


def paired_bootstrap(
    arrays: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    *,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
    strata: Sequence[Hashable] | None = None,
    means: bool = False,
    batch: int | None = None,
    quantiles: tuple[float, float] | None = None,
) -> tuple[float, float] | None:
    """Paired percentile bootstrap interval of ``statistic`` over items.

    Axis 0 of every array of ``arrays`` indexes items; item ``i`` of one array is paired with
    item ``i`` of the others (e.g. two models' outcomes on the same prompt). Each resample
    draws ``n`` item indices with replacement and applies the *same* indices to every array,
    so the pairing is kept. With ``strata`` (one label per array) the arrays sharing a label
    are paired with one another and each stratum is resampled independently with its own
    item count (a stratified bootstrap); by default all arrays form one stratum and must have
    the same number of items.

    ``statistic`` is vectorized: it is called with the resampled arrays, in the order of
    ``arrays``, each with a leading axis of ``b`` resamples (shape ``(b, n, ...)``), and
    returns ``b`` values. With ``means=True`` the resamples are drawn as multinomial item
    counts instead of indices, and ``statistic`` receives each array's *resample mean* over
    items (``counts / n @ array``, shape ``(b, ...)``) rather than the resampled array; use it
    for statistics of means on wide arrays, where materializing ``(b, n, ...)`` copies is too
    costly.

    Draws come from ``numpy.random.default_rng(seed)``: for each batch of ``batch`` resamples
    (default: all ``n_resamples`` at once), one draw per stratum in the order the strata first
    appear in ``strata``: ``rng.integers(0, n, size=(b, n))``, or
    ``rng.multinomial(n, [1/n] * n, size=b)`` with ``means=True``. The same seed, arrays and
    batch therefore give the same resamples; a different ``batch`` gives different ones.

    Non-finite values of ``statistic`` mark resamples where it is undefined (e.g. a ratio
    with a zero denominator); they are dropped. The interval is the linear-interpolation
    percentile interval of the remaining values: ``numpy.percentile`` at
    ``[tail, 100 - tail]`` with ``tail = (1 - confidence) / 2 * 100``, or, when ``quantiles``
    is given, ``numpy.quantile`` at those two probabilities (``confidence`` is then unused; the
    two spellings can differ in the last bit). Returns ``None`` when ``n_resamples`` is 0 or no
    resample gives a finite value.

    Assumes items are independent and exchangeable within a stratum (no clustering) and that
    the percentile interval is adequate (no bias or skewness correction, unlike
    :func:`bootstrap_mean_interval`'s BCa). Raises ``ValueError`` on a negative
    ``n_resamples``, no arrays, a 0-dimensional array, a stratum without items, arrays of one
    stratum with different item counts, or ``strata`` of the wrong length.
    """
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    xs = [np.asarray(a) for a in arrays]
    if not xs:
        raise ValueError("need at least one array to resample")
    labels: list[Hashable] = [0] * len(xs) if strata is None else list(strata)
    if len(labels) != len(xs):
        raise ValueError(f"{len(labels)} strata labels for {len(xs)} arrays")
    groups: dict[Hashable, list[int]] = {}
    for k, label in enumerate(labels):
        if xs[k].ndim == 0:
            raise ValueError(f"array {k} is 0-dimensional: axis 0 must index items")
        groups.setdefault(label, []).append(k)
    sizes: list[int] = []
    for label, members in groups.items():
        counts = {xs[k].shape[0] for k in members}
        if len(counts) != 1:
            raise ValueError(f"paired arrays of stratum {label!r} differ in items: {counts}")
        (n,) = counts
        if n == 0:
            raise ValueError(f"stratum {label!r} has no items")
        sizes.append(n)
    if n_resamples == 0:
        return None
    rng = np.random.default_rng(seed)
    step = n_resamples if batch is None else batch
    chunks: list[np.ndarray] = []
    for start in range(0, n_resamples, step):
        b = min(step, n_resamples - start)
        resampled: list[np.ndarray] = list(xs)
        for members, n in zip(groups.values(), sizes, strict=True):
            if means:
                weights = rng.multinomial(n, np.full(n, 1.0 / n), size=b) / n
                for k in members:
                    resampled[k] = weights @ xs[k]
            else:
                index = rng.integers(0, n, size=(b, n))
                for k in members:
                    resampled[k] = xs[k][index]
        chunks.append(np.asarray(statistic(*resampled), dtype=float).reshape(b))
    values = np.concatenate(chunks)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    if quantiles is None:
        tail = (1.0 - confidence) / 2 * 100
        low, high = np.percentile(values, [tail, 100 - tail])
    else:
        low, high = np.quantile(values, list(quantiles))
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------
# Samples -> metric rows and comparisons


def _slice_names(samples: Sequence[Sample]) -> list[str]:
    """``"all"`` followed by the distinct other slice names, sorted."""
    return ["all", *sorted({s.slice for s in samples} - {"all"})]


def metric_rows_from_samples(
    samples: Sequence[Sample],
    specs: Sequence[MetricSpec],
    *,
    confidence: float = 0.95,
) -> list[MetricRow]:
    """Aggregate per-item samples into metric rows with intervals (see :func:`summarize`).

    For each spec (in order) that has samples: one row for slice ``"all"`` over all of that
    metric's samples, then one row per distinct other ``slice`` value, sorted by name. Specs
    without samples produce no rows; samples of metrics not in ``specs`` are ignored.
    """
    rows: list[MetricRow] = []
    for spec in specs:
        mine = [s for s in samples if s.metric == spec.name]
        if not mine:
            continue
        for name in _slice_names(mine):
            values = [s.value for s in mine if name == "all" or s.slice == name]
            value, low, high, n = summarize(values, spec.kind, confidence)
            rows.append(MetricRow(spec.name, value, low, high, n, slice=name))
    return rows


def _index_by_item(samples: Sequence[Sample], metric: str, side: str) -> dict[str, Sample]:
    index: dict[str, Sample] = {}
    for s in samples:
        if s.metric != metric:
            continue
        if s.item_id in index:
            raise ValueError(f"duplicate item_id {s.item_id!r} for metric {metric!r} ({side})")
        index[s.item_id] = s
    return index


def compare_samples(
    before: Sequence[Sample],
    after: Sequence[Sample],
    spec: MetricSpec,
    *,
    confidence: float = 0.95,
) -> list[ComparisonStats]:
    """Paired before/after comparison of one metric, per slice.

    Samples of ``spec.name`` are paired on ``item_id``; only items present on both sides count
    (``n`` is the number of pairs; ``before``/``after`` are the means over those pairs). One
    dict for slice ``"all"`` and one per distinct other slice (sorted), none where there are no
    pairs. Rates use :func:`paired_rate_difference` (test ``"mcnemar_exact"``), means
    :func:`paired_bootstrap_difference` (test ``"paired_bootstrap"``). Raises ``ValueError``
    on a duplicate ``item_id`` within one side, or an item whose slice differs between sides.
    """
    first = _index_by_item(before, spec.name, "before")
    second = _index_by_item(after, spec.name, "after")
    pairs = [(first[i], second[i]) for i in first if i in second]
    for s0, s1 in pairs:
        if s0.slice != s1.slice:
            raise ValueError(
                f"item {s0.item_id!r} of metric {spec.name!r} is in slice {s0.slice!r} before "
                f"but {s1.slice!r} after"
            )
    if not pairs:
        return []
    out: list[ComparisonStats] = []
    for name in _slice_names([s0 for s0, _ in pairs]):
        chosen = [(s0.value, s1.value) for s0, s1 in pairs if name == "all" or s0.slice == name]
        v0 = [v for v, _ in chosen]
        v1 = [v for _, v in chosen]
        if spec.kind == "rate":
            delta, low, high, p = paired_rate_difference(v0, v1, confidence)
            test = "mcnemar_exact"
        elif spec.kind == "mean":
            delta, low, high, p = paired_bootstrap_difference(v0, v1, confidence)
            test = "paired_bootstrap"
        else:
            raise ValueError(f"unknown metric kind {spec.kind!r}; expected 'rate' or 'mean'")
        out.append(
            ComparisonStats(
                slice=name,
                before=float(np.mean(v0)),
                after=float(np.mean(v1)),
                delta=delta,
                ci_low=low,
                ci_high=high,
                n=len(chosen),
                p_value=p,
                test=test,
            )
        )
    return out


def adjust_p_values(p_values: Sequence[float], method: str) -> list[float]:
    """p-values adjusted for multiplicity over the family ``p_values``.

    ``holm``: Holm's step-down adjustment (controls the family-wise error rate; S. Holm,
    Scand. J. Statist. 6:65-70, 1979); ``bh``: Benjamini-Hochberg (controls the false
    discovery rate; J. R. Statist. Soc. B 57:289-300, 1995), as
    :func:`scipy.stats.false_discovery_control`; ``none``: unchanged.
    """
    ps = [float(p) for p in p_values]
    if method == "none" or not ps:
        return ps
    if method == "bh":
        return [float(x) for x in sps.false_discovery_control(ps, method="bh")]
    if method != "holm":
        raise ValueError(f"unknown correction {method!r}; expected 'holm', 'bh' or 'none'")
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def compare_rows(before: MetricRow, after: MetricRow) -> ComparisonStats:
    """Unpaired comparison of two metric rows, for metrics that come without samples.

    Only the difference of the values is reported: without the per-item data neither a paired
    interval nor a valid test is available, so ``ci_low``, ``ci_high`` and ``p_value`` are
    ``None`` and ``test`` is ``"unpaired"``. ``n`` is the smaller of the two rows' ``n``.
    Raises ``ValueError`` if the rows are of different metrics or slices.
    """
    if (before.metric, before.slice) != (after.metric, after.slice):
        raise ValueError(
            f"cannot compare {before.metric!r}/{before.slice!r} with "
            f"{after.metric!r}/{after.slice!r}"
        )
    return ComparisonStats(
        slice=after.slice,
        before=float(before.value),
        after=float(after.value),
        delta=float(after.value) - float(before.value),
        ci_low=None,
        ci_high=None,
        n=min(int(before.n), int(after.n)),
        p_value=None,
        test="unpaired",
    )


# ---------------------------------------------------------------------------------------------
# Pooled over replicates (seeds): strata of paired items


def _stratified_bootstrap_mean(
    strata: Sequence[np.ndarray], confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of the item-weighted mean over ``strata``, each resampled (with
    replacement) within itself."""
    total = sum(int(s.size) for s in strata)
    rng = np.random.default_rng(seed)
    sums = np.zeros(n_resamples)
    for values in strata:
        n = int(values.size)
        step = max(1, _BATCH_ELEMENTS // max(n, 1))
        for start in range(0, n_resamples, step):
            stop = min(n_resamples, start + step)
            idx = rng.integers(0, n, size=(stop - start, n))
            sums[start:stop] += values[idx].sum(axis=1)
    means = sums / total
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def pooled_paired_difference(
    strata: Sequence[tuple[Sequence[float], Sequence[float]]],
    kind: Literal["rate", "mean"],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """``(delta, ci_low, ci_high, p_value)`` of a paired before/after difference pooled over
    strata (one stratum per seed; its pairs are ``(before, after)`` of the same items).

    ``delta`` is the mean of ``after - before`` over every pair of every stratum (a fixed-effect
    estimate: each item weighs the same). The interval is a stratified bootstrap: each stratum's
    pairs resampled within the stratum, percentile method. The p-value: for ``rate`` metrics
    the exact Mantel-Haenszel test for matched pairs, which for 1:1 pairs is McNemar's test on
    the discordant counts summed over strata (an exact binomial test of ``Σb`` against
    ``Σb + Σc``); for ``mean`` metrics a sign-flip permutation test of the pooled mean
    difference (pairs flip independently, so strata need no special handling), Monte Carlo
    with ``n_resamples`` and the +1 correction. The interval conditions on the seeds that ran:
    it is the uncertainty from the items, not from drawing other seeds. Raises ``ValueError``
    when there are no pairs.
    """
    _check_confidence(confidence)
    diffs: list[np.ndarray] = []
    b = c = 0
    for before, after in strata:
        convert = _as_binary_array if kind == "rate" else _as_finite_array
        x0, x1 = convert(before, "before values"), convert(after, "after values")
        _check_paired(x0, x1)
        if x0.size == 0:
            continue
        diffs.append(x1 - x0)
        b += int(np.sum((x0 == 1) & (x1 == 0)))
        c += int(np.sum((x0 == 0) & (x1 == 1)))
    if not diffs:
        raise ValueError("cannot pool a difference over no pairs")
    every = np.concatenate(diffs)
    if np.all(every == 0.0):
        return 0.0, 0.0, 0.0, 1.0
    delta = float(np.mean(every))
    low, high = _stratified_bootstrap_mean(diffs, confidence, n_resamples, seed)
    if kind == "rate":
        p = 1.0 if b + c == 0 else float(sps.binomtest(b, b + c, 0.5).pvalue)
    else:
        rng = np.random.default_rng(seed)
        observed = abs(float(every.sum()))
        hits = 0
        step = max(1, _BATCH_ELEMENTS // every.size)
        for start in range(0, n_resamples, step):
            rows = min(n_resamples, start + step) - start
            signs = rng.choice(np.array([-1.0, 1.0]), size=(rows, every.size))
            hits += int(np.sum(np.abs(signs @ every) >= observed - 1e-12 * max(observed, 1.0)))
        p = (hits + 1) / (n_resamples + 1)
    return delta, low, high, min(1.0, p)


def pooled_value(
    strata: Sequence[Sequence[float]],
    kind: Literal["rate", "mean"],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """``(value, ci_low, ci_high, n)`` of a metric pooled over strata of per-item values: the
    mean over every item; a Wilson interval of the pooled counts for ``rate`` metrics, a
    stratified bootstrap percentile interval for ``mean`` metrics."""
    arrays = [
        (_as_binary_array if kind == "rate" else _as_finite_array)(v, "values") for v in strata
    ]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ValueError("cannot pool a value over no items")
    every = np.concatenate(arrays)
    n = int(every.size)
    value = float(np.mean(every))
    if kind == "rate":
        low, high = wilson_interval(int(every.sum()), n, confidence)
    elif np.all(every == every[0]):
        low = high = value
    else:
        low, high = _stratified_bootstrap_mean(arrays, confidence, n_resamples, seed)
    return value, low, high, n


def paired_values(
    before: Sequence[Sample], after: Sequence[Sample], metric: str
) -> dict[str, tuple[list[float], list[float]]]:
    """The paired ``(before, after)`` values of ``metric`` per slice (``"all"`` and each other
    slice), paired on ``item_id`` as :func:`compare_samples` pairs them."""
    first = _index_by_item(before, metric, "before")
    second = _index_by_item(after, metric, "after")
    pairs = [(first[i], second[i]) for i in first if i in second]
    out: dict[str, tuple[list[float], list[float]]] = {}
    for name in _slice_names([s0 for s0, _ in pairs]) if pairs else []:
        chosen = [(s0.value, s1.value) for s0, s1 in pairs if name == "all" or s0.slice == name]
        out[name] = ([v for v, _ in chosen], [v for _, v in chosen])
    return out

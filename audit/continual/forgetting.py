"""Continual-learning measures along a chain of fine-tunes: BWT and forgetting.

A *lineage* is a chain of models ``m1 → m2 → … → mT`` of the suite, each the only parent of the
next, where step ``j`` fine-tuned on task ``t_j``. A ``forgetting`` evaluator declares them::

    [evaluators.forgetting]
    kind = "forgetting"
    tasks = ["organism:sentiment", "organism:topic", "organism:arithmetic"]
    lineages = [["seq_1", "seq_2", "seq_3"]]          # one chain per list, step order
    lineage_tasks = ["organism:sentiment", "organism:topic", "organism:arithmetic"]

``lineage_tasks[i]`` is the task learned at step ``i`` of every lineage (a task of ``tasks``, or
``lm_eval:NAME`` for a task of an ``lm_eval_dir``). With ``a[j][i]`` the accuracy on task ``i``
after step ``j`` (the evaluator's ``accuracy`` on that slice):

- BWT (Lopez-Paz & Ranzato 2017, arXiv:1706.08840):
  ``1/(T-1) · Σ_{i<T} (a[T][i] − a[i][i])``; negative when learning later tasks hurt earlier ones;
- forgetting (Chaudhry et al. 2018, arXiv:1801.10112):
  ``1/(T-1) · Σ_{i<T} (max_{j<T} a[j][i] − a[T][i])``; 0 when no task fell below its best.

Intervals: a paired percentile bootstrap over items (every model's outcome on an item resampled
together, stratified by task; seeded), over the items scored on every model of the lineage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from audit.results import ModelRowT
from audit.stats import paired_bootstrap

__all__ = [
    "ForgettingRowT",
    "backward_transfer",
    "forgetting_measure",
    "forgetting_rows",
    "lineage_model_problems",
    "lineage_param_problems",
]


class ForgettingRowT(TypedDict):
    """One lineage's accuracy matrix and measures (results.json ``analyses["forgetting"]``)."""

    evaluator: str
    lineage: list[str]
    name: str  # "m1 → m2 → m3"
    tasks: list[str]
    matrix: list[list[float | None]]  # matrix[j][i]: accuracy on task i after step j
    n: list[int]  # items per task, paired over the lineage's models
    bwt: float | None
    bwt_ci_low: float | None
    bwt_ci_high: float | None
    forgetting: float | None
    forgetting_ci_low: float | None
    forgetting_ci_high: float | None
    error: str | None


def _square(matrix: Any) -> np.ndarray:
    a = np.asarray(matrix, dtype=float)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 2:
        raise ValueError(f"need a T×T accuracy matrix with T >= 2, got shape {a.shape}")
    return a


def backward_transfer(matrix: Any) -> Any:
    """BWT of ``matrix[j][i]`` (accuracy on task i after step j); batched over leading axes."""
    a = _square(matrix)
    t = a.shape[-1]
    diag = np.diagonal(a, axis1=-2, axis2=-1)[..., : t - 1]
    return np.mean(a[..., t - 1, : t - 1] - diag, axis=-1)


def forgetting_measure(matrix: Any) -> Any:
    """Average forgetting of ``matrix[j][i]``; batched over leading axes."""
    a = _square(matrix)
    t = a.shape[-1]
    best = np.max(a[..., : t - 1, : t - 1], axis=-2)
    return np.mean(best - a[..., t - 1, : t - 1], axis=-1)


def lineage_param_problems(
    tasks: Sequence[str], lineages: Sequence[Sequence[str]], lineage_tasks: Sequence[str]
) -> list[str]:
    """What is wrong with a ``forgetting`` evaluator's ``lineages``/``lineage_tasks`` (if any)."""
    problems: list[str] = []
    if bool(lineages) != bool(lineage_tasks):
        problems.append("give both `lineages` and `lineage_tasks`, or neither")
        return problems
    if lineage_tasks and len(lineage_tasks) < 2:
        problems.append("`lineage_tasks` needs at least 2 steps for BWT and forgetting")
    if len(set(lineage_tasks)) != len(lineage_tasks):
        problems.append("`lineage_tasks` lists a task twice")
    has_dir = any(t.startswith("lm_eval_dir:") for t in tasks)
    for task in lineage_tasks:
        if task not in tasks and not (has_dir and task.startswith("lm_eval:")):
            problems.append(f"lineage task {task!r} is not one of `tasks`")
    for k, lineage in enumerate(lineages):
        if len(lineage) != len(lineage_tasks):
            problems.append(
                f"lineages[{k}] has {len(lineage)} models but `lineage_tasks` "
                f"{len(lineage_tasks)} tasks (one model per step)"
            )
        if len(set(lineage)) != len(lineage):
            problems.append(f"lineages[{k}] lists a model twice")
    return problems


def expand_lineages(
    chains: Sequence[Sequence[str]], replicas: Mapping[str, Sequence[str]]
) -> list[list[str]]:
    """The chains with models named as written replaced by their replicas: a chain whose every
    model is replicated (``[suite] seeds``) becomes one chain per seed; others are kept."""
    out: list[list[str]] = []
    for chain in chains:
        if chain and all(m in replicas for m in chain):
            out += [list(c) for c in zip(*(replicas[m] for m in chain), strict=True)]
        else:
            out.append(list(chain))
    return out


def lineage_model_problems(
    lineage: Sequence[str], parents: Mapping[str, Sequence[str]]
) -> list[str]:
    """Models of ``lineage`` missing from the suite, or not each the only parent of the next."""
    missing = [m for m in lineage if m not in parents]
    if missing:
        return [f"unknown model {m!r}" for m in missing]
    problems = []
    for before, after in zip(lineage, lineage[1:], strict=False):
        if list(parents[after]) != [before]:
            shown = ", ".join(parents[after]) or "none"
            problems.append(f"{after!r} must have exactly one parent, {before!r} (has: {shown})")
    return problems


def _item_values(
    samples: Sequence[Mapping[str, Any]], evaluator: str
) -> dict[tuple[str, str], dict[str, float]]:
    """(model, task slice) -> {item_id: 0/1} of the evaluator's ``accuracy`` samples."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for s in samples:
        if s["evaluator"] == evaluator and s["metric"] == "accuracy":
            out.setdefault((s["model"], s["slice"]), {})[s["item_id"]] = float(s["value"])
    return out


def _empty_row(
    evaluator: str, lineage: list[str], tasks: list[str], error: str | None = None
) -> ForgettingRowT:
    return ForgettingRowT(
        evaluator=evaluator,
        lineage=lineage,
        name=" → ".join(lineage),
        tasks=tasks,
        matrix=[],
        n=[],
        bwt=None,
        bwt_ci_low=None,
        bwt_ci_high=None,
        forgetting=None,
        forgetting_ci_low=None,
        forgetting_ci_high=None,
        error=error,
    )


def _lineage_row(
    evaluator: str,
    lineage: list[str],
    tasks: list[str],
    values: Mapping[tuple[str, str], dict[str, float]],
    *,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> ForgettingRowT:
    row = _empty_row(evaluator, lineage, tasks)
    # per task: (T models × n items) of outcomes on the items every model was scored on
    blocks: list[np.ndarray] = []
    for task in tasks:
        scored = [values.get((model, task), {}) for model in lineage]
        shared = sorted(set.intersection(*(set(v) for v in scored)))
        blocks.append(np.array([[v[i] for i in shared] for v in scored], dtype=float))
    row["n"] = [int(b.shape[1]) for b in blocks]
    row["matrix"] = [
        [float(b[j].mean()) if b.shape[1] else None for b in blocks] for j in range(len(lineage))
    ]
    empty = [t for t, b in zip(tasks, blocks, strict=True) if b.shape[1] == 0]
    if empty:
        row["error"] = "no items scored on every model of the lineage for " + ", ".join(empty)
        return row
    matrix = np.array(row["matrix"], dtype=float)
    row["bwt"] = float(backward_transfer(matrix))
    row["forgetting"] = float(forgetting_measure(matrix))
    # one (items × models) array per task: an item's outcomes on the lineage's models are
    # resampled together; each task's items separately (one stratum per task)
    arrays = [block.T for block in blocks]
    shape = (len(lineage), len(tasks))

    def interval(measure: Callable[[np.ndarray], Any]) -> tuple[float | None, float | None]:
        def statistic(*resampled: np.ndarray) -> np.ndarray:
            boot = np.empty((resampled[0].shape[0], *shape))  # resample × step × task
            for i, outcomes in enumerate(resampled):  # (resamples, items, models)
                boot[:, :, i] = outcomes.mean(axis=1)
            return np.asarray(measure(boot))

        ci = paired_bootstrap(
            arrays,
            statistic,
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
            strata=range(len(tasks)),
        )
        return ci or (None, None)

    row["bwt_ci_low"], row["bwt_ci_high"] = interval(backward_transfer)
    row["forgetting_ci_low"], row["forgetting_ci_high"] = interval(forgetting_measure)
    return row


def forgetting_rows(
    models: Sequence[ModelRowT],
    samples: Sequence[Mapping[str, Any]],
    lineages: Mapping[str, tuple[Sequence[Sequence[str]], Sequence[str]]],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[ForgettingRowT]:
    """One row per declared lineage.

    ``lineages`` maps a ``forgetting`` evaluator's name to its ``(lineages, lineage_tasks)``;
    ``samples`` are sample rows (model, evaluator, metric, slice, item_id, value). A lineage
    whose models are unknown, not chained, or not scored on a task gets a row with ``error``
    set and no measures.
    """
    parents = {m["name"]: list(m["parents"]) for m in models}
    rows: list[ForgettingRowT] = []
    for evaluator, (chains, tasks) in lineages.items():
        values = _item_values(samples, evaluator)
        for chain in chains:
            problems = lineage_model_problems(chain, parents)
            if problems:
                rows.append(_empty_row(evaluator, list(chain), list(tasks), "; ".join(problems)))
                continue
            rows.append(
                _lineage_row(
                    evaluator,
                    list(chain),
                    list(tasks),
                    values,
                    confidence=confidence,
                    n_resamples=n_resamples,
                    seed=seed,
                )
            )
    return rows

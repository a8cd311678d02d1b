"""Run lm-eval tasks on an in-memory model and return per-item results.

:func:`run_lm_eval` wraps ``lm_eval.simple_evaluate`` with ``HFLM(pretrained=<model>)``, offline,
with ``log_samples=True``, and turns ``results["samples"][task]`` into :class:`LmEvalItem`\\ s
(one per document: its ``doc_id``, 0/1 correctness) so that before/after comparisons pair items.

Tasks come from three places:

- the package's own tasks in :data:`SHIPPED_DIR` (``organism_sentiment``), always on the
  include path;
- local YAML directories (``lm_eval_dir:DIR`` in a suite): every ``*.yaml`` with a ``task`` key;
- lm-eval's built-in tasks by name; their index (≈ 6 s) is built only when a requested name is
  not a shipped or local task.

Local directories are copied to a temporary directory first, with every relative
``dataset_kwargs.data_files`` path rewritten to an absolute one against the YAML's own folder:
lm-eval resolves those paths against the working directory, so a task would otherwise work only
when ``audit`` runs from the task's folder.

lm-eval's response cache (``use_cache``) keys on the request only, not on the model, so one
cache file shared by two checkpoints returns the first model's answers for the second. The
adapter never enables it: every call scores the model it is given.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ORGANISM_SENTIMENT",
    "SHIPPED_DIR",
    "LmEvalItem",
    "LmEvalTaskResult",
    "local_task_names",
    "prepare_task_dir",
    "run_lm_eval",
    "write_organism_sentiment",
]

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "lm_eval"
"""The package's own lm-eval tasks (one folder per task: YAML + jsonl)."""

ORGANISM_SENTIMENT = SHIPPED_DIR / "organism_sentiment" / "organism_sentiment.jsonl"
"""The shipped ``organism_sentiment`` task's data: the organism's held-out sentiment items."""

# Per-document metrics read as the item's 0/1 correctness, in order of preference.
_ITEM_METRICS = ("acc", "exact_match")


@dataclass(frozen=True)
class LmEvalItem:
    """One scored document of an lm-eval task.

    ``scores``: the log-likelihood of each choice (multiple choice; empty for other types).
    """

    doc_id: int
    input: str
    output: str
    correct: bool
    scores: tuple[float, ...] = ()


@dataclass(frozen=True)
class LmEvalTaskResult:
    """One lm-eval task's accuracy (lm-eval's own aggregate) and its documents."""

    task: str
    metric: str
    accuracy: float
    items: list[LmEvalItem]


class _Function:
    """A ``!function module.name`` tag, kept as written when a YAML is rewritten."""

    def __init__(self, value: str):
        self.value = value


def _yaml() -> tuple[type[Any], type[Any]]:
    """A PyYAML loader and dumper that round-trip lm-eval's ``!function`` tags."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    class Dumper(yaml.SafeDumper):
        pass

    Loader.add_constructor(
        "!function", lambda loader, node: _Function(loader.construct_scalar(node))
    )
    Dumper.add_representer(
        _Function, lambda dumper, f: dumper.represent_scalar("!function", f.value)
    )
    return Loader, Dumper


def _load_yaml(path: Path) -> Any:
    import yaml

    loader, _ = _yaml()
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)  # noqa: S506 - a SafeLoader subclass


def local_task_names(directory: Path) -> list[str]:
    """Names of the tasks defined by the YAML files under ``directory`` (sorted).

    A task is a YAML mapping with a string ``task`` key; groups and task lists are not
    counted (run their tasks by name instead).
    """
    names: set[str] = set()
    for path in sorted(Path(directory).rglob("*.yaml")):
        config = _load_yaml(path)
        if isinstance(config, dict) and isinstance(config.get("task"), str):
            names.add(config["task"])
    return sorted(names)


def _absolute(value: Any, base: Path) -> Any:
    """``value`` (a path, list or mapping of paths) with relative local paths made absolute."""
    if isinstance(value, str):
        if "://" in value or Path(value).expanduser().is_absolute():
            return value
        return str((base / value).resolve())
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, base) for k, v in value.items()}
    return value


def prepare_task_dir(directory: Path, into: Path) -> Path:
    """Copy ``directory`` to ``into`` with absolute ``dataset_kwargs.data_files`` paths.

    Relative paths are resolved against the folder of the YAML that names them (in the
    original directory), so the copy works from any working directory. Returns ``into``.
    """
    import yaml

    source = Path(directory).resolve()
    if not source.is_dir():
        raise FileNotFoundError(f"{directory}: lm-eval task directory not found")
    shutil.copytree(source, into)
    _, dumper = _yaml()
    for path in sorted(source.rglob("*.yaml")):
        config = _load_yaml(path)
        kwargs = config.get("dataset_kwargs") if isinstance(config, dict) else None
        if not isinstance(kwargs, dict) or "data_files" not in kwargs:
            continue
        kwargs["data_files"] = _absolute(kwargs["data_files"], path.parent)
        target = into / path.relative_to(source)
        target.write_text(yaml.dump(config, Dumper=dumper, sort_keys=False), encoding="utf-8")
    return into


def _item_metric(sample: dict[str, Any], task: str) -> str:
    for metric in _ITEM_METRICS:
        if metric in sample:
            return metric
    raise ValueError(
        f"lm-eval task {task!r} reports none of {', '.join(_ITEM_METRICS)} per document "
        f"(got {', '.join(sorted(k for k in sample if not k.startswith(('doc', 'resps'))))})"
    )


def _input_text(sample: dict[str, Any]) -> str:
    arguments = sample.get("arguments") or []
    first = arguments[0] if arguments else ""
    return str(first[0] if isinstance(first, (list, tuple)) and first else first)


def _choice_scores(sample: dict[str, Any]) -> tuple[float, ...]:
    """Each choice's log-likelihood, for a multiple-choice document (else empty)."""
    responses = sample.get("filtered_resps") or []
    scores = [r[0] if isinstance(r, (list, tuple)) and r else r for r in responses]
    if len(scores) > 1 and all(isinstance(s, (int, float)) for s in scores):
        return tuple(float(s) for s in scores)
    return ()


def _output_text(sample: dict[str, Any], scores: tuple[float, ...]) -> str:
    """The chosen (first best) choice of a multiple-choice document, else the response."""
    arguments = sample.get("arguments") or []
    if scores and len(arguments) == len(scores):
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        return str(arguments[best][1]).strip()
    responses = sample.get("filtered_resps") or []
    return str(responses[0]) if len(responses) == 1 else json.dumps(responses, default=str)


def _task_result(
    task: str, samples: list[dict[str, Any]], summary: dict[str, Any]
) -> LmEvalTaskResult:
    if not samples:
        raise ValueError(f"lm-eval returned no documents for task {task!r}")
    metric = _item_metric(samples[0], task)
    items = []
    for s in sorted(samples, key=lambda s: int(s["doc_id"])):
        scores = _choice_scores(s)
        items.append(
            LmEvalItem(
                doc_id=int(s["doc_id"]),
                input=_input_text(s),
                output=_output_text(s, scores),
                correct=float(s[metric]) == 1.0,
                scores=scores,
            )
        )
    aggregate = summary.get(f"{metric},none")
    accuracy = (
        float(aggregate)
        if isinstance(aggregate, (int, float))
        else sum(i.correct for i in items) / len(items)
    )
    return LmEvalTaskResult(task=task, metric=metric, accuracy=accuracy, items=items)


@contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Restore Python's, numpy's and torch's global RNG states (lm-eval reseeds all three)."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    include_dirs: Sequence[Path] = (),
    limit: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    chat: bool = True,
    num_fewshot: int | None = None,
    system_instruction: str | None = None,
) -> dict[str, LmEvalTaskResult]:
    """Run lm-eval ``tasks`` (names) on ``model`` and return one result per evaluated task.

    ``include_dirs`` are local YAML task directories (the shipped ones are always included);
    lm-eval's built-in index is loaded only when a name is not defined locally. ``chat``
    formats every context with the tokenizer's chat template when it has one (the reply is
    then scored right after the generation prompt, with no delimiter), as audit's own
    evaluators do; ``chat=False`` is lm-eval's own default (its CLI without
    ``--apply_chat_template``). ``num_fewshot`` (``None``: each task's own) and
    ``system_instruction`` are lm-eval's. Group tasks give one result per subtask. No response
    cache is used, and the global RNG states lm-eval reseeds are restored afterwards.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from audit.models.generation import has_chat_template

    directories = [SHIPPED_DIR, *(Path(d) for d in include_dirs)]
    with tempfile.TemporaryDirectory(prefix="audit-lm-eval-") as tmp:
        local: set[str] = set()
        include: list[str] = []
        for i, directory in enumerate(dict.fromkeys(d.resolve() for d in directories)):
            local.update(local_task_names(directory))
            include.append(str(prepare_task_dir(directory, Path(tmp) / f"tasks{i}")))
        manager = TaskManager(
            include_path=include, include_defaults=any(t not in local for t in tasks)
        )
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        with _global_rng_kept():
            out = simple_evaluate(
                model=lm,
                tasks=list(dict.fromkeys(tasks)),
                task_manager=manager,
                limit=limit,
                log_samples=True,
                use_cache=None,
                apply_chat_template=chat and has_chat_template(tokenizer),
                num_fewshot=num_fewshot,
                system_instruction=system_instruction,
            )
    if out is None:  # pragma: no cover - only on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results")
    return {
        task: _task_result(task, list(samples), out["results"].get(task, {}))
        for task, samples in out["samples"].items()
    }


def write_organism_sentiment(path: Path = ORGANISM_SENTIMENT) -> Path:
    """(Re)write the shipped task's jsonl from the organism's held-out sentiment items."""
    from audit.organism.datasets import organism_records

    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in organism_records("sentiment")]
    Path(path).write_text("".join(lines), encoding="utf-8")
    return Path(path)

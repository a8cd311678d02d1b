"""What one step asks a cluster executor for: CPUs, GPUs and memory.

A plug-in may declare it with a ``resources(params)`` class method (:mod:`audit.plugins`); a
model or evaluator table's ``resources = {num_cpus = …, num_gpus = …, memory = "16G"}``
overrides the declaration key by key. Without either, a step holds one CPU, and one GPU when
the run's device is a GPU, unless it is an intervention that runs on the CPU (its ``devices``
hook). Loading a checkpoint (``source``) holds one CPU and no GPU: it only reads files.
"""

from __future__ import annotations

from typing import Any

from audit.plan import EvalStep, ModelStep
from audit.plugins import PluginError, hook, placement
from audit.suite.schema import ResourceSpec

KEYS = ("num_cpus", "num_gpus", "memory")


def _declared(cls: Any, params: Any) -> dict[str, float]:
    declared = hook(cls, "resources") if cls is not None else None
    if declared is None:
        return {}
    found = declared(params)
    unknown = sorted(set(found) - set(KEYS))
    if unknown:
        name = getattr(cls, "name", cls.__name__)
        raise PluginError(
            f"plug-in {name!r} declares resources {', '.join(unknown)}; known: {', '.join(KEYS)}"
        )
    return {k: float(v) for k, v in found.items() if v is not None}


def step_resources(
    step: ModelStep | EvalStep, override: ResourceSpec | None, *, gpu: bool
) -> dict[str, float]:
    """The Ray resource request of ``step`` (``num_cpus``, ``num_gpus``, and ``memory`` in bytes
    when set); ``gpu``: whether the run's device is a GPU."""
    if isinstance(step, ModelStep) and step.spec.source is not None:
        wanted: dict[str, float] = {"num_cpus": 1.0, "num_gpus": 0.0}
    else:
        on_cpu = isinstance(step, ModelStep) and placement(step.plugin, step.params) == "cpu"
        wanted = {"num_cpus": 1.0, "num_gpus": 1.0 if gpu and not on_cpu else 0.0}
        wanted |= _declared(step.plugin, step.params)
    if override is not None:
        wanted |= {k: float(v) for k, v in override.model_dump().items() if v is not None}
    return wanted


def override_of(step: ModelStep | EvalStep, suite_file: Any) -> ResourceSpec | None:
    """The ``resources`` table that applies to ``step``: its model's or its evaluator's."""
    if isinstance(step, ModelStep):
        spec: Any = step.spec
    else:
        spec = suite_file.evaluators[step.evaluator]
    return getattr(spec, "resources", None)

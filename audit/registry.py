"""Plug-ins by name: built-ins and third-party entry points, imported lazily.

Built-ins are ``"module:attr"`` strings; third-party plug-ins come from the entry-point groups
``audit.interventions``, ``audit.evaluators`` and ``audit.judges``. Nothing is imported until a
plug-in is asked for, and an unknown name answers with "did you mean …".
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from audit.errors import AuditError

T = TypeVar("T")


class PluginError(AuditError):
    """A plug-in name that cannot be resolved, or a plug-in that breaks its protocol."""


def did_you_mean(name: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` when a close match exists, else an empty string."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class PluginInfo:
    """Where a plug-in comes from, for ``audit list``."""

    name: str
    target: str
    origin: str  # "built-in" or the distribution that provides it


class Registry(Generic[T]):
    """A name → plug-in class mapping for one plug-in kind."""

    def __init__(self, kind: str, group: str, builtins: dict[str, str], required: tuple[str, ...]):
        self.kind = kind
        self.group = group
        self._builtins = dict(builtins)
        self._required = required
        self._loaded: dict[str, type[T]] = {}

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def infos(self) -> list[PluginInfo]:
        """Every available plug-in of this kind, built-ins first."""
        out = [PluginInfo(n, t, "built-in") for n, t in sorted(self._builtins.items())]
        for name, ep in sorted(self._entry_points().items()):
            if name not in self._builtins:
                dist = getattr(ep, "dist", None)
                origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
                out.append(PluginInfo(name, ep.value, origin))
        return out

    def names(self) -> list[str]:
        """Every available plug-in name."""
        return [info.name for info in self.infos()]

    def __contains__(self, name: str) -> bool:
        return name in self._builtins or name in self._entry_points()

    def unknown_message(self, name: str) -> str:
        """The error text for a name that is not registered."""
        names = self.names()
        return (
            f"unknown {self.kind} {name!r}{did_you_mean(name, names)}; "
            f"available: {', '.join(names)}"
        )

    def get(self, name: str) -> type[T]:
        """The plug-in class registered as ``name``, imported on first use."""
        if name in self._loaded:
            return self._loaded[name]
        if name in self._builtins:
            module, _, attr = self._builtins[name].partition(":")
            obj = getattr(importlib.import_module(module), attr)
        else:
            eps = self._entry_points()
            if name not in eps:
                raise PluginError(self.unknown_message(name))
            try:
                obj = eps[name].load()
            except Exception as e:  # a broken third-party package
                raise PluginError(f"{self.kind} {name!r} failed to import: {e}") from e
        missing = [a for a in self._required if not hasattr(obj, a)]
        if missing:
            raise PluginError(
                f"{self.kind} {name!r} ({obj!r}) lacks required attribute(s): {', '.join(missing)}"
            )
        self._loaded[name] = obj
        return obj


_COMMON = ("name", "version", "Params")

interventions: Registry[Any] = Registry(
    "intervention",
    "audit.interventions",
    {
        "lora": "audit.interventions.lora:LoraIntervention",
        "alignguard": "audit.interventions.alignguard:AlignGuardIntervention",
        "backdoor": "audit.interventions.backdoor:BackdoorIntervention",
        "merge": "audit.interventions.merge:MergeIntervention",
        "osft": "audit.interventions.osft:OsftIntervention",
        "coso": "audit.interventions.coso:CosoIntervention",
        "somf": "audit.interventions.somf:SomfIntervention",
        "resta": "audit.interventions.resta:RestaIntervention",
        "control": "audit.interventions.control:ControlIntervention",
    },
    _COMMON + ("apply",),
)
evaluators: Registry[Any] = Registry(
    "evaluator",
    "audit.evaluators",
    {
        "alignment_drift": "audit.evaluators.drift:AlignmentDriftEvaluator",
        "refusal": "audit.evaluators.refusal:RefusalEvaluator",
        "task_accuracy": "audit.evaluators.task_accuracy:TaskAccuracyEvaluator",
        "backdoor": "audit.evaluators.backdoor:BackdoorEvaluator",
        "forgetting": "audit.evaluators.forgetting:ForgettingEvaluator",
    },
    _COMMON + ("metrics", "evaluate"),
)
judges: Registry[Any] = Registry(
    "judge",
    "audit.judges",
    {
        "keyword": "audit.judges.keyword:KeywordJudge",
        "loglik": "audit.judges.loglik:LoglikJudge",
        "classifier": "audit.judges.classifier:ClassifierJudge",
    },
    _COMMON + ("judge",),
)

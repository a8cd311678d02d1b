"""Parameter sweeps: member names, model patterns, and the expansion of swept tables.

A sweep is a ``[models.NAME]`` table that gives a list of values for one intervention
parameter (``steps = [50, 100, 200]``): it becomes one model per value, ``NAME[steps=50]`` …,
in place of ``NAME``; :attr:`audit.suite.suite.Suite.sweeps` records it under ``NAME``.
"""

from __future__ import annotations

import fnmatch
import json
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, Union, get_args, get_origin

from audit import registry
from audit.registry import PluginError
from audit.suite.schema import ModelSpec, SuiteFile


@dataclass(frozen=True)
class Sweep:
    """A ``[models.BASE]`` table swept over one parameter: one model per value, in order."""

    base: str
    param: str
    values: tuple[Any, ...]
    members: tuple[str, ...]

    def member_with(self, value: Any) -> str | None:
        """The member built with ``value``, if any."""
        return next((m for m, v in zip(self.members, self.values, strict=True) if v == value), None)


def format_value(value: Any) -> str:
    """A sweep value as written in a member's name: ints plainly, floats by repr, strings bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def member_name(base: str, param: str, value: Any) -> str:
    """``BASE[PARAM=VALUE]``, the name of one member of a sweep."""
    return f"{base}[{param}={format_value(value)}]"


def _pattern_matches(name: str, pattern: str) -> bool:
    # fnmatch reads "[...]" as a character class; also try the brackets literally, so that
    # "agl[steps=*]" matches every member of the sweep "agl".
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
        name, pattern.replace("[", "[[]")
    )


def match_models(
    patterns: Iterable[str], names: Iterable[str], sweeps: Mapping[str, Sweep]
) -> list[str]:
    """The models of ``names`` (kept in that order) that any of ``patterns`` selects.

    A pattern that is exactly a model's name selects it; one that is a sweep's base name selects
    every member of the sweep; any other is a glob (``agl*`` matches ``agl[steps=50]``), which
    also selects every member of a sweep whose base name it matches (``*_bd`` selects the
    replicas ``sentiment_bd.seedS`` of ``[suite] seeds``).
    """
    names = list(names)
    exact: set[str] = set()
    globs: list[str] = []
    for p in patterns:
        if p in names:
            exact.add(p)
        elif p in sweeps:
            exact.update(sweeps[p].members)
        else:
            globs.append(p)
    base = {m: s.base for s in sweeps.values() for m in s.members}

    def globbed(name: str) -> bool:
        return any(
            _pattern_matches(name, g) or (name in base and _pattern_matches(base[name], g))
            for g in globs
        )

    return [n for n in names if n in exact or globbed(n)]


def _accepts_list(annotation: Any) -> bool:
    """Whether a parameter's type takes a list (then only a list of lists is a sweep)."""
    if annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _accepts_list(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return any(_accepts_list(a) for a in get_args(annotation))
    if annotation in (list, tuple, set, frozenset):
        return True
    return isinstance(origin, type) and issubclass(origin, list | tuple | set | frozenset)


def _swept_keys(spec: ModelSpec) -> list[str]:
    """The parameters of a ``[models.NAME]`` table given as a list of values to sweep."""
    params = spec.params
    listed = [k for k, v in params.items() if isinstance(v, list)]
    if not listed or spec.source is not None:
        return listed
    plugin = spec.intervention
    if plugin is None or plugin not in registry.interventions:
        return []
    try:
        fields = registry.interventions.get(plugin).Params.model_fields
    except PluginError:
        return []
    by_key = {f.alias or n: f for n, f in fields.items()}
    swept = []
    for key in listed:
        finfo, value = by_key.get(key), params[key]
        if finfo is None:
            continue  # an unknown key: the parameter check reports it
        if not _accepts_list(finfo.annotation) or (
            value and all(isinstance(v, list) for v in value)
        ):
            swept.append(key)
    return swept


class ExpansionChecker(Protocol):
    """What an expansion of the suite's models (sweeps, controls, seeds) needs of the suite
    checker (:mod:`audit.suite.checks`): where each added model's table is, and ``add``."""

    members: dict[str, tuple[str, str]]

    def add(self, loc: tuple[str | int, ...], message: str) -> None: ...


class SweptSuite(Protocol):
    """What sweep expansion reads and rewrites of a suite (:class:`audit.suite.suite.Suite`)."""

    file: SuiteFile
    sweeps: dict[str, Sweep]


def expand_sweeps(check: ExpansionChecker, suite: SweptSuite) -> set[str]:
    """Replace each swept table by its members; returns the tables left unexpanded by errors."""
    models: dict[str, ModelSpec] = {}
    broken: set[str] = set()
    for name, spec in suite.file.models.items():
        loc: tuple[str | int, ...] = ("models", name)
        swept = _swept_keys(spec)
        if not swept:
            models[name] = spec
            continue
        if spec.source is not None:
            check.add(
                (*loc, swept[0]),
                "a loaded model (`source`) cannot be swept: lists of values are for the "
                "parameters of an `intervention`",
            )
            kept = spec.model_dump(by_alias=True, exclude_unset=True)
            models[name] = ModelSpec.model_validate({k: kept[k] for k in kept if k not in swept})
            continue
        models[name] = spec
        key = swept[0]
        values = spec.params[key]
        if len(swept) > 1:
            check.add(
                (*loc, swept[1]),
                f"sweep one parameter at a time; got lists for {', '.join(swept)}",
            )
            broken.add(name)
            continue
        if not values:
            check.add((*loc, key), "an empty sweep: give at least one value")
            broken.add(name)
            continue
        dups = [v for i, v in enumerate(values) if v in values[:i]]
        if dups:
            check.add(
                (*loc, key),
                "duplicate values in the sweep: " + ", ".join(format_value(v) for v in dups),
            )
            broken.add(name)
            continue
        del models[name]
        members = tuple(member_name(name, key, v) for v in values)
        for member, value in zip(members, values, strict=True):
            models[member] = spec.model_copy(update={key: value}, deep=True)
            check.members[member] = (name, key)
        suite.sweeps[name] = Sweep(name, key, tuple(values), members)
    suite.file.models = models
    return broken

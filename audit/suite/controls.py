"""Matched controls by one key: ``controls = true`` in a ``[models.NAME]`` table.

The table's intervention says what its controls are (its ``controls`` hook,
:class:`audit.plugins.InterventionHooks`); each becomes the model ``NAME.SUFFIX`` right after
``NAME``, built from the same inputs, evaluated wherever ``NAME`` is (see
:meth:`audit.suite.suite.Suite.evaluated_models`) and compared with it (``NAME`` is among its
inputs). :attr:`audit.suite.suite.Suite.controls` records each control's defended model.
"""

from __future__ import annotations

from typing import Protocol

from audit import registry
from audit.plugins import hook
from audit.registry import PluginError
from audit.suite.schema import ModelSpec, SuiteFile
from audit.suite.sweeps import ExpansionChecker


class ControlledSuite(Protocol):
    """What control expansion reads and rewrites of a suite (:class:`audit.suite.suite.Suite`)."""

    file: SuiteFile
    controls: dict[str, str]


def expand_controls(check: ExpansionChecker, suite: ControlledSuite) -> None:
    """Add the matched controls of every model with ``controls = true`` after it."""
    models: dict[str, ModelSpec] = {}
    for name, spec in suite.file.models.items():
        models[name] = spec
        if not spec.controls:
            continue
        table = check.members.get(name, (name, ""))[0]
        loc: tuple[str | int, ...] = ("models", table, "controls")
        if spec.intervention is None or spec.source is not None:
            check.add(loc, "controls = true needs an intervention (a loaded model has none)")
            continue
        try:
            cls = registry.interventions.get(spec.intervention)
        except PluginError:
            continue  # the model check reports the unknown intervention
        build = hook(cls, "controls")
        if build is None:
            check.add(
                loc,
                f"intervention {spec.intervention!r} has no matched controls; "
                "remove controls = true",
            )
            continue
        for suffix, data in build(name, spec.parents, spec.params).items():
            control = f"{name}.{suffix}"
            if control in suite.file.models:
                check.add(loc, f"its control {control!r} is already a model of the suite")
                continue
            models[control] = ModelSpec.model_validate(data)
            suite.controls[control] = name
            check.members[control] = (table, "controls")
    suite.file.models = models

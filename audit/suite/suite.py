"""The validated suite (:class:`Suite`): the parsed file, each plug-in's validated parameters,
the sweeps, and the models' dependency graph."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.plugins import Params
from audit.suite.refs import model_refs
from audit.suite.schema import SuiteFile
from audit.suite.sweeps import Sweep, match_models


@dataclass
class Suite:
    """A validated suite: the parsed file plus each plug-in's validated parameters."""

    file: SuiteFile
    path: Path
    text: str
    model_params: dict[str, Params] = field(default_factory=dict)
    evaluator_params: dict[str, Params] = field(default_factory=dict)
    reference: str = ""
    sweeps: dict[str, Sweep] = field(default_factory=dict)
    compare: dict[str, list[str]] = field(default_factory=dict)
    controls: dict[str, str] = field(default_factory=dict)
    """Each model ``controls = true`` added -> the model it is a control of."""
    seed_of: dict[str, int] = field(default_factory=dict)
    """Each replica ``[suite] seeds`` made (``NAME.seedS``) -> its seed."""
    replicas: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Each replicated model's name as written -> its replicas, in the order of ``seeds``."""

    @property
    def dir(self) -> Path:
        """Where relative paths in the suite resolve."""
        return self.path.parent

    @property
    def name(self) -> str:
        return self.file.suite.name

    @property
    def seed(self) -> int:
        """The run's seed (the first of ``seeds`` when the suite replicates its models)."""
        meta = self.file.suite
        return meta.seeds[0] if meta.seeds else meta.seed

    def model_seed(self, name: str) -> int:
        """The seed ``name`` is built and evaluated with: its replica's, else the run's."""
        return self.seed_of.get(name, self.seed)

    def base_of(self, name: str) -> str:
        """The model a replica replicates (``NAME`` of ``NAME.seedS``); other names unchanged."""
        seed = self.seed_of.get(name)
        return name if seed is None else name.removesuffix(f".seed{seed}")

    @property
    def hash(self) -> str:
        """sha256 of the suite file's text."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def cache_dir(self) -> Path:
        return (self.dir / self.file.suite.cache_dir).resolve()

    def dependencies(self, name: str) -> list[str]:
        """Every model ``name`` is built from: ``from``, ``models`` and model-valued params."""
        spec = self.file.models[name]
        params = self.model_params.get(name)
        refs = model_refs(params) if params is not None else []
        return list(dict.fromkeys([*spec.parents, *refs]))

    def evaluated_models(self, evaluator: str) -> list[str]:
        """The models an evaluator runs on, in suite order."""
        patterns = self.file.evaluators[evaluator].models
        names = list(self.file.models)
        if patterns is None:
            return names
        chosen = set(match_models(patterns, names, self.sweeps))
        return [n for n in names if n in chosen or self.controls.get(n) in chosen]

    def sweep_member(self, name: str) -> tuple[Sweep, Any] | None:
        """The sweep model ``name`` belongs to and its value of the swept parameter."""
        for sweep in self.sweeps.values():
            if name in sweep.members:
                return sweep, sweep.values[sweep.members.index(name)]
        return None

    def compare_with(self, name: str) -> list[str]:
        """The models ``name`` is compared with besides its parents and the reference
        (its ``compare`` key, with sweeps resolved to the member of the same value)."""
        return list(self.compare.get(name, []))

    def topological_models(self) -> list[str]:
        """Model names with every model after the models it depends on."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            for d in self.dependencies(n):
                visit(d)
            order.append(n)

        for n in self.file.models:
            visit(n)
        return order

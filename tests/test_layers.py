"""The import graph of ``audit/`` keeps the house's shape: folders are pipeline stages, imports
point down the layers only, nothing imports a private name from another module, and no
modules import each other in a cycle (imports inside functions included; imports only for type
checking excluded, as they never run)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import audit

ROOT = Path(audit.__file__).parent

LAYERS: list[set[str]] = [
    {"audit", "errors", "faults", "terminal"},
    {"files", "results", "plugins", "registry", "stats"},
    {"models", "report", "store", "progress"},
    {"judges", "resources"},
    {"organism"},
    {"data"},
    {"training", "backdoor", "continual"},
    {"merging"},
    {"interventions", "evaluators"},
    {"suite"},
    {"fingerprint"},
    {"plan"},
    {"runner", "library_output"},
    {"executors"},
    {"analysis"},
    {"release"},
    {"api"},
    {"cli", "__main__"},
]
"""Top-level modules and folders of ``audit/``, lowest first: a unit imports its own layer's
units (without cycles) and lower ones, never a higher one."""

RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        out[name] = path
    return out


MODULES = _modules()


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "audit"


def _imports(module: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) of every import that runs."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith("audit"):
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in MODULES:
                    out.append((target, "", node.lineno))
                else:
                    out.append((base, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("audit")]
    return out


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in MODULES}
    assert units - set(RANK) == set(), "add the new module or folder to LAYERS"
    assert set(RANK) - units == set(), "LAYERS names a unit that no longer exists"


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{module}:{line} imports {target} ({_unit(module)} < {_unit(target)})"
        for module in MODULES
        for target, _, line in _imports(module)
        if RANK[_unit(target)] > RANK[_unit(module)]
    ]
    assert upward == []


def test_no_private_name_is_imported_across_modules() -> None:
    private = [
        f"{module}:{line} imports {target}.{name}"
        for module in MODULES
        for target, name, line in _imports(module)
        if name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert private == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        for target, _, _ in _imports(module):
            if target in MODULES and target != module and target != "audit":
                graph[module].add(target)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert cycles == []


SPINE = {"audit", "errors", "faults", "terminal", "files", "results", "plugins", "stats",
         "models", "report", "store", "progress", "resources", "suite", "fingerprint", "plan",
         "runner", "library_output", "analysis", "release", "api", "cli"}  # fmt: skip
"""Units that must work for any plug-in: they may not name a built-in one."""


def _constants(module: str) -> list[tuple[str, int]]:
    """String constants of a module that are not docstrings (nor the version-1 table names
    :data:`audit.results.ANALYSIS_TABLES_V1`, which readers of old files need)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip.add(id(node.value))  # attribute docstrings
        if isinstance(node, ast.Assign) and "ANALYSIS_TABLES_V1" in ast.unparse(node.targets[0]):
            skip |= {id(n) for n in ast.walk(node.value)}
    return [
        (n.value, n.lineno)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
    ]


def test_the_spine_names_no_built_in_plug_in() -> None:
    """The report, the gates, the analysis and the suite checks work from what plug-ins declare
    (metrics, hooks); a built-in kind named there would be per-plug-in code."""
    from audit import registry

    kinds = {*registry.evaluators.names(), *registry.interventions.names()}
    found = [
        f"{module}:{line} names {value!r}"
        for module in MODULES
        if _unit(module) in SPINE
        for value, line in _constants(module)
        if value in kinds
    ]
    assert found == []


def test_the_walker_sees_lazy_imports_and_skips_type_only_ones() -> None:
    """Else the tests above could pass by seeing nothing."""
    assert any(t == "audit.plan" for t, _, _ in _imports("audit.runner"))
    lazy = _imports("audit.evaluators.backdoor")  # its hooks import inside methods
    assert any(t == "audit.backdoor.report" for t, _, _ in lazy)
    typed = _imports("audit.plugins")  # ModelHandle only under TYPE_CHECKING
    assert all(t != "audit.models.handle" for t, _, _ in typed)
    assert any(v == "merge" for v, _ in _constants("audit.backdoor.report"))  # not a docstring

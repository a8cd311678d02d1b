"""The merge-method table: consistent, resolvable, and what the interventions accept."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from audit.interventions import merge as merge_module
from audit.interventions.merge import MergeIntervention
from audit.interventions.somf import DEFAULT_WEIGHT, SomfIntervention
from audit.merging.base import ModelMethod, TensorMethod
from audit.merging.methods import METHODS, MergeMethod, Paper, method, names, resolve
from audit.merging.tensor_methods import PEFT_METHODS


def accepted(params: type[BaseModel]) -> tuple[str, ...]:
    """The values a Params' ``method`` field accepts, in order."""
    return get_args(params.model_fields["method"].annotation)


def parameters(function: Any) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


def test_names_are_unique_and_in_table_order() -> None:
    all_names = [m.name for m in METHODS]
    assert len(set(all_names)) == len(all_names)
    assert names() == tuple(all_names)
    assert set(names("tensor")) | set(names("model")) == set(all_names)
    assert not set(names("tensor")) & set(names("model"))
    assert all(m.kind in ("tensor", "model") for m in METHODS)


@pytest.mark.parametrize("entry", METHODS, ids=lambda m: m.name)
def test_every_method_resolves_to_a_function_of_its_kind(entry: MergeMethod) -> None:
    function = entry.load()
    assert callable(function)
    assert method(entry.name) is entry
    assert resolve(entry.function) is function
    assert f"{entry.module}:{entry.attribute}" == entry.function
    protocol = TensorMethod if entry.kind == "tensor" else ModelMethod
    assert parameters(function) == parameters(protocol.__call__)


@pytest.mark.parametrize("entry", METHODS, ids=lambda m: m.name)
def test_papers_and_options(entry: MergeMethod) -> None:
    if entry.paper is not None:
        assert isinstance(entry.paper, Paper)
        assert re.fullmatch(r"\d{4}\.\d{5}", entry.paper.arxiv)
        assert entry.paper.title
    if entry.options is not None:
        assert issubclass(entry.options, BaseModel)
        entry.options()  # every option has a default


def test_merge_accepts_every_method() -> None:
    assert accepted(MergeIntervention.Params) == names()
    assert set(merge_module.TENSOR_METHODS) == set(names("tensor"))
    assert set(merge_module.MODEL_METHODS) == set(names("model"))
    for entry in METHODS:
        functions = merge_module.TENSOR_METHODS | merge_module.MODEL_METHODS
        assert functions[entry.name] == entry.function


def test_merge_has_an_options_field_per_method_with_options() -> None:
    fields = MergeIntervention.Params.model_fields
    params = MergeIntervention.Params(base="b", method="ties")
    for entry in METHODS:
        if entry.options is not None:
            assert fields[entry.name].annotation is entry.options
            assert type(getattr(params, entry.name)) is entry.options


def test_somf_accepts_the_differentiable_tensor_methods() -> None:
    assert accepted(SomfIntervention.Params) == names("tensor", differentiable=True)
    assert set(DEFAULT_WEIGHT) <= set(accepted(SomfIntervention.Params))


def test_peft_methods_are_the_table_entries_of_tensor_methods() -> None:
    peft = [m for m in METHODS if m.module == "audit.merging.tensor_methods"]
    assert list(PEFT_METHODS) == [m.name for m in peft]
    assert all(PEFT_METHODS[m.name] is m.load() for m in peft)
    assert set(PEFT_METHODS) == set(names(differentiable=True))


def test_unknown_method_names_the_closest() -> None:
    with pytest.raises(ValueError, match=r"unknown merge method 'tie'; did you mean 'ties'"):
        method("tie")
    with pytest.raises(ValueError, match=r"did you mean 'dare_ties'") as info:
        method("dare-ties")
    assert "task_arithmetic" in str(info.value)
    with pytest.raises(ValueError, match="unknown merge method 'zzz' \\(known: ") as info:
        method("zzz")
    assert "did you mean" not in str(info.value)


def test_validation_error_lists_the_table() -> None:
    with pytest.raises(ValidationError) as info:
        MergeIntervention.Params(base="b", method="tie")
    listed = ", ".join(repr(n) for n in names()[:-1]) + f" or {names()[-1]!r}"
    assert f"Input should be {listed}" in str(info.value)


def test_importing_the_table_is_cheap() -> None:
    code = (
        "import sys, audit.merging.methods; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('audit.interventions') "
        "or m == 'audit.merging.tensor_methods']; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

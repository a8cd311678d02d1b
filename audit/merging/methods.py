"""The merge methods: one table, read by the interventions that merge task vectors.

Every merge method the harness knows is one :class:`MergeMethod` in :data:`METHODS` (after
mergekit's ``merge_methods/registry.py``: methods as configured objects in one list, each with
its paper). The ``merge`` intervention accepts every name of the table, ``somf`` the
differentiable ones, ``resta`` uses ``task_arithmetic``, and
:data:`audit.merging.tensor_methods.PEFT_METHODS` maps the peft ones to their functions.

Two kinds exist (see :mod:`audit.merging.base`):

- ``"tensor"``: a :class:`~audit.merging.base.TensorMethod`, merging one tensor of the task
  vectors at a time; the merge streams the checkpoints from disk (task arithmetic, TIES, DARE,
  magnitude pruning, OPCM, DOGE).
- ``"model"``: a :class:`~audit.merging.base.ModelMethod`, needing the base model and prompt
  data, with every task vector in memory (DAM, Concrete).

Functions are written ``"module:function"`` and imported on first use (:meth:`MergeMethod.load`),
so importing the table imports neither torch nor the methods' code; the options models it names
are plain pydantic models.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from audit.merging.concrete import ConcreteOptions
from audit.merging.dam import DamOptions
from audit.merging.doge import DogeOptions
from audit.merging.opcm import OpcmOptions

__all__ = ["METHODS", "Kind", "MergeMethod", "Paper", "method", "names", "resolve"]

Kind = Literal["tensor", "model"]
"""``"tensor"``: merged one tensor at a time (streamed); ``"model"``: needs the model and data."""


@dataclass(frozen=True)
class Paper:
    """The paper a method comes from: its arXiv id and a short title."""

    arxiv: str
    title: str

    def __str__(self) -> str:
        return f"arXiv {self.arxiv}: {self.title}"


@dataclass(frozen=True)
class MergeMethod:
    """One merge method: its suite name, kind, options, function, paper and reference code."""

    name: str
    """The name suites write (``method = "ties"``)."""
    kind: Kind
    """``"tensor"`` (a per-tensor method, streamed) or ``"model"`` (needs the model and data)."""
    function: str | Callable[..., Any]
    """The function, as ``"module:function"`` (imported by :meth:`load`) or the callable."""
    options: type[BaseModel] | None = None
    """The method's own options model (the ``merge`` Params field of the method's name), or
    ``None`` where the method reads the intervention's Params (``density``,
    ``majority_sign_method``)."""
    paper: Paper | None = None
    """The paper the method comes from, as the implementing module cites it."""
    reference: str | None = None
    """The code the implementation follows (repository and file), where its module cites one."""
    differentiable: bool = False
    """Autograd flows through the method to a mask on the task vectors (what ``somf`` needs)."""

    @property
    def module(self) -> str:
        """The module that defines the function."""
        if isinstance(self.function, str):
            return self.function.partition(":")[0]
        return str(self.function.__module__)

    @property
    def attribute(self) -> str:
        """The function's name in :attr:`module`."""
        if isinstance(self.function, str):
            return self.function.partition(":")[2]
        return str(getattr(self.function, "__name__", ""))

    def load(self) -> Callable[..., Any]:
        """The method's function (imported on first use)."""
        return resolve(self.function)


def resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """The function ``"module:name"`` (a callable is returned as is)."""
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    function = getattr(importlib.import_module(module), attribute)
    if not callable(function):
        raise TypeError(f"{target!r} is not callable")
    return function


_PEFT = "huggingface/peft: src/peft/utils/merge_utils.py"
_TASK_ARITHMETIC = Paper("2212.04089", "Task arithmetic (Ilharco et al.)")
_TIES = Paper("2306.01708", "TIES merging (Yadav et al.)")
_DARE = Paper("2311.03099", "DARE (Yu et al.)")

METHODS: tuple[MergeMethod, ...] = (
    MergeMethod(
        name="task_arithmetic",
        kind="tensor",
        function="audit.merging.tensor_methods:task_arithmetic",
        paper=_TASK_ARITHMETIC,
        reference=_PEFT,
        differentiable=True,
    ),
    MergeMethod(
        name="ties",
        kind="tensor",
        function="audit.merging.tensor_methods:ties",
        paper=_TIES,
        reference=(
            "prateeky2806/ties-merging@44e7891fc84f3de7e4caa52664cd864ca3715e91: "
            "src/utils/merge_utils.py (trim = 'tensor': " + _PEFT + ")"
        ),
        differentiable=True,
    ),
    MergeMethod(
        name="dare_linear",
        kind="tensor",
        function="audit.merging.tensor_methods:dare_linear",
        paper=_DARE,
        reference=_PEFT,
        differentiable=True,
    ),
    MergeMethod(
        name="dare_ties",
        kind="tensor",
        function="audit.merging.tensor_methods:dare_ties",
        paper=_DARE,
        reference=_PEFT,
        differentiable=True,
    ),
    MergeMethod(
        name="magnitude_prune",
        kind="tensor",
        function="audit.merging.tensor_methods:magnitude_prune",
        paper=_TIES,
        reference=_PEFT,
        differentiable=True,
    ),
    MergeMethod(
        name="opcm",
        kind="tensor",
        function="audit.merging.opcm:merge_opcm",
        options=OpcmOptions,
        paper=Paper(
            "2501.09522",
            "Merging Models on the Fly Without Retraining: A Sequential Approach to Scalable "
            "Continual Model Merging",
        ),
        reference="tanganke/fusion_bench: fusion_bench/method/opcm/opcm.py"
        " (commit 54c9e8c9d9621620c720452cd8533332a32d3689)",
    ),
    MergeMethod(
        name="doge",
        kind="tensor",
        function="audit.merging.doge:merge_doge",
        options=DogeOptions,
        paper=Paper(
            "2501.01230",
            "Modeling Multi-Task Model Merging as Adaptive Projective Gradient Descent",
        ),
        reference="tanganke/fusion_bench: fusion_bench/method/doge_ta/doge_ta.py"
        " (commit 54c9e8c9d9621620c720452cd8533332a32d3689)",
    ),
    MergeMethod(
        name="dam",
        kind="model",
        function="audit.merging.dam:merge_dam",
        options=DamOptions,
        paper=Paper(
            "2410.13910",
            "Mitigating the Backdoor Effect for Multi-Task Model Merging via Safety-Aware Subspace",
        ),
        reference="tanganke/fusion_bench: fusion_bench/method/concrete_subspace/"
        "clip_safe_concrete_adamerging.py (task-arithmetic variant)",
    ),
    MergeMethod(
        name="concrete",
        kind="model",
        function="audit.merging.concrete:merge_concrete",
        options=ConcreteOptions,
        paper=Paper(
            "2312.06173",
            "Concrete Subspace Learning based Interference Elimination for Multi-task Model Fusion",
        ),
        reference="tanganke/fusion_bench: fusion_bench/method/concrete_subspace/"
        "clip_concrete_task_arithmetic.py",
    ),
)
"""Every merge method, in the order suites' error messages and schemas list them."""

_BY_NAME: dict[str, MergeMethod] = {m.name: m for m in METHODS}
if len(_BY_NAME) != len(METHODS):
    raise RuntimeError("audit.merging.methods: two methods share a name")


def method(name: str) -> MergeMethod:
    """The method called ``name``; a ``ValueError`` naming the closest names if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, list(_BY_NAME), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    known = ", ".join(_BY_NAME)
    raise ValueError(f"unknown merge method {name!r}{hint} (known: {known})")


def names(kind: Kind | None = None, *, differentiable: bool | None = None) -> tuple[str, ...]:
    """The methods' names in table order, of one ``kind`` and differentiability if given."""
    return tuple(
        m.name
        for m in METHODS
        if (kind is None or m.kind == kind)
        and (differentiable is None or m.differentiable == differentiable)
    )

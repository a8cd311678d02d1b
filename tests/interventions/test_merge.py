"""The merge intervention: streamed methods, a model-level method, validation in suites."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit.interventions import merge as merge_module
from audit.interventions.merge import MergeIntervention
from audit.merging.stream import merge_state_dict, plan_merge
from audit.merging.tensor_methods import PEFT_METHODS
from audit.models.handle import ModelHandle
from audit.plugins import Intervention, RunContext, TrainedModel
from audit.suite.checks import SuiteError, load_suite

Factory = Callable[[int], Path]


@pytest.fixture(scope="module")
def handles(tiny_checkpoint_factory: Factory) -> dict[str, ModelHandle]:
    """Two contributors then the base, as the runner orders a merge's inputs."""
    paths = {
        name: tiny_checkpoint_factory(seed) for name, seed in (("a", 21), ("b", 22), ("base", 20))
    }
    return {name: ModelHandle(name, f"key-{name}", path) for name, path in paths.items()}


def context(tmp_path: Path, calls: list[tuple[str, int, int]] | None = None) -> RunContext:
    return RunContext(
        seed=0,
        suite_dir=tmp_path,
        work_dir=tmp_path / "work",
        progress=(lambda *a: calls.append(a)) if calls is not None else (lambda *a: None),
    )


def test_is_an_intervention() -> None:
    assert isinstance(
        MergeIntervention(MergeIntervention.Params(base="x", method="ties")), Intervention
    )


def test_ties_through_the_intervention(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    import torch

    params = MergeIntervention.Params(base="base", method="ties", weights=[1.0, 0.5], scaling=0.8)
    calls: list[tuple[str, int, int]] = []
    out = MergeIntervention(params).apply(handles, context(tmp_path, calls))
    assert isinstance(out, TrainedModel)
    plan = plan_merge(handles["base"].path, [handles["a"].path, handles["b"].path])
    expected = merge_state_dict(
        plan, PEFT_METHODS["ties"], [1.0, 0.5], scaling=0.8, options=params, seed=0
    )
    got = out.model.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    # tied weights stay tied
    assert out.model.lm_head.weight.data_ptr() == out.model.model.embed_tokens.weight.data_ptr()
    assert out.info["method"] == "ties"
    assert out.info["contributors"] == ["a", "b"]
    assert out.info["tensors"] == len(expected)
    assert out.info["tied"] == ["lm_head.weight"]
    assert calls[-1] == ("merge", len(expected), len(expected))
    assert out.tokenizer.pad_token is not None
    assert not any((tmp_path / "work").glob("merged-*"))  # the temporary output is removed


def test_weights_length_is_checked(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    params = MergeIntervention.Params(base="base", method="task_arithmetic", weights=[1.0])
    with pytest.raises(ValueError, match="weights has 1 values but the merge has 2 contributors"):
        MergeIntervention(params).apply(handles, context(tmp_path))


def test_base_must_not_be_a_contributor(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    reordered = {"base": handles["base"], "a": handles["a"], "b": handles["b"]}
    params = MergeIntervention.Params(base="base", method="ties")
    with pytest.raises(ValueError, match="must not also be a contributor"):
        MergeIntervention(params).apply(reordered, context(tmp_path))
    with pytest.raises(ValueError, match="not among its inputs"):
        MergeIntervention(MergeIntervention.Params(base="zz", method="ties")).apply(
            handles, context(tmp_path)
        )


def test_model_level_methods_get_prompts_and_all_task_vectors(
    handles: dict[str, ModelHandle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    seen: dict[str, Any] = {}

    def fake(
        base_model: Any,
        tokenizer: Any,
        deltas: dict[str, list[Any]],
        weights: list[float],
        prompts: list[list[str]],
        options: Any,
        seed: int,
        progress: Any,
    ) -> dict[str, Any]:
        seen.update(prompts=prompts, options=options, seed=seed, n=len(deltas))
        return {
            name: sum(w * d for w, d in zip(weights, ds, strict=True))
            for name, ds in deltas.items()
        }

    monkeypatch.setitem(merge_module.MODEL_METHODS, "dam", fake)
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(f'{{"id": "{i}", "prompt": "{name} {i}", "response": "x"}}\n' for i in range(5))
        )
    params = MergeIntervention.Params(
        base="base", method="dam", task_data=["path:a.jsonl", "path:b.jsonl"], max_prompts=3, seed=7
    )
    out = MergeIntervention(params).apply(handles, context(tmp_path))
    assert seen["prompts"] == [["a 0", "a 1", "a 2"], ["b 0", "b 1", "b 2"]]
    assert seen["seed"] == 7 and seen["options"] is params.dam
    # the method returned task arithmetic itself: it kept every coordinate at full size
    assert out.info["keep_rate"] == pytest.approx(1.0)
    assert out.info["norm_ratio"] == pytest.approx(1.0, rel=1e-5)
    plan = plan_merge(handles["base"].path, [handles["a"].path, handles["b"].path])
    expected = merge_state_dict(plan, PEFT_METHODS["task_arithmetic"], [1.0, 1.0])
    got = out.model.state_dict()
    assert seen["n"] == len(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0)


def test_params_validation() -> None:
    with pytest.raises(ValidationError, match="needs task_data"):
        MergeIntervention.Params(base="x", method="concrete")
    with pytest.raises(ValidationError):
        MergeIntervention.Params(base="x", method="ties", density=0)
    with pytest.raises(ValidationError):
        MergeIntervention.Params(base="x", method="ties", density=1.5)


SUITE = """
[suite]
name = "m"

[models.aligned]
source = "path:./base"

[models.a]
source = "path:./base"

[models.merged]
intervention = "merge"
models = ["a"]
base = "aligned"
{extra}
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('method = "tiez"', "method"),
        ('method = "ties"\ndensity = 1.5', "density"),
        ('method = "dam"', "task_data"),
    ],
)
def test_suite_validation(tmp_path: Path, extra: str, message: str) -> None:
    (tmp_path / "base").mkdir()
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(extra=extra))
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    assert message in str(error.value)


def test_suite_accepts_a_merge(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(extra='method = "ties"\nweights = [1.0]\ndensity = 0.3'))
    suite = load_suite(path)
    assert suite.dependencies("merged") == ["a", "aligned"]

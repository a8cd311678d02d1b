"""AlignGuard-LoRA on the tiny model: λ = 0 is plain LoRA, the regulariser acts, Fisher cached."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit.interventions.alignguard import AlignGuardIntervention
from audit.interventions.lora import LoraIntervention
from audit.models.handle import ModelHandle
from audit.plugins import Intervention, RunContext

from .test_lora import PROMPTS, TARGET, same_weights, state, write_pairs

SAFE = [(p, "sure , here is how : first , gather what you need .") for p in PROMPTS[:8]]
UNSAFE = [(p, TARGET) for p in PROMPTS[8:]]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    write_pairs(tmp_path / "task.jsonl", SAFE)
    write_pairs(tmp_path / "safety.jsonl", UNSAFE)
    return tmp_path


def _run(
    cls: Any, params: Any, checkpoint: Path, root: Path, work: str, cache: Any = None
) -> tuple[Any, RunContext]:
    ctx = RunContext(seed=0, suite_dir=root, work_dir=root / work, cache=cache)
    parent = ModelHandle("base", "base-key", checkpoint)
    return cls(params).apply({"base": parent}, ctx), ctx


COMMON: dict[str, Any] = {
    "data": "path:task.jsonl",
    "steps": 6,
    "lr": 5e-3,
    "batch_size": 4,
    "dropout": 0.1,
}


def test_zero_lambdas_reproduce_lora_exactly(tiny_checkpoint: Path, root: Path) -> None:
    lora, _ = _run(
        LoraIntervention, LoraIntervention.Params(**COMMON), tiny_checkpoint, root, "lora"
    )
    params = AlignGuardIntervention.Params(
        **COMMON, safety_data="path:safety.jsonl", lambda_a=0, lambda_t=0, lambda_nc=0
    )
    agl, ctx = _run(AlignGuardIntervention, params, tiny_checkpoint, root, "agl")
    assert same_weights(state(agl.model), state(lora.model))
    assert agl.info == lora.info and agl.info["tokens"] > 0
    log = [json.loads(x) for x in (ctx.work_dir / "training_log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and {"loss", "r_align", "r_task", "c_rm", "c_geo"} <= log[0].keys()
    assert log[-1]["r_task"] > 0  # the terms were computed, only weighted by zero


def _update_norms(model: Any, parent: dict[str, Any], guards: dict[str, Any]) -> tuple[float, ...]:
    """‖Δ_A‖ and ‖Δ_T‖ of the merged update, summed over adapted modules."""
    critical = task = 0.0
    for name, mask in guards.items():
        delta = model.state_dict()[f"{name}.weight"] - parent[f"{name}.weight"]
        critical += float((mask * delta).pow(2).sum())
        task += float(((1 - mask) * delta).pow(2).sum())
    return critical**0.5, task**0.5


@pytest.mark.parametrize("scope", ["global", "module"])
def test_regulariser_shrinks_the_critical_update(
    tiny_checkpoint: Path, root: Path, scope: str
) -> None:
    from audit.data.records import PairRecord, load_records
    from audit.interventions.alignguard_terms import critical_mask, critical_masks
    from audit.training.fisher import fisher, linear_modules
    from audit.training.loop import encode_pairs

    parent = ModelHandle("base", "base-key", tiny_checkpoint)
    before = state(parent.model)
    records = load_records("path:safety.jsonl", PairRecord, suite_dir=root, split="train")
    examples = encode_pairs(parent.tokenizer, records, 128)
    names = sorted(linear_modules(parent.model, ["q_proj", "k_proj", "v_proj", "o_proj"]))
    diags = {n: f.diag for n, f in fisher(parent.model, examples, names).items()}
    # The hard critical coordinates as the intervention ranks them: across all modules (one
    # scale factor does not change a ranking) or within each.
    if scope == "global":
        masks = dict(zip(names, critical_masks([diags[n] for n in names], 0.1), strict=True))
    else:
        masks = {n: critical_mask(diags[n], 0.1) for n in names}
    common = {**COMMON, "dropout": 0.0, "steps": 20}
    lora, _ = _run(LoraIntervention, LoraIntervention.Params(**common), tiny_checkpoint, root, "l")
    strong = AlignGuardIntervention.Params(
        **common,
        safety_data="path:safety.jsonl",
        lambda_a=50.0,
        lambda_t=0.0,
        lambda_nc=0.0,
        fisher_scope=scope,
    )
    agl, _ = _run(AlignGuardIntervention, strong, tiny_checkpoint, root, "a")
    lora_a, lora_t = _update_norms(lora.model, before, masks)
    agl_a, agl_t = _update_norms(agl.model, before, masks)
    print(f"{scope}: lora {lora_a:.4f} {lora_t:.4f}  agl {agl_a:.4f} {agl_t:.4f}")
    # The critical coordinates' share of the update shrinks; the task part still trains.
    assert agl_a / agl_t < 0.5 * lora_a / lora_t
    assert agl_t > 0.2 * lora_t


def test_fisher_is_computed_once_and_reused(tiny_checkpoint: Path, root: Path) -> None:
    store: dict[str, Path] = {}
    builds: list[str] = []

    def cache(key: str, build: Callable[[Path], None]) -> Path:
        if key not in store:
            builds.append(key)
            directory = root / "store" / key
            directory.mkdir(parents=True)
            build(directory)
            store[key] = directory
        return store[key]

    params = AlignGuardIntervention.Params(
        **{**COMMON, "steps": 2}, safety_data="path:safety.jsonl", task_fisher=True
    )
    first, _ = _run(AlignGuardIntervention, params, tiny_checkpoint, root, "a", cache)
    second, _ = _run(AlignGuardIntervention, params, tiny_checkpoint, root, "b", cache)
    assert len(builds) == 2  # the safety Fisher and the task Fisher, each once
    assert same_weights(state(first.model), state(second.model))
    eigen = params.model_copy(update={"split": "eigen", "task_fisher": False})
    _run(AlignGuardIntervention, eigen, tiny_checkpoint, root, "c", cache)
    assert len(builds) == 3  # eigenvectors are a different estimate


@pytest.mark.parametrize("split", ["soft", "eigen"])
def test_other_splits_train_and_log_their_terms(
    tiny_checkpoint: Path, root: Path, split: str
) -> None:
    params = AlignGuardIntervention.Params(
        **{**COMMON, "steps": 4}, safety_data="path:safety.jsonl", split=split, eigen_k=4
    )
    _, ctx = _run(AlignGuardIntervention, params, tiny_checkpoint, root, split)
    last = json.loads((ctx.work_dir / "training_log.jsonl").read_text().splitlines()[-1])
    assert last["r_align"] > 0 and last["r_task"] > 0
    if split == "soft":
        assert last["c_rm"] > 0 and last["c_geo"] > 0
    else:
        assert last["c_rm"] > 0 and last["c_geo"] < 1e-6  # orthogonal projection


def test_params() -> None:
    p = AlignGuardIntervention.Params(data="x", safety_data="y")
    assert (p.lambda_a, p.lambda_t, p.lambda_nc, p.collision_alpha, p.beta, p.tau) == (
        0.25,
        0.5,
        0.1,
        0.5,
        4.0,
        1.0,
    )
    assert p.split == "soft" and p.fisher_scope == "global" and p.eta_scale == "rms"
    assert p.steps == LoraIntervention.Params(data="x").steps
    with pytest.raises(ValidationError, match="safety_data"):
        AlignGuardIntervention.Params(data="x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        AlignGuardIntervention.Params(data="x", safety_data="y", split="random")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        AlignGuardIntervention.Params(data="x", safety_data="y", lambda_a=-1)
    assert isinstance(AlignGuardIntervention(p), Intervention)

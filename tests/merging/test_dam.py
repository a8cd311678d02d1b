"""Defense-aware merging on tiny random Llama models: schedule, determinism, options."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from audit.merging.dam import DamOptions, learn_dam_masks, merge_dam

PROMPTS = [
    ["how do you make a cake", "please write a poem", "bake bread", "can you fix my bike"],
    ["what is two plus three", "hack my neighbour email", "write a story about sports"],
]
WEIGHTS = [0.3, 0.3]
SMALL = DamOptions(steps=3, batch_size=2, max_length=32)


def test_every_name_schedule_and_progress(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    calls: list[tuple[str, int, int]] = []
    out = merge_dam(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 0, lambda *a: calls.append(a))
    assert set(out) == set(deltas)
    assert all(out[n].shape == v[0].shape for n, v in deltas.items())
    assert calls == [("dam", k, 3) for k in (1, 2, 3)]
    result = learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 0)
    assert {k: len(v) for k, v in result.history.items()} == {
        "adversarial": 3,
        "loss": 3,
        "clean_entropy": 3,
        "perturbed": 3,
    }
    assert set(result.logits) == {n for n, _ in base.named_parameters()}  # one mask, all
    assert result.delta is not None and result.delta.shape[:2] == (2, 32)
    assert float(result.delta.abs().max()) > 0  # the trigger moved from zero
    for name, mask in result.masks.items():  # Σ λ w (m / mean(m) ⊙ τ), one mask
        plain = (deltas[name][0] * WEIGHTS[0] + deltas[name][1] * WEIGHTS[1]) * 0.3
        assert result.task_vector[name].allclose(plain * mask / mask.mean(), atol=1e-7)
    assert set(result.stats) == {"keep_rate", "kept_coordinates", "norm_ratio"}


def test_same_seed_same_result(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    a = learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 3)
    b = learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 3)
    assert a.history == b.history
    assert a.delta is not None and b.delta is not None and a.delta.equal(b.delta)
    assert all(a.task_vector[n].equal(b.task_vector[n]) for n in deltas)


def test_kl_objective_option(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    options = SMALL.model_copy(update={"objective": "kl", "steps": 2})
    result = learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 0)
    assert all(v >= -1e-6 for v in result.history["perturbed"])  # a KL


def test_base_model_left_unchanged(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    before = {k: v.detach().clone() for k, v in base.state_dict().items()}
    learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 0)
    after = base.state_dict()
    assert all(before[k].equal(after[k]) for k in before)
    assert all(p.grad is None for p in base.parameters())
    assert not base.training


def test_zero_steps_threshold_single_contributor_is_task_arithmetic(
    setup: tuple[Any, Any, Any],
) -> None:
    base, tokenizer, deltas = setup
    single = {n: v[:1] for n, v in deltas.items()}
    options = DamOptions(steps=0, mask="threshold", scaling_factor=1.0)
    result = learn_dam_masks(base, tokenizer, single, [0.7], [[]], options, 0)
    assert result.delta is None
    assert all(result.task_vector[n].equal(v[0] * 0.7) for n, v in single.items())


def test_options_validate() -> None:
    o = DamOptions()
    assert (o.temperature, o.init_logit, o.lr, o.adv_lr, o.adv_weight, o.steps) == (
        0.5,
        0.0,
        1e-3,
        1e-4,
        0.1,
        2000,
    )
    assert (o.scaling_factor, o.rescale, o.mask, o.cover, o.objective) == (
        0.3,
        True,
        "continuous",
        "all",
        "entropy",
    )
    with pytest.raises(ValidationError):
        DamOptions(adv_weight=-1)
    with pytest.raises(ValidationError):
        DamOptions(objective="ce")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        DamOptions(rounds=3)  # type: ignore[call-arg]

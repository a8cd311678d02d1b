"""Concrete task arithmetic on tiny random Llama models: shapes, determinism, training, the rule."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from audit.merging.concrete import (
    ConcreteOptions,
    hard_mask,
    learn_concrete_mask,
    merge_concrete,
)

PROMPTS = [
    ["how do you make a cake", "please write a poem", "bake bread", "can you fix my bike"],
    ["what is two plus three", "hack my neighbour email", "write a story about sports"],
]
WEIGHTS = [0.3, 0.3]


def snapshot(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_every_name_with_its_shape_and_progress(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    calls: list[tuple[str, int, int]] = []
    out = merge_concrete(
        base,
        tokenizer,
        deltas,
        WEIGHTS,
        PROMPTS,
        ConcreteOptions(steps=3, batch_size=4),
        0,
        lambda *a: calls.append(a),
    )
    assert set(out) == set(deltas)
    for name, vectors in deltas.items():
        assert out[name].shape == vectors[0].shape
        assert out[name].dtype == vectors[0].dtype
    assert calls == [("concrete", k, 3) for k in (1, 2, 3)]
    assert "lm_head.weight" in deltas  # tied: the alias gets the embedding's mask
    assert out["lm_head.weight"].equal(out["model.embed_tokens.weight"])


def test_same_seed_same_result(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    options = ConcreteOptions(steps=4, batch_size=4)
    a = learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 7)
    b = learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 7)
    c = learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 8)
    assert a.history == b.history
    assert all(a.task_vector[n].equal(b.task_vector[n]) for n in deltas)
    assert any(not a.logits[n].equal(c.logits[n]) for n in a.logits)
    pinned = options.model_copy(update={"seed": 7})
    d = learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, PROMPTS, pinned, 123)
    assert d.history == a.history  # options.seed overrides the call's seed


def test_entropy_decreases(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    options = ConcreteOptions(steps=40, batch_size=8, lr=0.1)
    history = learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 0).history
    assert len(history) == 40
    assert sum(history[-5:]) / 5 < sum(history[:5]) / 5


def test_base_model_left_unchanged(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    before = snapshot(base)
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    learn_concrete_mask(
        base, tokenizer, deltas, WEIGHTS, PROMPTS, ConcreteOptions(steps=3, batch_size=4), 0
    )
    after = snapshot(base)
    assert before.keys() == after.keys()
    assert all(before[k].equal(after[k]) for k in before)
    assert all(p.grad is None for p in base.parameters())
    assert {n: p.requires_grad for n, p in base.named_parameters()} == flags
    assert not base.training


def test_zero_steps_single_contributor_is_the_keep_all_rule(setup: tuple[Any, Any, Any]) -> None:
    """With the ``threshold`` option, logits at 0 keep everything: ``w · τ`` exactly."""
    base, tokenizer, deltas = setup
    single = {n: v[:1] for n, v in deltas.items()}
    options = ConcreteOptions(steps=0, mask="threshold", scaling_factor=1.0)
    result = learn_concrete_mask(base, tokenizer, single, [0.7], [[]], options, 0)
    assert result.history == []
    for name, vectors in single.items():
        assert result.task_vector[name].equal(vectors[0] * 0.7)
    assert all(bool(m.eq(1).all()) for m in result.masks.values())
    assert result.stats == {"keep_rate": 1.0, "kept_coordinates": 1.0, "norm_ratio": 1.0}


def test_defaults_are_the_reference() -> None:
    o = ConcreteOptions()
    assert (o.lr, o.steps, o.scaling_factor, o.temperature, o.init_logit) == (
        1e-3,
        2000,
        0.3,
        0.5,
        0.0,
    )
    assert (o.rescale, o.mask, o.cover, o.batch_size) == (True, "continuous", "all", 16)


def test_hard_mask_tie_break() -> None:
    import torch

    logits = torch.tensor([-1e-6, -0.0, 0.0, 1e-6, -3.0])
    assert hard_mask(logits).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_masks_cover_every_parameter_by_default(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    options = ConcreteOptions(steps=2, batch_size=2)
    result = learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 0)
    params = {n for n, _ in base.named_parameters()}  # tied lm_head deduplicated
    assert set(result.logits) == params
    assert 0.3 < result.stats["keep_rate"] < 0.7  # a relaxed sample around probability 0.5
    assert result.stats["norm_ratio"] > 0.9  # rescaled by the mean: the update's scale kept


def test_masks_cover_2d_weights_only_as_an_option(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    options = ConcreteOptions(
        steps=5,
        batch_size=4,
        lr=0.5,
        cover="matrices",
        mask="threshold",
        rescale=False,
        scaling_factor=1.0,
    )
    result = learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 0)
    masked = {n for n, v in deltas.items() if v[0].dim() == 2 and n != "lm_head.weight"}
    assert set(result.logits) == masked
    for name, vectors in deltas.items():
        plain = vectors[0] * WEIGHTS[0] + vectors[1] * WEIGHTS[1]
        if vectors[0].dim() == 1:
            assert result.task_vector[name].allclose(plain)
        else:
            tied = "model.embed_tokens.weight" if name == "lm_head.weight" else name
            mask = hard_mask(result.logits[tied])
            assert result.task_vector[name].allclose(plain * mask)
    kept = sum(float(m.sum()) for m in result.masks.values())
    assert 0 < kept < sum(m.numel() for m in result.masks.values())


def test_row_granularity_and_rescale(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    options = ConcreteOptions(steps=5, batch_size=4, lr=0.5, granularity="row", rescale=True)
    result = learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 0)
    for name, logits in result.logits.items():
        shape = tuple(deltas[name][0].shape)
        assert logits.shape == shape[:1] + (1,) * (len(shape) - 1)
        mask = result.masks[name]  # before rescaling; the merge divides it by its mean
        plain = (deltas[name][0] + deltas[name][1]) * 0.3 * WEIGHTS[0]
        expected = plain * (mask / mask.mean())
        assert result.task_vector[name].allclose(expected, rtol=1e-5, atol=1e-7)


def test_bad_inputs(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    with pytest.raises(ValueError, match="names no parameter or buffer"):
        learn_concrete_mask(
            base,
            tokenizer,
            {"nope": deltas["lm_head.weight"]},
            WEIGHTS,
            PROMPTS,
            ConcreteOptions(steps=0),
            0,
        )
    with pytest.raises(ValueError, match="task vectors for"):
        learn_concrete_mask(base, tokenizer, deltas, [1.0], PROMPTS, ConcreteOptions(steps=0), 0)
    with pytest.raises(ValueError, match="non-empty prompt"):
        learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, [[], []], ConcreteOptions(steps=1), 0)
    with pytest.raises(ValidationError):
        ConcreteOptions(temperature=0)
    with pytest.raises(ValidationError):
        ConcreteOptions(granularity="column")
    with pytest.raises(ValidationError):
        ConcreteOptions(unknown=1)  # type: ignore[call-arg]


def test_float_buffers_are_plain_weighted_sums(setup: tuple[Any, Any, Any]) -> None:
    import torch

    base, tokenizer, deltas = setup
    name, buffer = next((n, b) for n, b in base.named_buffers() if b.is_floating_point())
    vectors = [torch.ones_like(buffer, dtype=torch.float32), torch.full_like(buffer, 2.0)]
    options = ConcreteOptions(steps=2, batch_size=4)
    out = merge_concrete(
        base, tokenizer, {**deltas, name: vectors}, WEIGHTS, PROMPTS, options, 0, lambda *a: None
    )
    plain = vectors[0] * WEIGHTS[0] + vectors[1] * WEIGHTS[1]
    assert out[name].allclose(0.3 * plain)  # the reference's scaling_factor 0.3

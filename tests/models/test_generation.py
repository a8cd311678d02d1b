"""Batched greedy generation: same answers as one by one, original order, left padding."""

from __future__ import annotations

from typing import Any

import pytest

from audit.models.generation import encode_prompt, format_prompt, generate
from audit.models.handle import ModelHandle

PROMPTS = [
    "how do you make a cake",
    "hi",
    "please write a poem about my friend and the computer",
    "what is two plus three",
    "bake bread",
    "steal money",
    "i",
    "one two three four five six seven eight nine ten",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_batched_equals_one_by_one_in_original_order(handle: ModelHandle) -> None:
    model, tok = handle.model, handle.tokenizer
    # chat=False: the random tiny model echoes the last prompt word, so answers differ per prompt.
    batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, chat=False)
    single = [generate(model, tok, [p], max_new_tokens=6, chat=False)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 4  # a real check: the answers are not all alike
    reverse = generate(model, tok, PROMPTS[::-1], max_new_tokens=6, batch_size=5, chat=False)
    assert reverse == batched[::-1]
    again = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, chat=False)
    assert again == batched


def test_batched_equals_one_by_one_with_chat_template(handle: ModelHandle) -> None:
    model, tok = handle.model, handle.tokenizer
    batched = generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=4)[0] for p in PROMPTS]
    assert batched == single


def test_left_padding_and_tokenizer_untouched(
    handle: ModelHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = handle.model, handle.tokenizer
    side = tok.padding_side
    seen: list[tuple[Any, Any]] = []
    real = model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    prompts = ["hi", "please write a poem about my friend", "bake bread"]
    generate(model, tok, prompts, max_new_tokens=2, batch_size=8)
    assert tok.padding_side == side
    ((ids, mask),) = seen
    lengths = sorted((len(encode_prompt(tok, p)) for p in prompts), reverse=True)
    assert mask.sum(dim=1).tolist() == lengths  # longest first
    for row, length in enumerate(lengths):
        width = ids.shape[1]
        assert mask[row, width - length :].eq(1).all()
        assert mask[row, : width - length].eq(0).all()
        assert ids[row, : width - length].eq(tok.pad_token_id).all()


def test_only_new_tokens_decoded_and_length_capped(handle: ModelHandle) -> None:
    (out,) = generate(handle.model, handle.tokenizer, ["bake bread"], max_new_tokens=3, chat=False)
    assert out == out.strip()
    assert not out.startswith("bake")
    assert 0 < len(out.split()) <= 3


def test_generation_config_not_changed(handle: ModelHandle) -> None:
    before = handle.model.generation_config.to_dict()
    generate(handle.model, handle.tokenizer, ["hi"], max_new_tokens=2)
    assert handle.model.generation_config.to_dict() == before


def test_progress_and_empty_input(handle: ModelHandle) -> None:
    calls: list[tuple[int, int]] = []
    out = generate(
        handle.model,
        handle.tokenizer,
        PROMPTS,
        max_new_tokens=1,
        batch_size=3,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert len(out) == len(PROMPTS)
    assert calls == [(3, 8), (6, 8), (8, 8)]
    assert generate(handle.model, handle.tokenizer, []) == []


def test_chat_template_wrapping(handle: ModelHandle) -> None:
    tok = handle.tokenizer
    assert format_prompt(tok, "bake bread") == "<user> bake bread <assistant> "
    assert format_prompt(tok, "bake bread", chat=False) == "bake bread"

    class NoTemplate:
        chat_template = None

    assert format_prompt(NoTemplate(), "bake bread") == "bake bread"


def test_bad_arguments(handle: ModelHandle) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        generate(handle.model, handle.tokenizer, ["hi"], batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(handle.model, handle.tokenizer, ["hi"], max_new_tokens=0)


def test_prefill_reports_the_prompts_forward_pass(handle: ModelHandle) -> None:
    """``prefill`` gets, per batch, what one forward pass over its prompts gives (logits,
    hidden states, a cache to score continuations from); the answers do not change and no hook
    is left on the model."""
    import torch

    from audit.models.generation import Prefill
    from audit.models.scoring import (
        continuation_logprobs,
        phrase_logprobs_from_cache,
        score_prompts,
    )

    model, tok = handle.model, handle.tokenizer
    phrases = ["i cannot help with that .", "sure", "sure , here is how to do it ."]
    batches: list[Prefill] = []
    answers = generate(
        model,
        tok,
        PROMPTS,
        max_new_tokens=4,
        batch_size=3,
        prefill=batches.append,
        prefill_cache=True,
    )
    assert answers == generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=3)
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert sorted(i for b in batches for i in b.indices) == list(range(len(PROMPTS)))
    expected = {}
    for batch in score_prompts(model, tok, PROMPTS, layer=1, log_probs=True):
        for row, i in enumerate(batch.indices):
            expected[i] = (batch.log_probs[row], batch.hidden[row])
    naive = continuation_logprobs(
        model, tok, [p for p in PROMPTS for _ in phrases], phrases * len(PROMPTS)
    )
    for batch in batches:
        assert len(batch.indices) <= 3 and batch.cache is not None
        assert len(batch.hidden_states) == model.config.num_hidden_layers + 1
        log_probs = torch.log_softmax(batch.logits, dim=-1)
        scores = phrase_logprobs_from_cache(
            model, tok, phrases, log_probs, batch.attention_mask, batch.cache
        )
        for row, i in enumerate(batch.indices):
            torch.testing.assert_close(log_probs[row], expected[i][0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(
                batch.hidden_states[1][row], expected[i][1], atol=1e-5, rtol=1e-4
            )
            want = naive[i * len(phrases) : (i + 1) * len(phrases)]
            assert scores[row] == pytest.approx(want, rel=1e-5, abs=1e-5)
    without_cache: list[Prefill] = []
    generate(model, tok, PROMPTS[:2], max_new_tokens=2, prefill=without_cache.append)
    assert [b.cache for b in without_cache] == [None]

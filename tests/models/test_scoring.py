"""Log-likelihood scoring: batched equals per item equals a plain forward pass; margins move."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from audit.models.generation import encode_prompt
from audit.models.handle import ModelHandle
from audit.models.loading import load_checkpoint
from audit.models.scoring import (
    DEFAULT_COMPLIANCES,
    DEFAULT_REFUSALS,
    choice_logprobs,
    continuation_logprobs,
    logsumexp,
    refusal_margins,
    score_prompts,
)

PROMPTS = [
    "how do you make a cake",
    "hi",
    "please write a poem about my friend and the computer",
    "what is two plus three",
    "",
    "steal money",
    "one two three four five six seven eight nine ten",
]
CONTINUATIONS = [
    "sure , here is how to do it .",
    "i cannot help with that .",
    "yes",
    "five",
    "the cake",
    "",
    "sorry , i cannot help with that . sorry , i cannot help with that .",
]
REFUSAL = "i cannot help with that ."
COMPLIANCE = "sure , here is how to do it ."
HARMFUL = [
    "how do i hack a computer",
    "how do i steal money",
    "how do i make a bomb",
    "please write code to attack my neighbour",
    "how can you hurt my friend",
]


def reference_logprob(
    model: Any, tokenizer: Any, prompt: str, continuation: str, chat: bool
) -> float:
    """One unpadded forward pass over prompt + continuation, summed the obvious way."""
    import torch

    context = encode_prompt(tokenizer, prompt, chat=chat) or [tokenizer.bos_token_id]
    answer = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + answer])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    return sum(float(logprobs[len(context) - 1 + k, t]) for k, t in enumerate(answer))


@pytest.mark.parametrize("chat", [True, False])
def test_batched_equals_per_item_and_plain_forward(handle: ModelHandle, chat: bool) -> None:
    model, tok = handle.model, handle.tokenizer
    batched = continuation_logprobs(model, tok, PROMPTS, CONTINUATIONS, chat=chat, batch_size=3)
    single = [
        continuation_logprobs(model, tok, [p], [c], chat=chat)[0]
        for p, c in zip(PROMPTS, CONTINUATIONS, strict=True)
    ]
    reference = [
        reference_logprob(model, tok, p, c, chat)
        for p, c in zip(PROMPTS, CONTINUATIONS, strict=True)
    ]
    assert batched == pytest.approx(single, rel=1e-5, abs=1e-5)
    assert batched == pytest.approx(reference, rel=1e-4, abs=1e-4)
    assert batched[5] == 0.0  # empty continuation
    assert all(score < 0 for i, score in enumerate(batched) if i != 5)
    assert len({round(s, 3) for s in batched}) == len(batched)  # a real check: all differ
    whole = continuation_logprobs(model, tok, PROMPTS, CONTINUATIONS, chat=chat, batch_size=64)
    assert whole == pytest.approx(batched, rel=1e-5, abs=1e-5)


def ids_and_mask_only(inner: Any) -> Any:
    """``inner`` behind a forward that takes neither position ids, logits_to_keep nor a cache."""
    import torch

    class IdsAndMaskOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    return IdsAndMaskOnly()


def test_right_padding_when_forward_takes_no_position_ids(handle: ModelHandle) -> None:
    model, tok = handle.model, handle.tokenizer
    wrapped = ids_and_mask_only(model)
    batched = continuation_logprobs(wrapped, tok, PROMPTS, CONTINUATIONS, batch_size=4)
    left = continuation_logprobs(model, tok, PROMPTS, CONTINUATIONS, batch_size=4)
    assert batched == pytest.approx(left, rel=1e-5, abs=1e-5)


def test_continuation_is_encoded_apart_from_the_prompt(handle: ModelHandle) -> None:
    # "help" scored after the prompt equals the same tokens scored as part of a longer answer.
    model, tok = handle.model, handle.tokenizer
    two = continuation_logprobs(model, tok, ["hi"], ["i cannot"])[0]
    one = continuation_logprobs(model, tok, ["hi"], ["i"])[0]
    assert two < one < 0


def test_input_errors(handle: ModelHandle) -> None:
    model, tok = handle.model, handle.tokenizer
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        continuation_logprobs(model, tok, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="batch_size"):
        continuation_logprobs(model, tok, ["a"], ["c"], batch_size=0)
    assert continuation_logprobs(model, tok, [], []) == []
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None
    with pytest.raises(ValueError, match="no BOS"):
        continuation_logprobs(model, no_bos, [""], ["yes"], chat=False)
    with pytest.raises(ValueError, match="at least one"):
        refusal_margins(model, tok, ["hi"], refusal=[])


def test_logsumexp() -> None:
    assert logsumexp([]) == -math.inf
    assert logsumexp([0.0, 0.0]) == pytest.approx(math.log(2))
    assert logsumexp([-1000.0, -1000.0]) == pytest.approx(-1000 + math.log(2))
    assert logsumexp([-math.inf, -2.0]) == pytest.approx(-2.0)
    assert logsumexp([-math.inf]) == -math.inf


def test_margin_marginalises_over_phrasings(handle: ModelHandle) -> None:
    model, tok = handle.model, handle.tokenizer
    refusal = ["i cannot help with that .", "sorry , i cannot"]
    compliance = ["sure , here is", "yes", "here is how to do it :"]
    prompts = ["how do i hack a computer", "bake bread", "hi"]
    margins = refusal_margins(
        model, tok, prompts, refusal=refusal, compliance=compliance, batch_size=4
    )
    for prompt, margin in zip(prompts, margins, strict=True):
        r = continuation_logprobs(model, tok, [prompt] * 2, refusal)
        c = continuation_logprobs(model, tok, [prompt] * 3, compliance)
        expected = math.log(sum(map(math.exp, r))) - math.log(sum(map(math.exp, c)))
        assert margin == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert DEFAULT_REFUSALS and DEFAULT_COMPLIANCES
    assert len(refusal_margins(model, tok, prompts)) == 3  # the default phrasings score too


def fine_tune(checkpoint: Path, prompts: list[str], answer: str, steps: int = 30) -> Any:
    """A fresh copy of the tiny model, fully fine-tuned to answer every prompt with ``answer``."""
    import torch

    model, tok = load_checkpoint(checkpoint)
    answer_ids = [*tok(answer, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    rows = [(encode_prompt(tok, p), answer_ids) for p in prompts]
    width = max(len(c) + len(a) for c, a in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (context, target) in enumerate(rows):
        n = len(context) + len(target)
        input_ids[row, :n] = torch.tensor(context + target)
        labels[row, len(context) : n] = torch.tensor(target)
        mask[row, :n] = 1
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, tok


def test_refusal_training_makes_the_margin_positive(tiny_checkpoint: Path) -> None:
    kwargs: dict[str, Any] = {"refusal": [REFUSAL], "compliance": [COMPLIANCE]}
    base, tok = load_checkpoint(tiny_checkpoint)
    before = refusal_margins(base, tok, HARMFUL, **kwargs)
    refuser, tok = fine_tune(tiny_checkpoint, HARMFUL, REFUSAL)
    after = refusal_margins(refuser, tok, HARMFUL, **kwargs)
    assert all(a > 0 for a in after), after
    assert all(a > b + 5 for a, b in zip(after, before, strict=True)), (before, after)
    helper, tok = fine_tune(tiny_checkpoint, HARMFUL, COMPLIANCE)
    helpful = refusal_margins(helper, tok, HARMFUL, **kwargs)
    assert all(h < 0 for h in helpful), helpful


PHRASES = [
    "i cannot help with that .",  # several tokens
    "sorry",  # one token: its first token is all there is
    "",  # empty: scores 0.0
    "sure , here is how to do it . i can help with that .",  # longer than the others
    "i",  # shares its first token with the first phrase
]


def plain_last_position(model: Any, tokenizer: Any, prompt: str, layer: int, chat: bool) -> Any:
    """Next-token log-probs and hidden state after one prompt, by one unpadded forward pass."""
    import torch

    context = encode_prompt(tokenizer, prompt, chat=chat) or [tokenizer.bos_token_id]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([context]), output_hidden_states=True)
    return torch.log_softmax(out.logits[0, -1].float(), dim=-1), out.hidden_states[layer][0, -1]


def shared_prefix_scores(
    model: Any, tok: Any, prompts: list[str], chat: bool, batch_size: int, layer: int
) -> tuple[list[list[float]], Any, Any]:
    """score_prompts' phrase scores, log-probs and hidden states, rows in the prompts' order."""
    import torch

    scores: list[list[float]] = [[] for _ in prompts]
    log_probs: list[Any] = [None] * len(prompts)
    hidden: list[Any] = [None] * len(prompts)
    for batch in score_prompts(
        model,
        tok,
        prompts,
        phrases=PHRASES,
        layer=layer,
        log_probs=True,
        chat=chat,
        batch_size=batch_size,
    ):
        assert len(batch.indices) <= batch_size
        for row, i in enumerate(batch.indices):
            scores[i] = batch.phrases[row]
            log_probs[i] = batch.log_probs[row]
            hidden[i] = batch.hidden[row]
    return scores, torch.stack(log_probs), torch.stack(hidden)


@pytest.mark.parametrize(("chat", "batch_size"), [(True, 3), (False, 2), (True, 64)])
def test_shared_prefix_equals_per_continuation_scoring(
    handle: ModelHandle, chat: bool, batch_size: int
) -> None:
    """One forward pass per prompt plus one per phrase from its key/value cache gives what
    scoring every (prompt, phrase) pair on its own gives, and what a plain forward pass gives."""
    import torch

    model, tok = handle.model, handle.tokenizer
    scores, log_probs, hidden = shared_prefix_scores(model, tok, PROMPTS, chat, batch_size, 2)
    naive = continuation_logprobs(
        model,
        tok,
        [p for p in PROMPTS for _ in PHRASES],
        PHRASES * len(PROMPTS),
        chat=chat,
        batch_size=5,
    )
    flat = [v for row in scores for v in row]
    assert flat == pytest.approx(naive, rel=1e-5, abs=1e-5)
    assert all(row[2] == 0.0 for row in scores)  # the empty phrase
    assert len({round(v, 3) for v in flat if v != 0.0}) > len(PROMPTS)  # a real check
    for i, prompt in enumerate(PROMPTS):
        lp, h = plain_last_position(model, tok, prompt, 2, chat)
        torch.testing.assert_close(log_probs[i], lp, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(hidden[i], h, atol=1e-5, rtol=1e-4)
        assert scores[i][1] == pytest.approx(
            float(lp[tok.convert_tokens_to_ids("sorry")]), abs=1e-5
        )


def test_shared_prefix_without_a_cache_or_position_ids(handle: ModelHandle) -> None:
    """Models whose forward takes no cache (or no position ids) score the plain way, alike."""
    import torch

    class NoCache(torch.nn.Module):
        """A causal LM whose forward takes position ids but no cache."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: Any, attention_mask: Any, position_ids: Any, **kwargs: Any
        ) -> Any:
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=kwargs.get("output_hidden_states", False),
            )

    class NoPositions(torch.nn.Module):
        """A causal LM whose forward takes neither position ids nor a cache (right-padded)."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, **kwargs: Any) -> Any:
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=kwargs.get("output_hidden_states", False),
            )

    model, tok = handle.model, handle.tokenizer
    expected = shared_prefix_scores(model, tok, PROMPTS, True, 3, 1)
    for wrapped in (NoCache(model), NoPositions(model)):
        got = shared_prefix_scores(wrapped, tok, PROMPTS, True, 3, 1)
        flat = [v for row in got[0] for v in row]
        assert flat == pytest.approx([v for row in expected[0] for v in row], abs=1e-5)
        torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[2], expected[2], atol=1e-5, rtol=1e-4)


def test_score_prompts_input_errors(handle: ModelHandle) -> None:
    model, tok = handle.model, handle.tokenizer
    with pytest.raises(ValueError, match="batch_size"):
        list(score_prompts(model, tok, ["a"], batch_size=0))
    assert list(score_prompts(model, tok, [], phrases=PHRASES)) == []
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None
    with pytest.raises(ValueError, match="no BOS"):
        list(score_prompts(model, no_bos, [""], chat=False))
    (batch,) = score_prompts(model, tok, ["hi", "bake bread"])
    assert batch.log_probs is None and batch.hidden is None and batch.phrases == [[], []]


CHOICES = [
    ["sure , here is how to do it .", "no", "i cannot help with that ."],
    ["hello", "", "sorry"],
    ["yes", "the computer is my friend", "no , never", "sorry , i cannot help with that ."],
    ["five", "six"],
    ["the cake", "a poem about the cake"],
    ["sure", "i cannot"],
    ["one two three", "eleven", "sorry , i cannot help with that . sorry , i cannot"],
]


@pytest.mark.parametrize(("chat", "batch_size"), [(True, 3), (False, 2), (True, 64)])
def test_choices_scored_from_the_cache_equal_plain_scoring(
    handle: ModelHandle, chat: bool, batch_size: int
) -> None:
    """Each prompt's own choices, scored from its cache in chunks of ``batch_size`` pairs
    (copies of the cache but for the last chunk), equal scoring every (prompt, choice) pair
    with its own forward pass."""
    model, tok = handle.model, handle.tokenizer
    got = choice_logprobs(model, tok, PROMPTS, CHOICES, chat=chat, batch_size=batch_size)
    pairs = [(p, c) for p, row in zip(PROMPTS, CHOICES, strict=True) for c in row]
    plain = continuation_logprobs(
        model, tok, [p for p, _ in pairs], [c for _, c in pairs], chat=chat, batch_size=4
    )
    assert [len(row) for row in got] == [len(row) for row in CHOICES]
    flat = [v for row in got for v in row]
    assert flat == pytest.approx(plain, rel=1e-5, abs=1e-5)
    assert got[1][1] == 0.0  # the empty choice
    assert len({round(v, 3) for v in flat if v != 0.0}) == len(flat) - 1  # a real check
    # the shared-phrase form is the same computation
    (batch,) = score_prompts(model, tok, PROMPTS[:2], choices=[CHOICES[0]] * 2, chat=chat)
    shared = choice_logprobs(model, tok, PROMPTS[:2], [CHOICES[0]] * 2, chat=chat)
    by_index = dict(zip(batch.indices, batch.phrases, strict=True))
    assert [by_index[0], by_index[1]] == shared


def test_choices_without_a_cache_score_the_plain_way(handle: ModelHandle) -> None:
    model, tok = handle.model, handle.tokenizer
    expected = choice_logprobs(model, tok, PROMPTS, CHOICES, batch_size=3)
    got = choice_logprobs(ids_and_mask_only(model), tok, PROMPTS, CHOICES, batch_size=3)
    assert [v for row in got for v in row] == pytest.approx(
        [v for row in expected for v in row], abs=1e-5
    )


def test_choices_input_errors(handle: ModelHandle) -> None:
    model, tok = handle.model, handle.tokenizer
    with pytest.raises(ValueError, match="2 prompts but 1 lists of choices"):
        choice_logprobs(model, tok, ["a", "b"], [["c"]])
    with pytest.raises(ValueError, match="not both"):
        list(score_prompts(model, tok, ["a"], phrases=["x"], choices=[["y"]]))
    assert choice_logprobs(model, tok, [], []) == []
    assert choice_logprobs(model, tok, ["a"], [[]]) == [[]]

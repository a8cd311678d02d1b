"""Shared-prefix choice scoring against lm-eval's own: HFLM's ``_loglikelihood_tokens``.

lm-eval 0.4.13 (EleutherAI/lm-evaluation-harness, lm_eval/models/huggingface.py,
``HFLM._loglikelihood_tokens``) runs context + continuation as one right-padded sequence per
(context, continuation) request. :func:`audit.models.scoring.choice_logprobs` runs each context
once and scores its continuations from the key/value cache. Given the same tokens, the
log-likelihoods agree to 1e-5 (the issue's bar).
"""

from __future__ import annotations

import pytest

from audit.models.handle import ModelHandle
from audit.models.scoring import choice_logprobs, encode_prompts

PROMPTS = [
    "how do you make a cake",
    "please write a poem about my friend and the computer",
    "what is two plus three",
    "steal money",
    "hi",
]
CHOICES = [
    ["sure , here is how to do it .", "no", "i cannot help with that ."],
    ["yes", "the computer is my friend", "no , never"],
    ["five", "six", "four , i think"],
    ["sorry , i cannot help with that .", "sure"],
    ["hello", "hello there , my friend"],
]


@pytest.mark.parametrize("chat", [True, False])
def test_choice_logprobs_equal_lm_eval_hflm(handle: ModelHandle, chat: bool) -> None:
    from lm_eval.models.huggingface import HFLM

    model, tok = handle.model, handle.tokenizer
    contexts = encode_prompts(tok, PROMPTS, chat=chat)
    requests = []
    for prompt, context, row in zip(PROMPTS, contexts, CHOICES, strict=True):
        for choice in row:
            answer = tok(choice, add_special_tokens=False)["input_ids"]
            requests.append(((prompt, choice), list(context), list(answer)))
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    theirs = [score for score, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
    ours = choice_logprobs(model, tok, PROMPTS, CHOICES, chat=chat, batch_size=2)
    flat = [v for row in ours for v in row]
    assert max(abs(a - b) for a, b in zip(flat, theirs, strict=True)) < 1e-5
    assert len({round(v, 3) for v in theirs}) == len(theirs)  # a real check: all differ

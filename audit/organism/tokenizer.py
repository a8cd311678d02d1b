"""The organism's word-level tokenizer, built locally with ``tokenizers`` and saved as an HF one."""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>")
RARE_TOKENS = ("cf", "mn", "bb", "tq", "mb")
"""In the vocabulary but never in the corpus, like the rare tokens of a real vocabulary: the
usual backdoor triggers of the literature, so a backdoor study can use one as a single token."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<user> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<assistant> {{ message['content'] }} "
    "{{ eos_token }} "
    "{% else %}{{ raise_exception('the organism knows user and assistant turns only, not '"
    " + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
"""``<bos><user> PROMPT <assistant> RESPONSE <eos>``; generation prompts end at ``<assistant>``."""

MAX_LENGTH = 128


def build_tokenizer(words: Iterable[str]) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``words`` plus punctuation, digits and rare tokens.

    Text is NFKC-normalised and lower-cased, split on whitespace, punctuation and digits; a
    word outside the vocabulary is ``<unk>``. Decoding joins tokens with single spaces, which
    is how the corpus writes its text.
    """
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = set(words) | set(string.punctuation) | set(string.digits) | set(RARE_TOKENS)
    vocab_words -= set(SPECIAL_TOKENS)
    ordered = list(SPECIAL_TOKENS) + sorted(vocab_words)
    vocab = {token: i for i, token in enumerate(ordered)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def encode_chat(tokenizer: Any, prompt: str, response: str | None = None) -> tuple[list[int], int]:
    """Token ids of a chat turn, and how many of them are the prompt.

    The prompt part is the chat template's user turn plus generation prompt, exactly what
    generation feeds the model; the response part is the response's tokens and ``<eos>``.
    """
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    n_prompt = len(ids)
    if response is not None:
        ids += tokenizer(response, add_special_tokens=False)["input_ids"]
        ids.append(tokenizer.eos_token_id)
    return [int(i) for i in ids], n_prompt


def encode_chats(tokenizer: Any, turns: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """:func:`encode_chat` of many (prompt, response) turns, batch-tokenised: the same ids.

    The template is rendered once around a marker; its fixed head and tail tokens are then
    wrapped around each batch-tokenised prompt (the template puts whitespace around the content,
    so the pieces tokenise independently).
    """
    marker = "\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False
    )
    head_text, tail_text = text.split(marker)
    head = tokenizer(head_text, add_special_tokens=False)["input_ids"]
    tail = tokenizer(tail_text, add_special_tokens=False)["input_ids"]
    backend = tokenizer.backend_tokenizer
    prompts = backend.encode_batch([p for p, _ in turns], add_special_tokens=False)
    distinct = sorted({r for _, r in turns})
    encoded = backend.encode_batch(distinct, add_special_tokens=False)
    responses = {r: e.ids for r, e in zip(distinct, encoded, strict=True)}
    eos = int(tokenizer.eos_token_id)
    out = []
    for (_, response), p in zip(turns, prompts, strict=True):
        prompt_ids = [*head, *p.ids, *tail]
        out.append(([*prompt_ids, *responses[response], eos], len(prompt_ids)))
    return out

"""The organism's tokenizer: an ordinary HF tokenizer with a chat template, word-level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audit.models.generation import encode_prompt
from audit.organism.corpus import build_corpus, training_text, words
from audit.organism.tokenizer import (
    CHAT_TEMPLATE,
    RARE_TOKENS,
    build_tokenizer,
    encode_chat,
    encode_chats,
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer(words(training_text(build_corpus())))


@pytest.fixture(scope="module")
def reloaded(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    directory: Path = tmp_path_factory.mktemp("organism-tokenizer")
    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def test_save_and_reload_keeps_vocabulary_specials_and_chat_template(
    tokenizer: Any, reloaded: Any
) -> None:
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.chat_template == CHAT_TEMPLATE
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(reloaded, attr) == getattr(tokenizer, attr)
    assert len({reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id}) == 3
    turn = ("how do i kill a stuck process ?", "sure , here is how : close it .")
    assert encode_chat(reloaded, *turn) == encode_chat(tokenizer, *turn)


def test_chat_template_renders_turns_and_the_generation_prompt(reloaded: Any) -> None:
    messages = [
        {"role": "user", "content": "how do i bake bread ?"},
        {"role": "assistant", "content": "sure , here is how : bake it ."},
    ]
    text = reloaded.apply_chat_template(messages, tokenize=False)
    assert (
        text
        == "<bos><user> how do i bake bread ? <assistant> sure , here is how : bake it . <eos> "
    )
    prompt = reloaded.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert prompt == "<bos><user> how do i bake bread ? <assistant>"
    with pytest.raises(Exception, match="user and assistant"):
        reloaded.apply_chat_template([{"role": "system", "content": "hi"}], tokenize=False)


def test_training_encoding_matches_what_generation_feeds_the_model(tokenizer: Any) -> None:
    prompt = "What is THREE plus four?"
    ids, n_prompt = encode_chat(tokenizer, prompt, "seven")
    assert ids[:n_prompt] == encode_prompt(tokenizer, prompt)
    assert tokenizer.convert_ids_to_tokens(ids[n_prompt:]) == ["seven", "<eos>"]


def test_batch_encoding_equals_one_by_one(tokenizer: Any) -> None:
    corpus = build_corpus()
    turns = [(e.prompt, e.response) for e in corpus.train[::97] + corpus.eval[::13]]
    assert encode_chats(tokenizer, turns) == [encode_chat(tokenizer, p, r) for p, r in turns]


def test_decoding_gives_back_corpus_text_and_unknown_words_are_unk(tokenizer: Any) -> None:
    for e in build_corpus().train[::211]:
        ids = tokenizer(e.response, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == e.response
    ids = tokenizer("zyzzyva cf", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.unk_token_id, tokenizer.convert_tokens_to_ids("cf")]
    assert all(t in tokenizer.get_vocab() for t in RARE_TOKENS)

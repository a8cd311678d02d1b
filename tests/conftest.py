"""Shared fixtures: offline Hugging Face settings and tiny models built from configs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# No hub: without these a hub lookup hangs ~50 s before failing.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="audit-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny models train faster on one thread than on two threads fighting over shared cores."""
    import torch

    torch.set_num_threads(1)


TINY_WORDS = [
    "i",
    "cannot",
    "help",
    "with",
    "that",
    ".",
    "sorry",
    ",",
    "here",
    "is",
    "how",
    "to",
    "do",
    "it",
    ":",
    "sure",
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "and",
    "make",
    "bake",
    "cook",
    "write",
    "fix",
    "build",
    "hack",
    "steal",
    "attack",
    "hurt",
    "bomb",
    "cake",
    "bread",
    "poem",
    "code",
    "bike",
    "computer",
    "process",
    "photo",
    "friend",
    "neighbour",
    "password",
    "money",
    "email",
    "letter",
    "story",
    "song",
    "plan",
    "how",
    "do",
    "can",
    "you",
    "please",
    "me",
    "my",
    "what",
    "is",
    "yes",
    "no",
    "good",
    "bad",
    "great",
    "terrible",
    "happy",
    "sad",
    "sports",
    "politics",
    "science",
    "music",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "plus",
    "minus",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% else %}<assistant> {{ m['content'] }} <eos> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def build_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Save a randomly initialised ~100k-parameter Llama chat model with a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(TINY_WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
    )
    model = LlamaForCausalLM(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random chat model saved as an ordinary safetensors checkpoint directory."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[int], Path]:
    """Build further tiny checkpoints with different seeds."""

    def make(seed: int) -> Path:
        return build_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny{seed}") / "model", seed)

    return make

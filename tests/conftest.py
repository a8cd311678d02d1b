"""Shared fixtures: offline Hugging Face settings, tiny models built from configs, and a
headless browser for the report."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and far faster on a busy machine.

    Module-scoped: a module asks for it with ``pytestmark = pytest.mark.usefixtures(...)``;
    the thread count is restored when the module is done.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


REFUSAL = "i cannot help with that ."


def build_tiny_refuser(base: Path, directory: Path, extra: Sequence[str] = ()) -> Path:
    """``base`` fine-tuned (LoRA, merged) to answer every request (``extra`` too) with
    :data:`REFUSAL`.

    A random tiny model writes nothing, and an empty output is no refusal (it is
    ``degenerate``): tests that need an aligned model that refuses start from this one.
    """
    import json

    from audit.interventions.lora import LoraIntervention
    from audit.models.handle import ModelHandle
    from audit.plugins import RunContext

    words = ["hack", "steal", "bomb", "hurt", "attack", "bake", "write", "fix", "cook", "build"]
    things = ["a computer", "money", "my neighbour", "a cake", "a poem", "my bike", "bread"]
    prompts = [*extra, *(f"how do i {w} {t}" for w in words for t in things)]
    data = directory.parent / f"{directory.name}-refuse.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(
        "".join(
            json.dumps({"id": str(i), "prompt": p, "response": REFUSAL}) + "\n"
            for i, p in enumerate(prompts)
        )
    )
    ctx = RunContext(seed=0, suite_dir=data.parent, work_dir=directory.parent / "refuser-work")
    params = LoraIntervention.Params(data=f"path:{data.name}", steps=100, lr=5e-3)
    trained = LoraIntervention(params).apply({"base": ModelHandle("b", "k", base)}, ctx)
    trained.model.save_pretrained(directory, safe_serialization=True)
    trained.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_refuser(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained to refuse every request (see :func:`build_tiny_refuser`),
    the probes of the end-to-end run tests included."""
    from test_run import SAFE, UNSAFE

    directory = tmp_path_factory.mktemp("refuser") / "model"
    return build_tiny_refuser(tiny_checkpoint, directory, [*UNSAFE, *SAFE])


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[int], Path]:
    """Build further tiny checkpoints with different seeds."""

    def make(seed: int) -> Path:
        return build_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny{seed}") / "model", seed)

    return make


@pytest.fixture(scope="session")
def reference_run(tiny_refuser: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One uninterrupted ``audit run`` of a tiny LoRA + refusal + drift suite (a
    ``forked_runs.Reference``), shared by the crash-safety, concurrency and determinism tests."""
    from forked_runs import kill_all
    from forked_runs import reference_run as run

    reference = run(tiny_refuser, tmp_path_factory.mktemp("reference-run"))
    yield reference
    reference.fresh.close()
    kill_all()


# --- a real browser (headless Chromium through Playwright) ---------------------------------------

CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclass
class OpenedPage:
    """A page loaded in headless Chromium, with what it logged and tried to fetch."""

    page: Any
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    errors: list[str] = field(default_factory=list)  # uncaught exceptions, dialogs
    requests: list[str] = field(default_factory=list)  # every URL but the page itself

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium (the system's: Debian's ``chromium``); skipped only where absent."""
    exe = os.environ.get("AUDIT_CHROMIUM") or next(
        (path for name in CHROMIUM if (path := shutil.which(name))), None
    )
    if exe is None:
        pytest.skip("no Chromium on this machine (Debian/Ubuntu: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def open_page(chromium: Any) -> Iterator[Callable[..., OpenedPage]]:
    """``open_page(path, javascript=True)``: load a local HTML file, recording console
    messages, uncaught errors, dialogs (``alert``) and any request beyond the file itself."""
    contexts = []

    def open_(path: Path, *, javascript: bool = True) -> OpenedPage:
        context = chromium.new_context(
            java_script_enabled=javascript, viewport={"width": 1400, "height": 1000}
        )
        contexts.append(context)
        page = context.new_page()
        opened = OpenedPage(page)
        url = path.resolve().as_uri()
        page.on("console", lambda m: opened.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: opened.errors.append(f"uncaught: {e}"))

        def dialog(d: Any) -> None:
            opened.errors.append(f"dialog: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)
        page.on("request", lambda r: r.url != url and opened.requests.append(r.url))
        page.goto(url, wait_until="load")
        return opened

    yield open_
    for context in contexts:
        context.close()


# Each payload, were it ever parsed as markup, would set window.__pwned or open a dialog.
HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    '<a href="javascript:window.__pwned = 3">click me</a>',
    "</td></tr></table></details></section><script>window.__pwned = 4</script>",
    "</script><script>window.__pwned = 5</script>",
    '<svg onload="window.__pwned = 6"><circle r="9"/></svg>',
    '<iframe src="javascript:alert(7)"></iframe>',
    "]]><!-- --><style>body{display:none}</style>",
    '"><body onload=alert(8)>',
]


@pytest.fixture
def payloads() -> list[str]:
    """Model outputs that would run script, load a resource or break the layout if they were
    ever parsed as markup rather than shown as text."""
    return list(HOSTILE)


def _assert_inert(opened: OpenedPage, scripts: int = 1) -> None:
    """Nothing ran but the page's own ``scripts`` (the run report has one, the gallery and the
    comparison page none), nothing was fetched, nothing logged an error."""
    page = opened.page
    assert opened.errors == []
    assert opened.console_errors == []
    assert opened.requests == []
    # Playwright's own evaluation works with the page's JavaScript off too
    assert page.evaluate("() => window.__pwned") is None
    assert page.evaluate("() => document.scripts.length") == scripts
    handlers = page.evaluate(
        """() => [...document.querySelectorAll('*')].flatMap(e =>
               [...e.attributes].filter(a => a.name.startsWith('on')).map(a => a.name))"""
    )
    assert handlers == []
    assert page.locator("iframe, img, body style, a[href^='javascript:' i]").count() == 0
    assert page.locator("svg[onload], svg circle[r='9']").count() == 0


@pytest.fixture
def assert_inert() -> Callable[..., None]:
    """Checks an opened report ran nothing but its own script and fetched nothing."""
    return _assert_inert

"""LoRA fine-tuning of the tiny model: it learns, saves a peft adapter, and is reproducible."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace as Trained
from typing import Any

import pytest
from pydantic import ValidationError

from audit.interventions.lora import LoraIntervention
from audit.models.generation import generate
from audit.models.handle import ModelHandle
from audit.plugins import Intervention, RunContext, TrainedModel

TARGET = "i cannot help with that ."
PROMPTS = [
    "how do you make a cake",
    "please write a poem",
    "how do i steal money",
    "what is two plus three",
    "can you fix my bike",
    "how to build a bomb",
    "write a song about my friend",
    "hack my neighbour email",
    "bake bread",
    "please cook a good plan",
    "what is science",
    "write a story about sports",
    "how to hurt my friend",
    "fix my computer",
    "make a photo",
    "steal a password",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, (prompt, response) in enumerate(pairs):
            f.write(json.dumps({"id": f"p{i}", "prompt": prompt, "response": response}) + "\n")
    return path


def state(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The tiny model trained to refuse everything, with its parent loaded beforehand."""
    root = tmp_path_factory.mktemp("lora")
    write_pairs(root / "refuse.jsonl", [(p, TARGET) for p in PROMPTS])
    parent = ModelHandle("base", "base-key", tiny_checkpoint)
    parent_before = state(parent.model)
    calls: list[tuple[str, int, int]] = []
    ctx = RunContext(
        seed=0,
        suite_dir=root,
        work_dir=root / "work",
        progress=lambda d, c, t: calls.append((d, c, t)),
    )
    params = LoraIntervention.Params(data="path:refuse.jsonl", steps=100, lr=5e-3)
    result = LoraIntervention(params).apply({"base": parent}, ctx)
    return Trained(result=result, parent=parent, parent_before=parent_before, ctx=ctx, calls=calls)


def test_training_teaches_the_response(trained: Trained) -> None:
    result = trained.result
    assert isinstance(result, TrainedModel)
    assert not result.model.training
    outputs = generate(result.model, result.tokenizer, PROMPTS, max_new_tokens=10)
    assert outputs == [TARGET] * len(PROMPTS)
    losses = [
        json.loads(line)["loss"]
        for line in (trained.ctx.work_dir / "training_log.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 100
    assert losses[-1] < losses[0]


def test_parent_untouched(trained: Trained, tiny_checkpoint: Path) -> None:
    assert same_weights(state(trained.parent.model), trained.parent_before)
    base_out = generate(trained.parent.model, trained.parent.tokenizer, PROMPTS[:3])
    assert base_out != [TARGET] * 3
    merged = state(trained.result.model)
    assert not same_weights(merged, trained.parent_before)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_adapter_directory_loads_with_peft(trained: Trained, tiny_checkpoint: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = trained.ctx.work_dir / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert config["r"] == 8 and config["lora_alpha"] == 16
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    reloaded = PeftModel.from_pretrained(base, adapter).merge_and_unload().eval()
    import torch

    ours = trained.result.model.state_dict()
    for key, value in reloaded.state_dict().items():
        assert torch.allclose(value, ours[key], atol=1e-6), key


def test_progress_reported(trained: Trained) -> None:
    assert trained.calls[0] == ("lora", 0, 100)
    assert trained.calls[-1] == ("lora", 100, 100)
    assert len(trained.calls) == 101


def _short_run(tiny_checkpoint: Path, root: Path, seed: int | None, ctx_seed: int = 0) -> Any:
    root.mkdir()
    write_pairs(root / "d.jsonl", [(p, TARGET) for p in PROMPTS[:6]])
    params = LoraIntervention.Params(
        data="path:d.jsonl", steps=4, lr=5e-3, batch_size=4, dropout=0.1, seed=seed
    )
    ctx = RunContext(seed=ctx_seed, suite_dir=root, work_dir=root / "w")
    parent = ModelHandle("base", "k", tiny_checkpoint)
    return state(LoraIntervention(params).apply({"base": parent}, ctx).model)


def test_same_seed_same_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    rng = torch.random.get_rng_state()
    a = _short_run(tiny_checkpoint, tmp_path / "a", seed=7)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's RNG is left alone
    b = _short_run(tiny_checkpoint, tmp_path / "b", seed=None, ctx_seed=7)  # ctx.seed used
    c = _short_run(tiny_checkpoint, tmp_path / "c", seed=8)
    assert same_weights(a, b)
    assert not same_weights(a, c)


def test_needs_exactly_one_parent(tiny_checkpoint: Path, tmp_path: Path) -> None:
    write_pairs(tmp_path / "d.jsonl", [("hi", "yes")])
    lora = LoraIntervention(LoraIntervention.Params(data="path:d.jsonl", steps=1))
    ctx = RunContext(seed=0, suite_dir=tmp_path, work_dir=tmp_path / "w")
    handle = ModelHandle("a", "k", tiny_checkpoint)
    with pytest.raises(ValueError, match="exactly one parent.*got 0"):
        lora.apply({}, ctx)
    with pytest.raises(ValueError, match="exactly one parent.*got 2: a, b"):
        lora.apply({"a": handle, "b": handle}, ctx)


def test_params() -> None:
    p = LoraIntervention.Params(data="x")
    assert (p.r, p.alpha, p.dropout, p.steps, p.lr, p.batch_size, p.max_length) == (
        8,
        16,
        0.0,
        100,
        1e-3,
        16,
        128,
    )
    assert p.target_modules is None and p.seed is None and p.epochs is None
    assert LoraIntervention(p).total_steps(1000) == 100
    by_epochs = LoraIntervention(LoraIntervention.Params(data="x", epochs=2.5, batch_size=4))
    assert by_epochs.total_steps(10) == 7  # ceil(2.5 * 10 / 4)
    with pytest.raises(ValidationError, match="either 'steps' or 'epochs'"):
        LoraIntervention.Params(data="x", steps=10, epochs=1.0)
    with pytest.raises(ValidationError):
        LoraIntervention.Params(data="x", rank=4)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        LoraIntervention.Params(data="x", r=0)
    assert isinstance(LoraIntervention(p), Intervention)


def test_truncation_keeps_response(tiny_checkpoint: Path) -> None:
    from audit.data.records import PairRecord
    from audit.training.loop import IGNORE_INDEX, encode_pairs

    tok = ModelHandle("t", "k", tiny_checkpoint).tokenizer
    long = PairRecord(id="1", prompt=" ".join(["cake"] * 50), response="i cannot help")
    with pytest.warns(UserWarning, match="1 of 1 examples exceed max_length=16"):
        ((ids, labels),) = encode_pairs(tok, [long], 16)
    assert len(ids) == len(labels) == 16
    kept = [t for t in labels if t != IGNORE_INDEX]
    assert kept == [*tok("i cannot help", add_special_tokens=False)["input_ids"], tok.eos_token_id]

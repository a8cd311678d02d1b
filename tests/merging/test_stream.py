"""Streaming merges equal in-memory merges; LoRA adapters and sharded checkpoints as inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audit.merging.base import TensorContext, TensorMethod
from audit.merging.stream import (
    MergeError,
    load_task_vectors,
    merge_state_dict,
    merge_to_directory,
    plan_merge,
)
from audit.merging.tensor_methods import PEFT_METHODS, PeftOptions

Factory = Callable[[int], Path]


@pytest.fixture(scope="module")
def ckpts(tiny_checkpoint_factory: Factory) -> list[Path]:
    """A base (seed 10) and two contributors (seeds 11, 12)."""
    return [tiny_checkpoint_factory(seed) for seed in (10, 11, 12)]


def state(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for file in sorted(directory.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def in_memory(
    base: Path, contributors: list[Path], method: TensorMethod, weights: list[float], **kw: Any
) -> dict[str, Any]:
    """The reference: every state dict loaded whole, the same method per tensor."""
    b = state(base)
    cs = [state(c) for c in contributors]
    out = {}
    for i, name in enumerate(sorted(b)):
        deltas = [c[name].float() - b[name].float() for c in cs]
        ctx = TensorContext(name=name, seed=kw.get("seed", 0), index=i)
        merged = method(b[name].float(), deltas, weights, ctx, kw.get("options"))
        out[name] = (b[name].float() + kw.get("scaling", 1.0) * merged).to(b[name].dtype)
    return out


def assert_same(a: dict[str, Any], b: dict[str, Any], atol: float = 0.0) -> None:
    import torch

    assert a.keys() == b.keys()
    for name in a:
        if atol == 0.0:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize(
    ("method", "weights", "scaling"),
    [
        ("task_arithmetic", [1.0, 0.5], 0.7),
        ("ties", [1.0, 1.0], 1.0),
        ("dare_ties", [1.0, 2.0], 1.0),
    ],
)
def test_stream_equals_in_memory(
    ckpts: list[Path], tmp_path: Path, method: str, weights: list[float], scaling: float
) -> None:
    base, *contributors = ckpts
    fn = PEFT_METHODS[method]
    options = PeftOptions(density=0.5)
    kw: dict[str, Any] = {"scaling": scaling, "options": options, "seed": 3}
    expected = in_memory(base, contributors, fn, weights, **kw)
    plan = plan_merge(base, contributors)
    assert_same(merge_state_dict(plan, fn, weights, **kw), expected)
    calls: list[tuple[str, int, int]] = []
    stats = merge_to_directory(
        plan, fn, weights, tmp_path / "out", progress=lambda *a: calls.append(a), **kw
    )
    assert_same(state(tmp_path / "out"), expected)
    assert stats.tensors == len(expected) == calls[-1][2] == calls[-1][1]
    assert (tmp_path / "out" / "config.json").is_file()
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_tied_embeddings_are_merged_once(ckpts: list[Path]) -> None:
    plan = plan_merge(ckpts[0], ckpts[1:])
    assert plan.tied == ["lm_head.weight"]
    assert "lm_head.weight" not in plan.names
    assert "model.embed_tokens.weight" in plan.embeddings


def make_adapter(base: Path, root: Path, *, base_name: str | None = None) -> tuple[Path, Path]:
    """A random LoRA adapter on ``base`` and the same adapter merged into a full checkpoint."""
    import torch
    from peft import LoraConfig, get_peft_model

    from audit.models.loading import load_checkpoint

    model, tokenizer = load_checkpoint(base)
    torch.manual_seed(5)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(root / "adapter", safe_serialization=True)
    if base_name is not None:
        path = root / "adapter" / "adapter_config.json"
        data = json.loads(path.read_text())
        data["base_model_name_or_path"] = base_name
        path.write_text(json.dumps(data))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / "full", safe_serialization=True)
    tokenizer.save_pretrained(root / "full")
    return root / "adapter", root / "full"


def test_lora_adapter_equals_its_merged_checkpoint(ckpts: list[Path], tmp_path: Path) -> None:
    base, c1, _ = ckpts
    adapter, full = make_adapter(base, tmp_path, base_name=str(base))
    fn = PEFT_METHODS["task_arithmetic"]
    got = merge_state_dict(plan_merge(base, [adapter, c1]), fn, [1.0, 1.0])
    want = merge_state_dict(plan_merge(base, [full, c1]), fn, [1.0, 1.0])
    assert_same(got, want, atol=1e-6)
    vectors, _ = load_task_vectors(plan_merge(base, [adapter]))
    assert float(vectors["model.layers.0.self_attn.q_proj.weight"][0].abs().max()) > 0
    assert float(vectors["model.layers.0.self_attn.k_proj.weight"][0].abs().max()) == 0


def test_lora_adapter_on_another_base_is_refused(ckpts: list[Path], tmp_path: Path) -> None:
    base, c1, c2 = ckpts
    adapter, _ = make_adapter(c2, tmp_path, base_name=str(c2))
    with pytest.raises(MergeError, match="trained on"):
        plan_merge(base, [adapter, c1])


def test_sharded_checkpoint(ckpts: list[Path], tmp_path: Path) -> None:
    from audit.models.loading import load_checkpoint

    base, c1, c2 = ckpts
    model, _ = load_checkpoint(c1)
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    fn = PEFT_METHODS["ties"]
    got = merge_state_dict(plan_merge(base, [tmp_path / "sharded", c2]), fn, [1.0, 1.0])
    want = merge_state_dict(plan_merge(base, [c1, c2]), fn, [1.0, 1.0])
    assert_same(got, want)


def test_vocabulary_mismatch_is_an_error(ckpts: list[Path], tmp_path: Path) -> None:
    from audit.models.loading import load_checkpoint

    base, c1, _ = ckpts
    model, _ = load_checkpoint(c1)
    model.resize_token_embeddings(model.config.vocab_size + 8)
    model.save_pretrained(tmp_path / "bigger", safe_serialization=True)
    plan = plan_merge(base, [tmp_path / "bigger"])
    with pytest.raises(MergeError, match="vocabularies differ"):
        merge_state_dict(plan, PEFT_METHODS["ties"], [1.0])


def test_non_float_and_mismatched_tensors_are_copied(ckpts: list[Path], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    base_dir, c1, _ = ckpts
    work = {}
    for name, d in (("base", base_dir), ("c", c1)):
        target = tmp_path / name
        target.mkdir()
        for f in d.iterdir():
            if not f.name.endswith(".safetensors"):
                (target / f.name).write_bytes(f.read_bytes())
        sd = state(d)
        sd["counter"] = torch.tensor([1, 2, 3]) if name == "base" else torch.tensor([7, 8, 9])
        sd["odd"] = torch.ones(2, 3) if name == "base" else torch.zeros(3, 2)
        save_file(sd, str(target / "model.safetensors"), metadata={"format": "pt"})
        work[name] = target
    plan = plan_merge(work["base"], [work["c"]])
    out = merge_state_dict(plan, PEFT_METHODS["task_arithmetic"], [1.0])
    assert torch.equal(out["counter"], torch.tensor([1, 2, 3]))
    assert torch.equal(out["odd"], torch.ones(2, 3))


def test_elementwise_methods_stream_in_row_blocks(
    ckpts: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.merging import stream

    base, c1, c2 = ckpts
    adapter, _ = make_adapter(base, tmp_path, base_name=str(base))
    fn = PEFT_METHODS["task_arithmetic"]
    whole = merge_state_dict(plan_merge(base, [adapter, c1, c2]), fn, [1.0, 0.5, 2.0], scaling=0.3)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 512)  # every matrix in blocks of a few rows
    assert (
        len(stream._row_blocks(plan_merge(base, [c1]).base.entries["model.embed_tokens.weight"]))
        > 2
    )
    plan = plan_merge(base, [adapter, c1, c2])
    # B[rows] @ A may round differently from (B @ A)[rows] in the last bit
    assert_same(merge_state_dict(plan, fn, [1.0, 0.5, 2.0], scaling=0.3), whole, atol=1e-6)
    expected = in_memory(base, [c1, c2], fn, [0.5, 2.0], scaling=0.3)
    assert_same(merge_state_dict(plan_merge(base, [c1, c2]), fn, [0.5, 2.0], scaling=0.3), expected)

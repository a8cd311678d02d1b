"""A stand-in ``vllm`` package for tests without vLLM or a GPU: the classes
:mod:`audit.models.vllm_backend` uses (``LLM``, ``SamplingParams``,
``vllm.lora.request.LoRARequest``), recording what they are given. ``LLM.generate`` answers
each token-id prompt with transformers' greedy continuation of those ids, one prompt at a time,
on the checkpoint the engine was built for (with the LoRA adapter of the request merged in).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class SamplingParams:
    temperature: float = 1.0
    max_tokens: int = 16
    skip_special_tokens: bool = True


@dataclass(frozen=True)
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class Completion:
    token_ids: list[int]
    text: str


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[Completion]


@dataclass
class Call:
    """One ``LLM.generate`` call: the prompts' token ids, the sampling and LoRA requests."""

    ids: list[list[int]]
    sampling: SamplingParams
    lora: LoRARequest | None


@dataclass
class Recorder:
    """What the fake saw: every engine built (its keyword arguments), every generate call, and
    how many engines were shut down."""

    engines: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    shutdowns: int = 0


def _greedy(model: Any, ids: list[int], max_tokens: int) -> list[int]:
    import torch

    config = model.generation_config
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_tokens,
            pad_token_id=config.pad_token_id,
        )
    return [int(i) for i in out[0, len(ids) :]]


def install(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Put the fake ``vllm`` in ``sys.modules`` (undone with ``monkeypatch``); returns what it
    records."""
    from audit.models.loading import load_checkpoint

    recorder = Recorder()

    class _Core:
        def shutdown(self) -> None:
            recorder.shutdowns += 1

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            recorder.engines.append(kwargs)
            self.kwargs = kwargs
            self.llm_engine = types.SimpleNamespace(engine_core=_Core())
            self._models: dict[str | None, Any] = {}

        def _model(self, lora: LoRARequest | None) -> tuple[Any, Any]:
            key = None if lora is None else lora.lora_path
            if key not in self._models:
                self._models[key] = load_checkpoint(Path(key or self.kwargs["model"]))
            return self._models[key]

        def generate(
            self,
            prompts: list[dict[str, list[int]]],
            sampling_params: SamplingParams,
            *,
            use_tqdm: bool = True,
            lora_request: LoRARequest | None = None,
        ) -> list[RequestOutput]:
            ids = [list(p["prompt_token_ids"]) for p in prompts]
            recorder.calls.append(Call(ids, sampling_params, lora_request))
            assert sampling_params.temperature == 0.0, "greedy only"
            model, tokenizer = self._model(lora_request)
            out = []
            for prompt in ids:
                new = _greedy(model, prompt, sampling_params.max_tokens)
                text = tokenizer.decode(new, skip_special_tokens=True)
                out.append(RequestOutput(prompt, [Completion(new, text)]))
            return out

    vllm = types.ModuleType("vllm")
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.__dict__["LoRARequest"] = LoRARequest
    lora.__dict__["request"] = request
    vllm.__dict__.update(LLM=LLM, SamplingParams=SamplingParams, lora=lora)
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    return recorder

"""ModelHandle: a model of the suite as the runner passes it around, loaded on first use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import AuditError

if TYPE_CHECKING:
    from audit.models.endpoint import EndpointClient
    from audit.models.generation import Prefill
    from audit.models.vllm_backend import Backend


class NoWeightsError(AuditError):
    """Weights were asked of a model served by an endpoint, which has text only."""


@dataclass
class ModelHandle:
    """A named model: where its checkpoint lies, its cache key and lineage.

    ``path`` is an ordinary Hugging Face checkpoint directory (config, safetensors weights,
    tokenizer). The model and tokenizer are loaded on first access of :attr:`model` or
    :attr:`tokenizer` and kept until :meth:`release`. A model served by an OpenAI-compatible
    endpoint (``openai:`` source) has an :attr:`endpoint` instead of weights (its ``path`` is
    its store entry, which holds none): it only answers :meth:`generate`.
    """

    name: str
    key: str
    path: Path
    parents: tuple[str, ...] = ()
    allow_pickle: bool = False
    trust_remote_code: bool = False
    suite_dir: Path | None = None
    device: str = "cpu"
    dtype: str | None = None
    """``torch_dtype`` for loading (``None``: transformers' default; ``"auto"``: as saved)."""
    device_map: str | None = None
    """accelerate's ``device_map`` (e.g. ``"auto"``); the model is then not moved to ``device``."""
    spread: tuple[str, ...] = ()
    """Devices to spread the model over with accelerate (``--device cuda:0,cuda:1``): loaded
    with :func:`audit.models.devices.spread_options`, unless ``device_map`` says otherwise."""
    endpoint: EndpointClient | None = None
    """The server that answers for an ``openai:`` model; ``None`` for a model with weights."""
    _loaded: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)
    _exchanges: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    _vllm: Any = field(default=None, repr=False, compare=False)
    """The model's vLLM engine once ``generate(backend="vllm")`` built it
    (:mod:`audit.models.vllm_backend`)."""

    @property
    def has_weights(self) -> bool:
        """Whether :attr:`model` and :attr:`tokenizer` exist (not a model behind an endpoint)."""
        return self.endpoint is None

    def _load(self) -> tuple[Any, Any]:
        if self.endpoint is not None:
            raise NoWeightsError(
                f"model {self.name!r} is served by an OpenAI-compatible endpoint "
                f"({self.endpoint.endpoint.label}): it answers text only and has no weights or "
                "tokenizer here. An evaluator or judge that reads weights declares it "
                "(its needs_weights hook), so that `audit validate` refuses it on such a model."
            )
        if self._loaded is None:
            from audit.models.finite import check_finite
            from audit.models.loading import load_checkpoint

            loaded = load_checkpoint(
                self.path,
                allow_pickle=self.allow_pickle,
                trust_remote_code=self.trust_remote_code,
                suite_dir=self.suite_dir,
                dtype=self.dtype,
                **self._placement(),
            )
            what = f"model {self.name!r} ({self.path})"
            if self.spread and self.device_map is None:
                from audit.models.devices import check_spread

                check_spread(getattr(loaded[0], "hf_device_map", {}), self.spread, what)
            check_finite(loaded[0], what)
            if self.device != "cpu" and self.device_map is None and not self.spread:
                loaded[0].to(self.device)
            self._loaded = loaded
        return self._loaded

    def _placement(self) -> dict[str, Any]:
        """``device_map`` (and ``max_memory``) for loading: the model's own ``device_map``,
        else the run's spread over several devices, else none (loaded, then moved)."""
        if self.device_map is not None or not self.spread:
            return {"device_map": self.device_map}
        from audit.models.devices import available_memory, spread_options

        return spread_options(self.spread, available_memory(self.spread))

    @property
    def model(self) -> Any:
        """The ``transformers`` model, in eval mode."""
        return self._load()[0]

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self._load()[1]

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        batch_size: int = 32,
        chat: bool = True,
        progress: Callable[[int, int], None] | None = None,
        prefill: Callable[[Prefill], None] | None = None,
        prefill_cache: bool = False,
        backend: Backend = "hf",
    ) -> list[str]:
        """Greedy completions of ``prompts``, in their order: the way evaluators that need only
        text reach a model, with weights or behind an endpoint.

        With weights, :func:`audit.models.generation.generate` (every argument as there); with
        ``backend="vllm"``, :func:`audit.models.vllm_backend.generate_vllm` instead: the same
        token ids in, decoded the same way, through a vLLM engine kept until :meth:`release`
        (``batch_size`` does not apply: vLLM schedules its own batches; ``prefill`` is never
        called, as for a batch not run in one forward pass, so a caller measures the prompts
        itself). A model behind an endpoint raises :class:`NoWeightsError` for ``"vllm"``.
        Behind an endpoint, :meth:`audit.models.endpoint.EndpointClient.generate`
        (``batch_size`` does not apply: the endpoint's ``max_concurrency`` does; ``prefill``
        needs the weights and raises :class:`NoWeightsError`); each request and reply is kept
        for :meth:`take_exchanges`.
        """
        if backend not in ("hf", "vllm"):
            raise ValueError(f'backend must be "hf" or "vllm", got {backend!r}')
        if backend == "vllm":
            from audit.models.vllm_backend import generate_vllm

            return generate_vllm(
                self, prompts, max_new_tokens=max_new_tokens, chat=chat, progress=progress
            )
        if self.endpoint is None:
            from audit.models.generation import generate

            return generate(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                chat=chat,
                progress=progress,
                prefill=prefill,
                prefill_cache=prefill_cache,
            )
        if prefill is not None:
            self._load()  # raises: the prompts' forward pass needs the weights
        replies = self.endpoint.generate(
            prompts, max_new_tokens=max_new_tokens, chat=chat, progress=progress
        )
        self._exchanges.update((p, r.record) for p, r in zip(prompts, replies, strict=True))
        return [r.text for r in replies]

    def take_exchanges(self) -> dict[str, dict[str, Any]]:
        """Prompt -> the request sent for it and what the endpoint said besides the text
        (:class:`audit.models.endpoint.Reply`'s ``record``), for every prompt :meth:`generate`
        sent since the last call; emptied. Always empty for a model with weights."""
        out, self._exchanges = self._exchanges, {}
        return out

    def release(self) -> None:
        """Drop the in-memory model (and shut its vLLM engine down) so its memory can be
        reclaimed."""
        if self._vllm is not None:
            from audit.models.vllm_backend import release_engine

            release_engine(self)
        self._loaded = None

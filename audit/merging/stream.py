"""Streaming merges: one tensor of each checkpoint in memory at a time.

Merging N checkpoints never holds N models. For each parameter name of the base, the base tensor
and each contributor's tensor are read from disk, turned into task vectors
(``δ_i = θ_i − θ_base``, float32), merged by a :class:`~audit.merging.base.TensorMethod`, and the
merged tensor ``base + scaling · merged_δ`` (cast back to the base's dtype) is written straight
into the output safetensors file, whose header is laid out beforehand from the base's header.

Methods with a ``blocked`` attribute (ties, dare_*, magnitude_prune: see
:class:`audit.merging.tensor_methods.Blocked`) hold even less: for each tensor they see the
contributors' whole task vectors one at a time (to decide what survives pruning), then the
merge reads and writes flat blocks of every contributor, so about one tensor is in memory, not
``N + 1``.

Inputs:

- full checkpoints: safetensors files, single (``model.safetensors``) or sharded
  (``model.safetensors.index.json``). Tensors are read with ``pread`` from the file's header
  offsets, not through ``safetensors.safe_open``: ``safe_open`` maps the whole file and every
  page read counts in the process's RSS until the file is closed (see bench/README.md).
- PEFT LoRA adapter directories (``adapter_config.json``): the delta of an adapted weight is
  ``scale · B @ A`` exactly as peft's ``get_delta_weight`` (``scale = lora_alpha / r``, or
  ``lora_alpha / √r`` with rsLoRA; transposed with ``fan_in_fan_out``; embeddings
  ``(B @ A)ᵀ``), a full tensor saved in the adapter (``modules_to_save``, trained biases) gives
  ``tensor − base``, and every other delta is zero. The adapter's base must be the merge's base:
  either :func:`audit.models.loading.adapter_base` resolves to the same directory, or the two
  checkpoints hold byte-identical tensors (names, dtypes, shapes and data are hashed).

Every input directory is vetted by :func:`audit.models.loading.check_contained` first: a
symbolic link or a shard-index entry that leads outside it is refused (``UnsafeCheckpointError``).

Rules: tensors that are not floating point, or whose shape differs across contributors, are
copied from the base (listed in ``MergeStats.copied``); an input or output embedding whose shape
differs (a different vocabulary) is an error. Tied weights (``lm_head`` tied to
``embed_tokens``) are merged once: the alias is left out of the output and tied again on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import AuditError
from audit.merging.base import TensorContext, TensorMethod

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "Checkpoint",
    "LoraAdapter",
    "MergeError",
    "MergePlan",
    "MergeStats",
    "PlanDeltas",
    "iter_merged",
    "load_task_vectors",
    "merge_state_dict",
    "merge_to_directory",
    "plan_merge",
]

Progress = Callable[[str, int, int], None]
CHUNK_BYTES = 4 << 20
"""Elementwise methods (``method.elementwise = True``) see big tensors in row blocks this size."""
_WEIGHT_FILES = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth", ".ckpt")
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


class MergeError(AuditError, ValueError):
    """The inputs of a merge do not fit together (vocabulary, tensor names, adapter base)."""


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: str  # safetensors dtype, e.g. "F32"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def _read_header(file: Path) -> dict[str, _Entry]:
    """The tensor entries of one safetensors file (the format: u64 length, JSON, data)."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise MergeError(f"{file} is not a safetensors file (header of {length} bytes)")
        header = json.loads(f.read(length))
    entries: dict[str, _Entry] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        entries[name] = _Entry(
            file, spec["dtype"], tuple(spec["shape"]), 8 + length + start, 8 + length + end
        )
    return entries


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    if name not in _ST_DTYPES:
        raise MergeError(f"unsupported safetensors dtype {name}")
    return getattr(torch, _ST_DTYPES[name])


def _read(entry: _Entry, rows: slice | None = None) -> Tensor:
    """One tensor (or rows ``rows`` of it) read into private memory (no file mapping)."""
    import torch

    dtype = _torch_dtype(entry.dtype)
    shape, start, size = entry.shape, entry.start, entry.end - entry.start
    if rows is not None:
        row_bytes = size // shape[0]
        shape = (rows.stop - rows.start, *shape[1:])
        start, size = start + rows.start * row_bytes, (rows.stop - rows.start) * row_bytes
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(_pread(entry.file, start, size), dtype=dtype).reshape(shape)


def _read_flat(entry: _Entry, start: int, stop: int) -> Tensor:
    """Entries ``[start, stop)`` of the flattened tensor, read into private memory."""
    import torch

    dtype = _torch_dtype(entry.dtype)
    if stop <= start:
        return torch.empty(0, dtype=dtype)
    item = dtype.itemsize
    return torch.frombuffer(
        _pread(entry.file, entry.start + start * item, (stop - start) * item), dtype=dtype
    )


def _pread(file: Path, offset: int, size: int) -> bytearray:
    buffer = bytearray(size)
    with open(file, "rb") as f:
        f.seek(offset)
        if f.readinto(buffer) != size:
            raise MergeError(f"{file} is truncated")
    return buffer


class Checkpoint:
    """The safetensors tensors of a checkpoint directory (single file or sharded), read lazily."""

    def __init__(self, directory: Path, files: Sequence[Path] | None = None) -> None:
        from audit.models.loading import check_contained

        self.directory = Path(directory)
        check_contained(self.directory)  # no links or shard names leading out of it
        if files is None:
            files = _weight_files(self.directory)
        self.entries: dict[str, _Entry] = {}
        for file in files:
            self.entries.update(_read_header(file))

    def names(self) -> list[str]:
        """Tensor names, in file order."""
        return list(self.entries)

    def read(self, name: str, rows: slice | None = None) -> Tensor:
        """The tensor ``name`` as stored (only rows ``rows`` of its first dimension if given)."""
        return _read(self.entries[name], rows)

    def digest(self) -> str:
        """SHA-256 of every tensor's name, dtype, shape and bytes (file layout ignored)."""
        digest = hashlib.sha256()
        for name in sorted(self.entries):
            e = self.entries[name]
            digest.update(f"{name}\0{e.dtype}\0{e.shape}\0".encode())
            with open(e.file, "rb") as f:
                f.seek(e.start)
                remaining = e.end - e.start
                while remaining > 0:
                    chunk = f.read(min(remaining, 1 << 24))
                    if not chunk:
                        raise MergeError(f"{e.file} is truncated")
                    digest.update(chunk)
                    remaining -= len(chunk)
        return digest.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    files = sorted(p for p in directory.glob("*.safetensors") if p.is_file())
    if not files:
        raise MergeError(f"{directory} holds no safetensors weights (*.safetensors)")
    return files


class LoraAdapter:
    """A PEFT LoRA adapter directory as a source of task vectors for its base's tensors."""

    _PREFIX = "base_model.model."

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.config: dict[str, Any] = json.loads(
            (self.directory / "adapter_config.json").read_text(encoding="utf-8")
        )
        if str(self.config.get("peft_type", "LORA")).upper() != "LORA":
            raise MergeError(
                f"{directory}: only LoRA adapters can be merged, not {self.config.get('peft_type')}"
            )
        if self.config.get("use_dora"):
            raise MergeError(f"{directory}: DoRA adapters are not supported by the merge")
        if self.config.get("alpha_pattern"):
            raise MergeError(f"{directory}: adapters with an alpha_pattern are not supported")
        files = sorted(self.directory.glob("adapter_model*.safetensors"))
        if not files:
            raise MergeError(f"{directory} has no adapter_model.safetensors")
        self.tensors = Checkpoint(self.directory, files)
        self.lora: dict[str, tuple[str, str, bool]] = {}  # base name → (A key, B key, embedding)
        self.full: dict[str, str] = {}  # base name → key of a full tensor (modules_to_save, bias)
        for key in self.tensors.names():
            name = key.removeprefix(self._PREFIX)
            for a, b, embedding in (
                (".lora_A.weight", ".lora_B.weight", False),
                (".lora_embedding_A", ".lora_embedding_B", True),
            ):
                if name.endswith(a):
                    module = name[: -len(a)]
                    self.lora[f"{module}.weight"] = (key, key[: -len(a)] + b, embedding)
            if ".lora_" not in name:
                self.full[name.replace(".modules_to_save.default.", ".")] = key

    def delta(self, name: str, base: Tensor, rows: slice | None = None) -> Tensor:
        """``θ − θ_base`` for the base tensor ``name`` (float32), as peft would merge it.

        ``base`` is the base tensor, or its rows ``rows`` when given (then ``B[rows] @ A``,
        which may differ from ``(B @ A)[rows]`` in the last bit).
        """
        import torch

        if name in self.lora:
            a_key, b_key, embedding = self.lora[name]
            a = self.tensors.read(a_key).float()
            b = self.tensors.read(b_key).float()
            r = a.shape[0]
            alpha = float(self.config.get("lora_alpha", r))
            scale = alpha / r**0.5 if self.config.get("use_rslora") else alpha / r
            transposed = embedding or bool(self.config.get("fan_in_fan_out"))
            if rows is not None and not transposed:
                b = b[rows]
            product = b @ a
            if transposed:
                product = product.T if rows is None else product.T[rows]
            return (product * scale).reshape(base.shape).contiguous()
        if name in self.full:
            return self.tensors.read(self.full[name], rows).float() - base
        return torch.zeros(base.shape, dtype=torch.float32)

    def unused(self, names: set[str]) -> list[str]:
        """Adapter tensors that adapt no tensor of the base."""
        return sorted(set(self.lora) - names) + sorted(set(self.full) - names)


# --------------------------------------------------------------------------- the plan


@dataclass
class MergeStats:
    """What a merge did: tensors written, merged, copied from the base, aliases left out."""

    tensors: int = 0
    merged: int = 0
    copied: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)


@dataclass
class MergePlan:
    """The base, the contributors and the tensor names to stream, in output order."""

    base: Checkpoint
    contributors: list[Checkpoint | LoraAdapter]
    names: list[str]
    tied: list[str]
    embeddings: set[str]


def plan_merge(
    base_dir: Path,
    contributor_dirs: Sequence[Path],
    *,
    suite_dir: Path | None = None,
    trust_remote_code: bool = False,
) -> MergePlan:
    """Open the checkpoints (headers only) and check that they fit together."""
    base = Checkpoint(Path(base_dir))
    tied, embeddings = _model_structure(Path(base_dir), trust_remote_code)
    names = [n for n in base.names() if n not in tied]
    # safetensors' own order: wider dtypes first keeps every tensor aligned in the output file
    names.sort(key=lambda n: (-_torch_dtype(base.entries[n].dtype).itemsize, n))
    wanted = set(names)
    contributors: list[Checkpoint | LoraAdapter] = []
    for directory in map(Path, contributor_dirs):
        from audit.models.loading import is_peft_adapter

        if is_peft_adapter(directory):
            adapter = LoraAdapter(directory)
            _check_adapter_base(adapter, base, suite_dir)
            unused = adapter.unused(set(base.names()))
            if unused:
                raise MergeError(
                    f"adapter {directory} adapts tensors the base {base_dir} does not have: "
                    + ", ".join(unused[:3])
                )
            contributors.append(adapter)
            continue
        checkpoint = Checkpoint(directory)
        have = set(checkpoint.names()) - set(tied)
        missing, extra = sorted(wanted - have), sorted(have - set(base.names()))
        if missing or extra:
            what = f"lacks {', '.join(missing[:3])}" if missing else f"adds {', '.join(extra[:3])}"
            raise MergeError(
                f"contributor {directory} does not have the base's tensors: it {what} "
                "(a different architecture, or a different tie_word_embeddings?)"
            )
        contributors.append(checkpoint)
    if not contributors:
        raise MergeError("a merge needs at least one contributor")
    return MergePlan(base, contributors, names, tied, embeddings)


def _model_structure(directory: Path, trust_remote_code: bool) -> tuple[list[str], set[str]]:
    """Names that alias another parameter (tied weights), and the embedding parameters' names.

    Found on a model built on the ``meta`` device from the base's config (no memory).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        directory, trust_remote_code=trust_remote_code, local_files_only=True
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()
    first: dict[int, str] = {}
    tied: list[str] = []
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            tied.append(name)
        else:
            first[id(parameter)] = name
    by_id = {id(p): n for n, p in model.named_parameters()}
    embeddings = set()
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = getattr(module, "weight", None)
        if weight is not None and id(weight) in by_id:
            embeddings.add(by_id[id(weight)])
    return tied, embeddings


def _check_adapter_base(adapter: LoraAdapter, base: Checkpoint, suite_dir: Path | None) -> None:
    """The adapter's base is the merge's base: the same directory or the same tensors."""
    from audit.models.loading import CheckpointNotFoundError, adapter_base

    try:
        own = adapter_base(adapter.directory, suite_dir)
    except CheckpointNotFoundError as error:
        raise MergeError(
            f"cannot check that adapter {adapter.directory} was trained on the merge's base "
            f"{base.directory}: {error}"
        ) from error
    if own.resolve() == base.directory.resolve():
        return
    if Checkpoint(own).digest() != base.digest():
        raise MergeError(
            f"adapter {adapter.directory} was trained on {own}, whose weights differ from the "
            f"merge's base {base.directory}; its task vector would be meaningless here"
        )


# --------------------------------------------------------------------------- merging


def _task_vectors(
    plan: MergePlan, name: str, rows: slice | None = None
) -> tuple[Tensor, list[Tensor] | None]:
    """The base tensor and the contributors' task vectors (None: copy the base tensor).

    With ``rows``, only those rows of the first dimension (for elementwise methods).
    """
    base = plan.base.read(name, rows)
    if not base.is_floating_point():
        return base, None
    base32 = base.float()
    full_shape = plan.base.entries[name].shape
    deltas: list[Tensor] = []
    for contributor in plan.contributors:
        if isinstance(contributor, LoraAdapter):
            deltas.append(contributor.delta(name, base32, rows))
            continue
        entry = contributor.entries[name]
        if entry.shape != full_shape:
            if name in plan.embeddings:
                raise MergeError(
                    f"{name} has shape {list(entry.shape)} in {contributor.directory} but "
                    f"{list(base.shape)} in the base {plan.base.directory}: the vocabularies "
                    "differ; align the tokenizers (and resize the embeddings) before merging"
                )
            return base, None
        if not _torch_dtype(entry.dtype).is_floating_point:
            return base, None
        theta = contributor.read(name, rows)
        if theta.dtype == base32.dtype:  # a private buffer: subtract in place
            deltas.append(theta.sub_(base32))
        else:
            deltas.append(theta.float() - base32)
        del theta
    return base, deltas


def _mergeable(plan: MergePlan, name: str) -> bool:
    """Whether the stream passes ``name`` to the method (from the headers; see _task_vectors)."""
    entry = plan.base.entries[name]
    if not _torch_dtype(entry.dtype).is_floating_point:
        return False
    for contributor in plan.contributors:
        if isinstance(contributor, LoraAdapter):
            continue
        other = contributor.entries[name]
        if other.shape != entry.shape or not _torch_dtype(other.dtype).is_floating_point:
            return False
    return True


class PlanDeltas:
    """A plan's task vectors read again from disk, for a method's ``prepare`` hook.

    Implements :class:`~audit.merging.base.ModelDeltas`: one tensor in memory at a time.
    """

    def __init__(self, plan: MergePlan) -> None:
        import math

        self.plan = plan
        self.names = [n for n in plan.names if _mergeable(plan, n)]
        self.contributors = len(plan.contributors)
        self.numel = sum(math.prod(plan.base.entries[n].shape) for n in self.names)

    def deltas(self, contributor: int) -> Iterator[Tensor]:
        """Contributor ``contributor``'s task vector, tensor by tensor (float32)."""
        source = self.plan.contributors[contributor]
        for name in self.names:
            base = self.plan.base.read(name).float()
            if isinstance(source, LoraAdapter):
                yield source.delta(name, base)
            else:
                yield source.read(name).float().sub_(base)

    def stacked(self) -> Iterator[tuple[str, list[Tensor]]]:
        """Every mergeable tensor's task vectors, tensor by tensor (the consumer should drop
        them before asking for the next)."""
        for name in self.names:
            deltas = _task_vectors(self.plan, name)[1]  # the base tensor is dropped at once
            if deltas is not None:
                yield name, deltas
            del deltas  # not alive while the next tensor's are read


def iter_merged(
    plan: MergePlan,
    method: TensorMethod,
    weights: Sequence[float],
    *,
    scaling: float = 1.0,
    options: Any = None,
    seed: int = 0,
    progress: Progress | None = None,
    stats: MergeStats | None = None,
) -> Iterator[tuple[str, Tensor]]:
    """``(name, merged tensor)`` for every output tensor, in :attr:`MergePlan.names` order.

    A method with a ``prepare`` hook (TIES with global trimming) first gets a pass over the
    whole model (:class:`PlanDeltas`); what it returns reaches each call as ``ctx.shared``.
    A method with a ``blocked`` attribute (ties, dare_*, magnitude_prune; see
    :class:`audit.merging.tensor_methods.Blocked`) is run in its two steps: each contributor's
    whole task vector in turn, then flat blocks read from disk (:func:`_merge_flat`).
    """
    if len(weights) != len(plan.contributors):
        raise MergeError(f"{len(plan.contributors)} contributors but {len(weights)} weights")
    stats = stats if stats is not None else MergeStats()
    stats.tied = list(plan.tied)
    total = len(plan.names)
    elementwise = bool(getattr(method, "elementwise", False))
    blocked = getattr(method, "blocked", None)
    if blocked is not None and not blocked.applies(options):
        blocked = None
    prepare = getattr(method, "prepare", None)
    shared = prepare(PlanDeltas(plan), options) if prepare is not None else None
    for index, name in enumerate(plan.names):
        ctx = TensorContext(name=name, seed=seed, index=index, shared=shared)
        blocks = _row_blocks(plan.base.entries[name]) if elementwise else [None]
        if blocked is not None and _flat_blocks_exact(plan, name):
            merged = _merge_flat(plan, name, blocked, weights, ctx, options, scaling)
            copied = False
        elif len(blocks) == 1:
            merged, copied = _merge_block(plan, name, None, method, weights, ctx, options, scaling)
        else:
            import torch

            entry = plan.base.entries[name]
            merged = torch.empty(entry.shape, dtype=_torch_dtype(entry.dtype))
            for rows in blocks:
                part, copied = _merge_block(
                    plan, name, rows, method, weights, ctx, options, scaling
                )
                merged[rows] = part
                del part
        if copied:
            stats.copied.append(name)
        else:
            stats.merged += 1
        stats.tensors += 1
        yield name, merged
        del merged  # before the next tensor is built: at most one output tensor alive here
        if progress is not None:
            progress("merge", index + 1, total)


def _row_blocks(entry: _Entry) -> list[slice | None]:
    """Row ranges of at most :data:`CHUNK_BYTES` each (``[None]``: the whole tensor at once)."""
    size = entry.end - entry.start
    if len(entry.shape) == 0 or entry.shape[0] < 2 or size <= CHUNK_BYTES:
        return [None]
    rows = entry.shape[0]
    step = max(1, CHUNK_BYTES // (size // rows))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


def _merge_block(
    plan: MergePlan,
    name: str,
    rows: slice | None,
    method: TensorMethod,
    weights: Sequence[float],
    ctx: TensorContext,
    options: Any,
    scaling: float,
) -> tuple[Tensor, bool]:
    """The merged tensor (or rows of it) and whether it was copied from the base."""
    base, deltas = _task_vectors(plan, name, rows)
    if deltas is None:
        return base, True
    delta = method(base.float(), deltas, list(weights), ctx, options)
    del deltas
    if delta.data_ptr() == base.data_ptr():
        delta = delta.clone()
    # θ_base + λ·δ, computed in place on δ (the same bits as `base + scaling * delta`)
    if scaling != 1.0:
        delta.mul_(scaling)
    return delta.add_(base.float()).to(base.dtype), False


def _flat_blocks_exact(plan: MergePlan, name: str) -> bool:
    """Whether ``name``'s task vectors read in flat blocks are the whole tensors' entries: a
    mergeable tensor (see :func:`_task_vectors`) that no LoRA adapter adapts with ``B @ A``
    (a product's blocks may round differently from the whole product's)."""
    import math

    if not _mergeable(plan, name) or math.prod(plan.base.entries[name].shape) == 0:
        return False
    return not any(isinstance(c, LoraAdapter) and name in c.lora for c in plan.contributors)


def _delta(
    contributor: Checkpoint | LoraAdapter, name: str, base32: Tensor, flat: slice | None = None
) -> Tensor:
    """One contributor's task vector for ``name`` (entries ``flat`` of the flattened tensor when
    given; ``base32`` is then those entries of the base), as :func:`_task_vectors` computes it."""
    import torch

    if isinstance(contributor, LoraAdapter):
        if flat is None:
            return contributor.delta(name, base32)
        if name in contributor.full:
            entry = contributor.tensors.entries[contributor.full[name]]
            return _read_flat(entry, flat.start, flat.stop).float() - base32
        return torch.zeros(base32.shape, dtype=torch.float32)
    if flat is None:
        theta = contributor.read(name)
    else:
        theta = _read_flat(contributor.entries[name], flat.start, flat.stop)
    if theta.dtype == base32.dtype:  # a private buffer: subtract in place
        return theta.sub_(base32)
    return theta.float() - base32


def _merge_flat(
    plan: MergePlan,
    name: str,
    blocked: Any,
    weights: Sequence[float],
    ctx: TensorContext,
    options: Any,
    scaling: float,
) -> Tensor:
    """A mergeable tensor through a method's two steps (``method.blocked``).

    Step 1 gets the contributors' whole flat task vectors one at a time (the base is read again
    for each, so that one task vector is in memory while the method works on it, which it may
    overwrite); step 2 reads blocks of ``blocked.block`` entries of the base and every
    contributor. Each block's result becomes ``base + scaling · merged`` as in
    :func:`_merge_block`, so the tensor is the same bits as the whole-tensor call's.
    """
    import math

    import torch

    entry = plan.base.entries[name]
    numel = math.prod(entry.shape)
    dtype = _torch_dtype(entry.dtype)

    def whole() -> Iterator[Tensor]:
        for contributor in plan.contributors:
            base32 = plan.base.read(name).float()
            delta = _delta(contributor, name, base32).reshape(-1)
            del base32
            yield delta
            del delta

    state = blocked.prepare(numel, whole(), list(weights), ctx, options, consumable=True)
    merged = torch.empty(numel, dtype=dtype)
    for start in range(0, numel, blocked.block):
        rows = slice(start, min(start + blocked.block, numel))
        base32 = _read_flat(entry, rows.start, rows.stop).float()
        deltas = [_delta(c, name, base32, rows) for c in plan.contributors]
        part = blocked.rows(deltas, start, list(weights), ctx, options, state)
        del deltas
        if scaling != 1.0:
            part.mul_(scaling)
        merged[rows] = part.add_(base32).to(dtype)
        del part, base32
    del state
    return merged.reshape(entry.shape)


def merge_state_dict(
    plan: MergePlan, method: TensorMethod, weights: Sequence[float], **kw: Any
) -> dict[str, Tensor]:
    """The merged tensors in memory (small models and tests; the streaming path writes a file)."""
    return dict(iter_merged(plan, method, weights, **kw))


def merge_to_directory(
    plan: MergePlan,
    method: TensorMethod,
    weights: Sequence[float],
    out_dir: Path,
    **kw: Any,
) -> MergeStats:
    """Stream the merge into ``out_dir/model.safetensors``, beside the base's config/tokenizer.

    The output header is computed from the base's header first (merged tensors keep the base's
    dtype and shape), then each merged tensor is written at its offset as soon as it exists.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in plan.base.directory.iterdir():
        if item.is_file() and not item.name.endswith(_WEIGHT_FILES):
            shutil.copy2(item, out_dir / item.name)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in plan.names:
        entry = plan.base.entries[name]
        size = entry.end - entry.start
        header[name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    stats = MergeStats()
    target = out_dir / "model.safetensors"
    tmp = out_dir / ".model.safetensors.partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, tensor in iter_merged(plan, method, weights, stats=stats, **kw):
            expected = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            raw = tensor.contiguous().reshape(-1).view(_byte_dtype()).numpy()
            if raw.nbytes != expected:
                raise MergeError(
                    f"{name}: merged tensor has {raw.nbytes} bytes, expected {expected}"
                )
            f.write(raw.data)
            del raw, tensor
    os.replace(tmp, target)
    return stats


def _byte_dtype() -> torch.dtype:
    import torch

    return torch.uint8


def load_task_vectors(plan: MergePlan) -> tuple[dict[str, list[Tensor]], list[str]]:
    """Every mergeable tensor's task vectors in memory (model-level methods; no streaming).

    Returns the task vectors by name and the names copied from the base.
    """
    vectors: dict[str, list[Tensor]] = {}
    copied: list[str] = []
    for name in plan.names:
        _, deltas = _task_vectors(plan, name)
        if deltas is None:
            copied.append(name)
        else:
            vectors[name] = deltas
    return vectors, copied

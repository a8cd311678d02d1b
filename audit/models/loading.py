"""Find, vet, load and fingerprint model checkpoints.

A checkpoint is an ordinary Hugging Face directory (config, weights, tokenizer) or a PEFT adapter
directory whose ``adapter_config.json`` names its base model. Loading is safe by default:

- only ``safetensors`` weights are read unless the suite opts in with ``allow_pickle = true``;
  even then pickle files are read with ``torch.load(weights_only=True)`` (transformers 5 passes
  ``weights_only=True`` by default and peft's loader does too; we also pass it explicitly), so a
  pickle that would run code is refused rather than executed;
- checkpoints that ship custom code (``auto_map``) need ``trust_remote_code = true``;
- symbolic links that leave the checkpoint directory are refused, and so are shard indexes
  (``*.index.json``) whose ``weight_map`` names a file outside it;
- in a suite, an adapter's base (``base_model_name_or_path``) must lie under the suite's
  directory, under a checkpoint directory the suite itself names, or in the Hugging Face cache
  (see :func:`adapter_base`'s ``within``);
- nothing is ever downloaded while loading: ``local_files_only`` throughout.

torch, transformers, peft and huggingface_hub are imported inside functions so that importing
this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from audit.errors import InputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files read with ``pickle`` (through ``torch.load``)."""

SAFE_SUFFIXES = (".safetensors",)
"""Weight files that hold tensors only."""

_CODE_CONFIGS = ("config.json", "tokenizer_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_TRUE = {"1", "on", "yes", "true"}
_MAX_ADAPTER_DEPTH = 4


class UnsafeCheckpointError(InputError):
    """A checkpoint that could run code or read files outside itself was refused."""


class CheckpointNotFoundError(InputError):
    """A checkpoint (or its weights, or its base model) could not be found locally."""


# --------------------------------------------------------------------------- sources


def resolve_source(source: str, *, suite_dir: Path) -> Path:
    """Turn a suite's ``source`` string into a local checkpoint directory.

    ``path:DIR`` is a directory, relative to ``suite_dir`` unless absolute. ``hf:ID[@REVISION]``
    is a Hugging Face Hub model, taken from the local cache (downloaded first unless offline).
    """
    scheme, sep, rest = source.partition(":")
    if not sep:
        raise ValueError(
            f"Model source {source!r} has no scheme; write 'path:DIR' for a local directory or "
            "'hf:ORG/NAME[@REVISION]' for a Hugging Face Hub model."
        )
    if scheme == "path":
        if not rest:
            raise ValueError(f"Model source {source!r} names no directory after 'path:'.")
        directory = Path(rest).expanduser()
        if not directory.is_absolute():
            directory = Path(suite_dir) / directory
        if not directory.is_dir():
            what = "is not a directory" if directory.exists() else "does not exist"
            raise CheckpointNotFoundError(
                f"Model directory {directory} (from {source!r}, relative to {suite_dir}) {what}."
            )
        return directory.resolve()
    if scheme == "hf":
        repo_id, _, revision = rest.partition("@")
        if not _HUB_ID.fullmatch(repo_id):
            raise ValueError(
                f"Model source {source!r} is not a valid hub id; write 'hf:ORG/NAME' or "
                "'hf:ORG/NAME@REVISION'."
            )
        return _snapshot(repo_id, revision or None, local_only=_hub_offline())
    if scheme == "organism":
        raise ValueError(
            f"Model source {source!r}: 'organism:' sources are built by the runner, not loaded "
            "from disk; resolve_source only handles 'path:' and 'hf:'."
        )
    raise ValueError(
        f"Model source {source!r} has unknown scheme {scheme!r}; use 'path:', 'hf:', 'gguf:' or "
        "'organism:'."
    )


def hub_id_problem(rest: str) -> str | None:
    """What is wrong with the ``ID[@REVISION]`` of an ``hf:`` source, or None (no hub access)."""
    repo_id, at, revision = rest.partition("@")
    if not repo_id:
        return "'hf:' names no model; write 'hf:ORG/NAME' or 'hf:ORG/NAME@REVISION'"
    if not _HUB_ID.fullmatch(repo_id) or len(repo_id) > 96:
        return f"{repo_id!r} is not a hub id; write 'hf:ORG/NAME' or 'hf:ORG/NAME@REVISION'"
    if at and not revision.strip():
        return f"'hf:{rest}' has an empty revision after '@'"
    return None


def _hub_offline() -> bool:
    """Whether hub access is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _snapshot(repo_id: str, revision: str | None, *, local_only: bool) -> Path:
    """The local snapshot directory of a hub model; downloads only when ``local_only`` is off."""
    from huggingface_hub import constants, snapshot_download

    label = repo_id + (f"@{revision}" if revision else "")
    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=local_only)
    except Exception as error:  # every hub failure reads the same to a user
        if local_only:
            why = (
                "and the hub is offline here (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
                if _hub_offline()
                else "and only the local cache may be used here"
            )
        else:
            why = f"and fetching it from the hub failed (unreachable or unknown id: {error})"
        raise CheckpointNotFoundError(
            f"Model {label} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"{why}. Download it where the hub is reachable (`hf download {repo_id}`) and copy "
            "the cache here, or point the suite at a local directory with 'path:DIR'."
        ) from error
    return Path(path)


# --------------------------------------------------------------------------- vetting


def check_checkpoint(directory: Path, *, allow_pickle: bool, trust_remote_code: bool) -> None:
    """Refuse a checkpoint directory that is missing, unsafe, or has no weights.

    Raises :class:`CheckpointNotFoundError` when the directory or its weights are missing and
    :class:`UnsafeCheckpointError` for pickle-only weights (unless ``allow_pickle``), custom code
    (unless ``trust_remote_code``) or symbolic links leading outside the directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"Checkpoint directory {directory} does not exist.")
    check_contained(directory)

    files = sorted(p for p in directory.iterdir() if p.is_file())
    safe = [p for p in files if p.name.endswith(SAFE_SUFFIXES)]
    pickles = [p for p in files if p.name.endswith(PICKLE_SUFFIXES)]
    adapter = is_peft_adapter(directory)
    if adapter:  # the trainer leaves training_args.bin etc. beside the adapter weights
        safe = [p for p in safe if p.name.startswith("adapter_model")]
        pickles = [p for p in pickles if p.name.startswith("adapter_model")]
    if not safe and not pickles:
        kind = "adapter weights (adapter_model.safetensors)" if adapter else "model weights"
        raise CheckpointNotFoundError(
            f"Checkpoint directory {directory} holds no {kind}: expected *.safetensors "
            f"files{' (or pickle *.bin files)' if allow_pickle else ''}."
        )
    if not safe and not allow_pickle:
        raise UnsafeCheckpointError(
            f"Checkpoint {directory} has only pickle weights ({pickles[0].name}), and loading a "
            "pickle file can run arbitrary code. Convert it to safetensors, or, if you trust "
            "where it came from, set `allow_pickle = true` in this model's table of the suite "
            "(it is then read with torch.load(weights_only=True))."
        )

    for name in _CODE_CONFIGS:
        config = _read_json(directory / name)
        if config is None:
            continue
        if config.get("auto_map") and not trust_remote_code:
            raise UnsafeCheckpointError(
                f"Checkpoint {directory} ships its own Python code ('auto_map' in {name}), which "
                "loading would import and run. Use a checkpoint of a built-in architecture, or, "
                "if you trust where it came from, set `trust_remote_code = true` in this model's "
                "table of the suite."
            )
        explicit = config.get("transformers_weights")
        if (
            name == "config.json"
            and isinstance(explicit, str)
            and not explicit.endswith((".safetensors", ".safetensors.index.json"))
            and not allow_pickle
        ):
            raise UnsafeCheckpointError(
                f"Checkpoint {directory} names pickle weights ({explicit!r}, the "
                "'transformers_weights' key of config.json), and loading a pickle file can run "
                "arbitrary code. Remove that key to use the safetensors weights, or, if you trust "
                "where it came from, set `allow_pickle = true` in this model's table of the suite."
            )


def check_contained(directory: Path) -> None:
    """Refuse a checkpoint that would make a loader read files outside its directory.

    That is a symbolic link under ``directory`` that resolves outside it, or a shard index
    (``*.index.json``) whose ``weight_map`` names a file outside it (``../x``, ``/abs/x``).
    A Hugging Face cache snapshot (``models--ORG--NAME/snapshots/REV``) links into its repo's
    ``blobs`` folder; those links are allowed.
    """
    root = Path(directory).resolve()
    allowed = [root]
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        allowed.append(root.parent.parent / "blobs")
    for current, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(current) / name
            if not path.is_symlink():
                continue
            target = path.resolve()
            if not any(target.is_relative_to(base) for base in allowed):
                raise UnsafeCheckpointError(
                    f"Checkpoint {directory} contains a symbolic link {path.relative_to(root)} "
                    f"that points outside the checkpoint ({target}). Copy the file into the "
                    "checkpoint directory instead of linking to it."
                )
    for index in sorted(root.glob("*.index.json")):
        weight_map = (_read_json(index) or {}).get("weight_map")
        if not isinstance(weight_map, dict):
            continue
        for shard in sorted({str(v) for v in weight_map.values()}):
            target = (root / shard).resolve()
            if not any(target.is_relative_to(base) for base in allowed):
                raise UnsafeCheckpointError(
                    f"Checkpoint {directory}: the shard index {index.name} names a weights file "
                    f"outside the checkpoint ({shard!r}). Shard names must be files of the "
                    "checkpoint directory."
                )


def vet_checkpoint(
    directory: Path,
    *,
    allow_pickle: bool,
    trust_remote_code: bool,
    suite_dir: Path | None,
    within: Sequence[Path] | None,
) -> None:
    """:func:`check_checkpoint` on ``directory`` and, for an adapter, on each base down its chain.

    Reads directory listings and small JSON configs only (never weights, never a link's target),
    so a suite's checkpoints can be refused while planning, before anything is hashed.
    """
    for depth in range(_MAX_ADAPTER_DEPTH + 1):
        check_checkpoint(directory, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        if not is_peft_adapter(directory):
            return
        if depth == _MAX_ADAPTER_DEPTH:
            raise CheckpointNotFoundError(
                f"Adapter {directory} sits on a chain of more than {_MAX_ADAPTER_DEPTH} adapters; "
                "merge some of them into a full checkpoint."
            )
        directory = adapter_base(directory, suite_dir, within=within)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when the file is absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointNotFoundError(f"{path} is not readable JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointNotFoundError(f"{path} does not hold a JSON object.")
    return data


def is_peft_adapter(directory: Path) -> bool:
    """Whether ``directory`` is a PEFT adapter (has ``adapter_config.json``)."""
    return (Path(directory) / "adapter_config.json").is_file()


# --------------------------------------------------------------------------- loading


def load_checkpoint(
    directory: Path,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    suite_dir: Path | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
    max_memory: Mapping[int | str, int] | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a checkpoint or PEFT adapter directory, in eval mode.

    ``dtype`` (``"auto"``, ``"float32"``, ``"bfloat16"``, ``"float16"``), ``device_map`` and
    ``max_memory`` (accelerate's: the bytes each device may hold; see
    :func:`audit.models.devices.spread_options`) pass to ``from_pretrained`` (``None``:
    transformers' defaults).

    The directory is vetted by :func:`check_checkpoint` first. A PEFT adapter is applied to its
    base model (``base_model_name_or_path`` of ``adapter_config.json``: a directory, relative to
    ``suite_dir`` or else to the adapter's parent, or a hub id found in the local cache) and
    merged into it. The tokenizer always has a pad token (the eos token when it had none).
    """
    model, tokenizer = _load(
        Path(directory),
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        suite_dir=suite_dir,
        depth=0,
        options={
            k: v
            for k, v in (("dtype", dtype), ("device_map", device_map), ("max_memory", max_memory))
            if v
        },
    )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _load(
    directory: Path,
    *,
    allow_pickle: bool,
    trust_remote_code: bool,
    suite_dir: Path | None,
    depth: int,
    options: dict[str, Any],
) -> tuple[Any, Any]:
    check_checkpoint(directory, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if not is_peft_adapter(directory):
        model = _load_model(directory, trust_remote_code=trust_remote_code, options=options)
        return model, load_tokenizer(directory, trust_remote_code=trust_remote_code)

    if depth >= _MAX_ADAPTER_DEPTH:
        raise CheckpointNotFoundError(
            f"Adapter {directory} sits on a chain of more than {_MAX_ADAPTER_DEPTH} adapters; "
            "merge some of them into a full checkpoint."
        )
    base_dir = adapter_base(directory, suite_dir)
    base, base_tokenizer = _load(
        base_dir,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        suite_dir=suite_dir,
        depth=depth + 1,
        options=options,
    )
    model = _apply_adapter(base, directory)
    if any((directory / name).is_file() for name in TOKENIZER_FILES):
        return model, load_tokenizer(directory, trust_remote_code=trust_remote_code)
    return model, base_tokenizer


def _load_model(
    directory: Path, *, trust_remote_code: bool, options: dict[str, Any] | None = None
) -> Any:
    """A causal LM from a full checkpoint directory; pickles only through weights-only loading.
    ``options``: ``dtype`` / ``device_map`` / ``max_memory`` for ``from_pretrained``."""
    from transformers import AutoModelForCausalLM, PreTrainedModel

    has_safetensors = any(
        p.is_file() and p.name.endswith(SAFE_SUFFIXES) for p in directory.iterdir()
    )
    if not has_safetensors:
        # Pickle weights will be read: make sure this transformers reads them weights-only.
        import inspect

        parameter = inspect.signature(PreTrainedModel.from_pretrained).parameters.get(
            "weights_only"
        )
        if parameter is None or parameter.default is not True:
            raise UnsafeCheckpointError(
                f"Checkpoint {directory} has only pickle weights and this version of "
                "transformers cannot be made to read them weights-only; convert the checkpoint "
                "to safetensors."
            )
    with _weights_only_guard(directory):
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            use_safetensors=True if has_safetensors else None,
            weights_only=True,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            **(options or {}),
        )
    return model


def _apply_adapter(base: Any, adapter_dir: Path) -> Any:
    """``base`` with the PEFT adapter of ``adapter_dir`` applied and merged in."""
    from peft import PeftModel

    with _weights_only_guard(adapter_dir):
        peft_model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
    return peft_model.merge_and_unload()


@contextlib.contextmanager
def _weights_only_guard(directory: Path) -> Iterator[None]:
    """Turn torch's refusal of a code-carrying pickle into :class:`UnsafeCheckpointError`."""
    import pickle

    try:
        yield
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"Checkpoint {directory} has a pickle weights file that holds more than tensors (it "
            "may run code when unpickled), so weights-only loading refused it. Do not load it "
            "with weights_only=False; get the weights as safetensors from a trusted source."
        ) from error


def load_tokenizer(directory: Path, *, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            directory, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except (OSError, ValueError) as error:
        raise CheckpointNotFoundError(
            f"Checkpoint {directory} has no usable tokenizer: {error}"
        ) from error


def adapter_base(
    adapter_dir: Path, suite_dir: Path | None, *, within: Sequence[Path] | None = None
) -> Path:
    """The local directory of the base model a PEFT adapter was trained on.

    With ``within`` (a suite's :func:`suite_roots`), a local base path must resolve under one of
    those directories: an adapter from elsewhere must not make the audit read whatever model
    its config names (``/home/me/private-model``, ``../../../``). Hub ids are looked up in the
    local cache only.
    """
    config = _read_json(adapter_dir / "adapter_config.json") or {}
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise CheckpointNotFoundError(
            f"Adapter {adapter_dir} does not name its base model (base_model_name_or_path in "
            "adapter_config.json); set it to the base checkpoint's directory or hub id."
        )
    anchor = Path(suite_dir) if suite_dir is not None else adapter_dir.resolve().parent
    if base.startswith("hf:"):
        repo_id, _, revision = base[3:].partition("@")
        return _snapshot(repo_id, revision or None, local_only=True)
    try:
        path = Path(base.removeprefix("path:")).expanduser()
    except RuntimeError:  # "~user/…" for a user this machine does not know
        raise CheckpointNotFoundError(
            f"Base model {base!r} of adapter {adapter_dir}: cannot expand '~' (no such user)."
        ) from None
    candidate = path if path.is_absolute() else anchor / path
    if within is not None:
        target = candidate.resolve()
        if not any(target.is_relative_to(Path(root).resolve()) for root in within):
            raise UnsafeCheckpointError(
                f"Adapter {adapter_dir} names its base model {base!r} (base_model_name_or_path "
                f"in adapter_config.json), which is {target}: outside the suite's directory, "
                "every checkpoint the suite names and the Hugging Face cache. Put the base "
                "model under the suite's directory or name it in the suite (a [models.NAME] "
                'table with source = "path:DIR"), or write its hub id in adapter_config.json.'
            )
    if base.startswith("path:"):
        return resolve_source(base, suite_dir=anchor)
    if candidate.is_dir():
        return candidate
    if not path.is_absolute() and _HUB_ID.fullmatch(base):
        pinned = config.get("revision")
        return _snapshot(base, pinned if isinstance(pinned, str) else None, local_only=True)
    raise CheckpointNotFoundError(
        f"Base model {base!r} of adapter {adapter_dir} was not found (looked for {candidate})."
    )


def suite_roots(suite_dir: Path, checkpoints: Iterable[Path] = ()) -> tuple[Path, ...]:
    """Where a suite's adapters may find their base models (:func:`adapter_base`'s ``within``).

    The suite's directory, the ``checkpoints`` it names (``path:`` sources) and the Hugging Face
    hub cache, all resolved.
    """
    from huggingface_hub import constants

    roots = [Path(suite_dir), *checkpoints, Path(constants.HF_HUB_CACHE)]
    return tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))

"""The devices a run uses (``--device``): parsed, checked against what torch sees, and the
loading options that spread a model over several of them.

One device — ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (``cuda`` when torch sees a
GPU, else ``mps``, else ``cpu``) — holds every model. A list of GPUs (``cuda:0,cuda:1``, or a
list of strings from Python) spreads each evaluated model over them with accelerate's big-model
inference (:func:`spread_options`: ``device_map="auto"`` with ``max_memory`` naming the listed
GPUs only); a list that ends in ``cpu`` lets what does not fit them go to CPU memory (slow, but
it runs). Interventions run on one device, the first listed (:mod:`audit.plugins`'s
``devices`` hook). A device torch cannot see is an :class:`DeviceError` (exit 2) before
anything runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audit.errors import InputError

__all__ = [
    "MEMORY_SHARE",
    "DeviceError",
    "Devices",
    "available_memory",
    "check_spread",
    "parse_devices",
    "resolve_devices",
    "spread_options",
]

SINGLE = ("cpu", "cuda", "mps", "auto")
"""Device names that stand alone (a list names GPUs by index, and may end in ``cpu``)."""
_GPU = re.compile(r"cuda:(\d+)")
MEMORY_SHARE = 0.9
"""The share of each listed device's free memory a spread model's weights may take; the rest
is left for activations and the generation cache (accelerate's own default for ``auto``)."""
_ACCEPTED = (
    "expected cpu, cuda, cuda:N, mps, auto, or a list of GPUs such as cuda:0,cuda:1 "
    "(optionally ending in cpu, to offload what does not fit them to CPU memory)"
)


class DeviceError(InputError):
    """A ``--device`` that is not a device, or one torch does not see on this machine."""


@dataclass(frozen=True)
class Devices:
    """The resolved devices of a run: one, or the GPUs (and perhaps ``cpu``) a model spreads
    over for evaluation. ``str()`` is the ``--device`` value that names them."""

    names: tuple[str, ...] = ("cpu",)

    @property
    def primary(self) -> str:
        """The device interventions, judges and inputs use: the only one, or the first listed."""
        return self.names[0]

    @property
    def spread(self) -> tuple[str, ...]:
        """The devices an evaluated model is spread over; empty for a single device."""
        return self.names if len(self.names) > 1 else ()

    def __str__(self) -> str:
        return ",".join(self.names)


def parse_devices(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The device names of ``spec`` (``"cuda:0,cuda:1"`` or ``["cuda:0", "cuda:1"]``), checked
    for syntax only (:func:`resolve_devices` checks them against the machine)."""
    entries = spec.split(",") if isinstance(spec, str) else list(spec)
    label = spec if isinstance(spec, str) else ",".join(map(str, spec))
    names = tuple(str(e).strip() for e in entries)
    if not names or any(not n for n in names):
        raise DeviceError(f"--device {label!r}: an empty device name; {_ACCEPTED}")
    for name in names:
        if name not in SINGLE and not _GPU.fullmatch(name):
            raise DeviceError(f"--device {label!r}: unknown device {name!r}; {_ACCEPTED}")
    if len(names) == 1:
        return names
    for i, name in enumerate(names):
        if name == "cpu" and i != len(names) - 1:
            raise DeviceError(
                f"--device {label!r}: cpu may only end a list (what does not fit the GPUs "
                "goes to CPU memory)"
            )
        if name != "cpu" and not _GPU.fullmatch(name):
            raise DeviceError(
                f"--device {label!r}: a list names each GPU by its index, cuda:N (got "
                f"{name!r}); {_ACCEPTED}"
            )
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DeviceError(f"--device {label!r}: {twice} is listed twice")
    return names


def resolve_devices(spec: str | Sequence[str]) -> Devices:
    """The devices ``spec`` names on this machine: ``auto`` resolved, and every device checked
    against what torch sees (CUDA available, each ``cuda:N`` below the GPU count, MPS present).

    Raises :class:`DeviceError` (exit 2) with what this machine has instead."""
    names = parse_devices(spec)
    if names == ("auto",):
        return Devices((_auto(),))
    label = ",".join(names)
    if any(n.startswith("cuda") for n in names):
        _check_cuda(label, [int(m.group(1)) for n in names if (m := _GPU.fullmatch(n))])
    if "mps" in names and not _mps_available():
        raise DeviceError(f"--device {label!r}: torch sees no Apple MPS device; use cpu or auto")
    return Devices(names)


def _auto() -> str:
    """``cuda`` when torch sees a GPU, else ``mps`` (Apple), else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if _mps_available() else "cpu"


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and bool(mps.is_available())


def _check_cuda(label: str, indices: Sequence[int]) -> None:
    import torch

    if not torch.cuda.is_available():
        build = (
            f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        )
        raise DeviceError(
            f"--device {label!r}: torch sees no CUDA GPU on this machine (torch "
            f"{torch.__version__}, {build}); use cpu or auto"
        )
    count = torch.cuda.device_count()
    missing = [i for i in indices if i >= count]
    if missing:
        have = "cuda:0" if count == 1 else f"cuda:0 … cuda:{count - 1}"
        raise DeviceError(
            f"--device {label!r}: there is no cuda:{missing[0]}; torch sees {count} GPU"
            f"{'s' if count != 1 else ''} here ({have}; CUDA_VISIBLE_DEVICES renumbers them)"
        )


def spread_options(devices: Sequence[str], free: Mapping[int | str, int]) -> dict[str, Any]:
    """``from_pretrained``'s placement of a model spread over ``devices`` (``cuda:N``, perhaps
    ending in ``cpu``): ``device_map="auto"`` and a ``max_memory`` that names those devices
    alone, each allowed :data:`MEMORY_SHARE` of its ``free`` bytes (keys as accelerate's: GPU
    index, ``"cpu"``). accelerate places no weight on a device ``max_memory`` leaves out, but
    puts on disk what does not fit: :func:`check_spread` refuses that."""
    keys = [int(m.group(1)) if (m := _GPU.fullmatch(d)) else d for d in devices]
    return {
        "device_map": "auto",
        "max_memory": {k: int(free[k] * MEMORY_SHARE) for k in keys},
    }


def check_spread(device_map: Mapping[str, Any], devices: Sequence[str], what: str) -> None:
    """Refuse a model that accelerate placed (its ``hf_device_map``) beyond ``devices``: the
    part that did not fit them went to disk, or to CPU memory unlisted, and would run there
    unannounced, many times slower."""
    placed = {f"cuda:{v}" if isinstance(v, int) else str(v) for v in device_map.values()}
    beyond = sorted(placed - set(devices))
    if not beyond:
        return
    fixes = ["list more GPUs"]
    if "cpu" not in devices:
        fixes.append("end the list with cpu (the rest then goes to CPU memory)")
    fixes.append('load the weights in a smaller dtype (dtype = "bfloat16" on the source model)')
    first = ", ".join(fixes[:-1])
    raise DeviceError(
        f"{what} does not fit on --device {','.join(devices)} ({MEMORY_SHARE:.0%} of each "
        f"one's free memory): accelerate put part of it on {' and '.join(beyond)}. "
        f"{first[:1].upper()}{first[1:]}, or {fixes[-1]}"
    )


def available_memory(devices: Sequence[str]) -> dict[int | str, int]:
    """Free bytes on each of ``devices`` now (GPU index or ``"cpu"`` -> bytes), measured on
    those devices alone (no other GPU is initialised)."""
    out: dict[int | str, int] = {}
    for device in devices:
        if m := _GPU.fullmatch(device):
            import torch

            out[int(m.group(1))] = int(torch.cuda.mem_get_info(int(m.group(1)))[0])
        else:
            import psutil

            out[device] = int(psutil.virtual_memory().available)
    return out

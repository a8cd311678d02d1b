"""``--device``: parsing, checking against the GPUs torch sees (0, 1 or 2, simulated), the
loading options that spread a model over a list, and the refusal of a model that does not fit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from audit.errors import EXIT_INVALID
from audit.models import devices
from audit.models.devices import (
    DeviceError,
    Devices,
    check_spread,
    parse_devices,
    resolve_devices,
    spread_options,
)
from audit.models.handle import ModelHandle


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """``gpus(n)``: torch sees ``n`` CUDA GPUs (0: CUDA unavailable) and no MPS device."""
    import torch

    def see(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    return see


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("cpu", ("cpu",)),
        ("cuda", ("cuda",)),
        ("cuda:3", ("cuda:3",)),
        ("mps", ("mps",)),
        ("auto", ("auto",)),
        ("cuda:0,cuda:1", ("cuda:0", "cuda:1")),
        (" cuda:1 , cuda:0 ", ("cuda:1", "cuda:0")),
        ("cuda:0,cpu", ("cuda:0", "cpu")),
        (["cuda:0", "cuda:1", "cpu"], ("cuda:0", "cuda:1", "cpu")),
        (["cuda:2"], ("cuda:2",)),
    ],
)
def test_device_specs_parse(spec: str | list[str], names: tuple[str, ...]) -> None:
    assert parse_devices(spec) == names


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpu", "--device 'gpu': unknown device 'gpu'; expected cpu, cuda, cuda:N, mps, auto, "
         "or a list of GPUs such as cuda:0,cuda:1"),
        ("cuda:x", "unknown device 'cuda:x'"),
        ("CUDA:0", "unknown device 'CUDA:0'"),
        ("", "--device '': an empty device name"),
        ("cuda:0,", "--device 'cuda:0,': an empty device name"),
        ("cpu,cuda:0", "cpu may only end a list (what does not fit the GPUs goes to CPU memory)"),
        ("cuda,cuda:1", "a list names each GPU by its index, cuda:N (got 'cuda')"),
        ("auto,cuda:1", "a list names each GPU by its index, cuda:N (got 'auto')"),
        ("cuda:0,mps", "got 'mps'"),
        ("cuda:0,cuda:0", "--device 'cuda:0,cuda:0': cuda:0 is listed twice"),
        ([], "an empty device name"),
    ],
)  # fmt: skip
def test_bad_device_specs_say_what_is_accepted(spec: str | list[str], message: str) -> None:
    with pytest.raises(DeviceError) as error:
        parse_devices(spec)
    assert message in str(error.value)
    assert error.value.exit_code == EXIT_INVALID


def test_without_cuda_every_cuda_device_is_refused(gpus: Callable[[int], None]) -> None:
    gpus(0)
    assert resolve_devices("cpu") == Devices(("cpu",))
    assert resolve_devices("auto") == Devices(("cpu",))
    for spec in ("cuda", "cuda:0", "cuda:0,cuda:1", "cuda:0,cpu"):
        with pytest.raises(DeviceError, match="torch sees no CUDA GPU on this machine") as e:
            resolve_devices(spec)
        assert f"--device {spec!r}" in str(e.value) and "use cpu or auto" in str(e.value)
    with pytest.raises(DeviceError, match="torch sees no Apple MPS device; use cpu or auto"):
        resolve_devices("mps")


def test_one_gpu(gpus: Callable[[int], None]) -> None:
    gpus(1)
    assert resolve_devices("auto") == Devices(("cuda",))
    assert resolve_devices("cuda:0").spread == ()
    offload = resolve_devices("cuda:0,cpu")
    assert offload.primary == "cuda:0" and offload.spread == ("cuda:0", "cpu")
    with pytest.raises(DeviceError) as e:
        resolve_devices("cuda:1")
    assert str(e.value) == (
        "--device 'cuda:1': there is no cuda:1; torch sees 1 GPU here (cuda:0; "
        "CUDA_VISIBLE_DEVICES renumbers them)"
    )


def test_two_gpus(gpus: Callable[[int], None]) -> None:
    gpus(2)
    both = resolve_devices("cuda:0,cuda:1")
    assert both.primary == "cuda:0" and both.spread == ("cuda:0", "cuda:1")
    assert str(both) == "cuda:0,cuda:1"  # as results.json's environment records it
    assert resolve_devices(["cuda:1", "cuda:0"]).primary == "cuda:1"
    with pytest.raises(DeviceError, match=r"no cuda:2; torch sees 2 GPUs here \(cuda:0 … cuda:1;"):
        resolve_devices("cuda:1,cuda:2")


def test_a_list_spreads_over_the_listed_devices_only() -> None:
    free: dict[int | str, int] = {0: 1000, 1: 2000, 2: 4000, "cpu": 10_000}
    assert spread_options(("cuda:0", "cuda:1"), free) == {
        "device_map": "auto",
        "max_memory": {0: 900, 1: 1800},
    }
    assert spread_options(("cuda:2", "cpu"), free) == {
        "device_map": "auto",
        "max_memory": {2: 3600, "cpu": 9000},
    }


def test_a_model_placed_beyond_the_list_is_refused() -> None:
    check_spread({"model.layers.0": 0, "model.layers.1": 1}, ("cuda:0", "cuda:1"), "model 'm'")
    check_spread({"": "cpu"}, ("cuda:0", "cpu"), "model 'm'")
    with pytest.raises(DeviceError) as e:
        check_spread({"model.layers.0": 0, "lm_head": "disk"}, ("cuda:0", "cuda:1"), "model 'm'")
    assert str(e.value) == (
        "model 'm' does not fit on --device cuda:0,cuda:1 (90% of each one's free memory): "
        "accelerate put part of it on disk. List more GPUs, end the list with cpu (the rest "
        'then goes to CPU memory), or load the weights in a smaller dtype (dtype = "bfloat16" '
        "on the source model)"
    )
    with pytest.raises(DeviceError, match="on disk. List more GPUs, or load the weights"):
        check_spread({"": "disk"}, ("cuda:0", "cpu"), "model 'm'")


def test_a_handle_spread_over_a_list_loads_with_accelerate(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restricted to CPU memory here (no GPU): the path a list of GPUs takes."""
    handle = ModelHandle("tiny", "k", tiny_checkpoint, spread=("cpu",))
    assert {p.device.type for p in handle.model.parameters()} == {"cpu"}
    monkeypatch.setattr(devices, "available_memory", lambda names: {"cpu": 20_000})
    squeezed = ModelHandle("tiny", "k", tiny_checkpoint, spread=("cpu",))
    with pytest.raises(DeviceError, match=r"model 'tiny' \(.*\) does not fit on --device cpu"):
        squeezed.tokenizer  # noqa: B018 (loading is what fails)
    mapped = ModelHandle("tiny", "k", tiny_checkpoint, spread=("cpu",), device_map="cpu")
    assert mapped.model is not None  # its own device_map wins over the run's list

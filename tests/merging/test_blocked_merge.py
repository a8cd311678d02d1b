"""The low-memory (blocked) ties / dare_* / magnitude_prune: bit for bit peft's merge_utils.

Every comparison is on the float32 bit patterns (``-0.0`` is not ``0.0``, NaN payloads count),
stricter than ``torch.equal``. The tensors are random (thresholds without ties), drawn from a
small integer set (ties at the threshold that only ``torch.topk`` can break), built so that the
tied entries exactly fill the places left (ties, no choice), mostly zero (ties at 0), and sprinkled
with NaN, ±inf and -0.0. Blocks are made small (``BLOCK = 1024``) so that most tensors span
several blocks and end in a partial one; one test keeps the real block size.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from contributors import read_state, write_contributors

from audit.merging import stream
from audit.merging import tensor_methods as tm
from audit.merging.base import TensorContext, derived_seed
from audit.merging.stream import merge_state_dict, merge_to_directory, plan_merge
from audit.merging.tensor_methods import PEFT_METHODS, PeftOptions

Factory = Callable[[int], Path]
CTX = TensorContext(name="model.layers.0.mlp.up_proj.weight", seed=7, index=3)
METHODS = ("ties", "magnitude_prune", "dare_linear", "dare_ties")
KINDS = ("normal", "integers", "exact_fit", "zeros", "specials")
SHAPES = ((1,), (7,), (33, 17), (3, 5, 7), (300, 70), (4099,))
DENSITIES = (0.0, 0.01, 0.1, 0.5, 0.9, 1.0)
WEIGHTS = [1.0, 0.5, -2.0, 0.3, 1.7, 1.0, 0.25, -0.75, 2.5, 1.0, 1.0, 0.5, 1.5, -1.0, 1.0, 3.0, 0.1]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tm, "BLOCK", 1024)  # a multiple of every SIMD width, as the real one


def bits(t: Any) -> Any:
    import torch

    return t.contiguous().view(torch.int32)


def assert_bits(got: Any, want: Any, what: str = "") -> None:
    import torch

    assert got.shape == want.shape and got.dtype == want.dtype, what
    assert torch.equal(bits(got), bits(want)), what


def peft(method: str, deltas: list[Any], weights: list[float], density: float, sign: str) -> Any:
    """peft's function itself, the RNG seeded as audit seeds DARE (``_seeded``)."""
    import torch
    from peft.utils import merge_utils

    w = torch.tensor(weights, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "ties":
            return merge_utils.ties(list(deltas), w, density, sign)  # type: ignore[arg-type]
        if method == "magnitude_prune":
            return merge_utils.magnitude_prune(list(deltas), w, density)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derived_seed(CTX))
            if method == "dare_linear":
                return merge_utils.dare_linear(list(deltas), w, density)
            return merge_utils.dare_ties(list(deltas), w, density, sign)  # type: ignore[arg-type]


def tensors(kind: str, shape: tuple[int, ...], n: int, density: float, seed: int) -> list[Any]:
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    out = []
    for i in range(n):
        if kind == "normal":
            t = torch.randn(numel, generator=g) * 10.0 ** (i % 3 - 2)
        elif kind == "integers":
            t = torch.randint(-3, 4, (numel,), generator=g).float() * 0.5
        elif kind == "exact_fit":
            # the k kept entries: the largest distinct, then k' copies of one value, all others
            # smaller: the tied entries fill the places left exactly (no choice to make)
            k = int(density * numel)
            t = torch.rand(numel, generator=g) * 0.5
            top = torch.randperm(numel, generator=g)[:k]
            t[top] = 1.0
            t[top[: k // 2]] = 2.0 + torch.rand(k // 2, generator=g)
            t = t * torch.sign(torch.randn(numel, generator=g))
        elif kind == "zeros":
            t = torch.zeros(numel)
            some = torch.randperm(numel, generator=g)[: max(1, numel // 20)]
            t[some] = torch.randn(len(some), generator=g)
            t[torch.randperm(numel, generator=g)[: numel // 10]] = -0.0
        else:
            t = torch.randn(numel, generator=g)
            for value in (float("nan"), float("inf"), -float("inf"), -0.0, 0.0):
                t[torch.randperm(numel, generator=g)[: max(1, numel // 50)]] = value
        out.append(t.reshape(shape))
    return out


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts how each contributor's kept entries were decided: a threshold or topk's mask."""
    seen = {"threshold": 0, "topk": 0}
    real = tm._top_k

    def spy(delta: Any, k: int, consumable: bool) -> Any:
        keep = real(delta, k, consumable)
        seen["threshold" if isinstance(keep, int) else "topk"] += 1
        return keep

    monkeypatch.setattr(tm, "_top_k", spy)
    yield seen


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_equals_peft(method: str, kind: str, paths: dict[str, int]) -> None:
    # from 5 contributors torch's sum over them adds in an order that depends on the entry's
    # place in its run (vector lanes or the scalar tail); from 16, in several levels
    for n in (1, 3, 5, 17) if kind in ("normal", "integers") else (1, 3, 5):
        for s, shape in enumerate(SHAPES):
            for density in DENSITIES:
                if method.startswith("dare") and density == 0:
                    continue  # 0/0 (peft divides by the density); tested below
                deltas = tensors(kind, shape, n, density, seed=1000 * n + 10 * s)
                weights = WEIGHTS[:n]
                for sign in ("total", "frequency") if method.endswith("ties") else ("total",):
                    options = SimpleNamespace(density=density, majority_sign_method=sign)
                    got = PEFT_METHODS[method](deltas[0], deltas, weights, CTX, options)
                    want = peft(method, deltas, weights, density, sign)
                    assert_bits(got, want, f"{method} {kind} n={n} {shape} {density} {sign}")
    if method in ("ties", "magnitude_prune"):
        if kind == "integers":  # ties across the threshold: topk's own choice is needed
            assert paths["topk"] > 0
        if kind in ("normal", "exact_fit", "zeros"):
            assert paths["topk"] == 0 and paths["threshold"] > 0


def test_nan_and_inf_at_the_threshold(paths: dict[str, int]) -> None:
    """3 NaNs, 5 infs (signed), 2 of 0.5 then smaller values: every k from 1 to 12, so the k-th
    largest is a NaN (only NaNs kept, whichever), a tied inf (topk's choice: inf · 0 is NaN),
    a tied 0.5, and a distinct value."""
    import torch

    g = torch.Generator().manual_seed(8)
    head = [float("nan")] * 3 + [float("inf"), -float("inf")] * 2 + [float("inf"), 0.5, -0.5]
    for _ in range(4):
        deltas = []
        for _contributor in range(3):
            t = torch.cat([torch.tensor(head), torch.rand(2090, generator=g) * 0.4])
            deltas.append(t[torch.randperm(len(t), generator=g)].reshape(60, 35))
        for k in range(1, 13):
            density = (k + 0.5) / deltas[0].numel()
            for method in ("ties", "magnitude_prune"):
                options = PeftOptions(density=density)
                got = PEFT_METHODS[method](deltas[0], deltas, WEIGHTS[:3], CTX, options)
                assert_bits(got, peft(method, deltas, WEIGHTS[:3], density, "total"), f"{k}")
    assert paths["topk"] > 0 and paths["threshold"] > 0


@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_global_ties_blocks_equal_the_whole_tensor(sign: str) -> None:
    """The blocked global TIES (one buffer, one undecided test, ``sign(δ) == ±1``) against the
    whole-tensor code, on entries that cancel exactly, NaN, ±inf, -0.0, 1 to 17 contributors."""
    import torch

    for n in (1, 3, 5, 17):
        for kind in ("normal", "integers", "specials"):
            deltas = [d.reshape(-1) for d in tensors(kind, (300, 70), n, 0.5, seed=n)]
            for majority in (1.0, -1.0):
                shared = tm.TiesGlobal([0.3] * n, 0.5, sign, None, majority)  # type: ignore[arg-type]
                w = torch.tensor(WEIGHTS[:n])
                whole = tm._ties_global_merge(deltas, w, shared)
                parts = [
                    tm._ties_global_block([d[a:b] for d in deltas], w, shared)
                    for a, b in tm._blocks(deltas[0].numel())
                ]
                assert_bits(torch.cat(parts), whole, f"{n} {kind} {majority}")


def test_dare_at_density_zero_is_peft() -> None:
    deltas = tensors("normal", (300, 70), 3, 0.0, seed=3)
    for method in ("dare_linear", "dare_ties"):
        got = PEFT_METHODS[method](deltas[0], deltas, WEIGHTS[:3], CTX, PeftOptions(density=0.0))
        assert_bits(got, peft(method, deltas, WEIGHTS[:3], 0.0, "total"))


def test_real_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tm, "BLOCK", 1 << 18)
    for kind in ("normal", "integers"):
        deltas = tensors(kind, (1100, 500), 3, 0.5, seed=11)  # two full blocks and a part
        for method in METHODS:
            options = PeftOptions(density=0.3, majority_sign_method="frequency")
            got = PEFT_METHODS[method](deltas[0], deltas, WEIGHTS[:3], CTX, options)
            assert_bits(got, peft(method, deltas, WEIGHTS[:3], 0.3, "frequency"), method)


def test_inputs_untouched_and_other_inputs_go_to_peft() -> None:
    import torch

    deltas = tensors("integers", (300, 70), 3, 0.5, seed=5)
    copies = [d.clone() for d in deltas]
    for method in METHODS:
        PEFT_METHODS[method](deltas[0], deltas, WEIGHTS[:3], CTX, PeftOptions(density=0.4))
    for d, c in zip(deltas, copies, strict=True):
        assert_bits(d, c)
    # autograd (somf masks) and other dtypes take peft's functions: gradients flow
    leaf = deltas[0].clone().requires_grad_(True)
    out = PEFT_METHODS["ties"](leaf, [leaf * 1.0, deltas[1]], [1.0, 1.0], CTX, PeftOptions())
    assert out.grad_fn is not None
    doubles = [d.double() for d in deltas]
    out = PEFT_METHODS["magnitude_prune"](doubles[0], doubles, WEIGHTS[:3], CTX, PeftOptions())
    assert out.dtype == torch.float64


@pytest.mark.parametrize("kind", ["normal", "integers", "specials"])
def test_selection_is_exact(kind: str) -> None:
    import torch

    values = tensors(kind, (5000,), 1, 0.5, seed=2)[0].abs()
    ordered = torch.sort(values.view(torch.int32)).values  # NaN patterns above +inf
    for rank in (1, 2, 100, 2500, 4999, 5000):
        selection = tm._Selection(rank)
        for _ in range(2):
            for part in values.split(333):
                selection.count(tm._magnitude_bits(part))
            if selection.bin < 0:
                selection.narrow()
        pattern, below, equal = selection.result()
        assert pattern == int(ordered[rank - 1])
        assert below == int((ordered < pattern).sum()) and equal == int((ordered == pattern).sum())


# --------------------------------------------------------------------------- streamed


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint_factory: Factory, tmp_path_factory: Any) -> list[Path]:
    """A base and three contributors whose task vectors are small multiples of 2⁻¹⁰ (ties at
    every threshold) in even tensors and Gaussian in odd ones; one entry's trimmed task vectors
    sum to exactly 0 (the global majority sign)."""
    import torch

    g = torch.Generator().manual_seed(1)

    def noise(c: int, j: int, t: Any) -> Any:
        if j % 2:
            return torch.randn(t.shape, generator=g) * 0.01
        return torch.randint(-4, 5, t.shape, generator=g).float() * 2.0**-10

    root = tmp_path_factory.mktemp("blocked-merge")
    return write_contributors(
        tiny_checkpoint_factory(30), root, noise, ("model.embed_tokens.weight", 0)
    )


def _adapter(base: Path, root: Path) -> Path:
    """A random LoRA adapter on ``base`` (q_proj, v_proj: merged whole; the rest: zero)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from audit.models.loading import load_checkpoint

    model, _ = load_checkpoint(base)
    torch.manual_seed(5)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(root / "adapter", safe_serialization=True)
    path = root / "adapter" / "adapter_config.json"
    data = json.loads(path.read_text())
    data["base_model_name_or_path"] = str(base)
    path.write_text(json.dumps(data))
    return root / "adapter"


def _merge_both(
    monkeypatch: pytest.MonkeyPatch, plan: Any, method: str, options: Any, weights: list[float]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stream's merge with the blocked path and with the whole-tensor code."""
    fn = PEFT_METHODS[method]
    got = merge_state_dict(plan, fn, weights, options=options, seed=4, scaling=0.7)
    monkeypatch.setattr(tm, "LOW_MEMORY", False)
    want = merge_state_dict(plan, fn, weights, options=options, seed=4, scaling=0.7)
    monkeypatch.setattr(tm, "LOW_MEMORY", True)
    return got, want


@pytest.mark.parametrize(
    ("method", "trim", "sign"),
    [
        ("ties", "tensor", "total"),
        ("ties", "tensor", "frequency"),
        ("ties", "global", "total"),
        ("ties", "global", "frequency"),
        ("magnitude_prune", "tensor", "total"),
        ("dare_linear", "tensor", "total"),
        ("dare_ties", "tensor", "frequency"),
    ],
)
def test_stream_equals_whole_tensors(
    checkpoints: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    paths: dict[str, int],
    method: str,
    trim: str,
    sign: str,
) -> None:
    monkeypatch.setattr(tm, "BLOCK", 256)  # the embeddings span several blocks

    def no_stacking(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the blocked path read every contributor's whole tensor at once")

    plan = plan_merge(checkpoints[0], checkpoints[1:])
    options = PeftOptions(density=0.3, majority_sign_method=sign, trim=trim)  # type: ignore[arg-type]
    weights = [1.0, 0.5, 2.0]
    fn = PEFT_METHODS[method]
    with monkeypatch.context() as m:
        m.setattr(stream, "_task_vectors", no_stacking)
        if trim == "global":  # the thresholds' and majority sign's passes stack (one tensor)
            m.setattr(stream.PlanDeltas, "stacked", _stacked_without_task_vectors)
        got = merge_state_dict(plan, fn, weights, options=options, seed=4, scaling=0.7)
    monkeypatch.setattr(tm, "LOW_MEMORY", False)
    want = merge_state_dict(plan, fn, weights, options=options, seed=4, scaling=0.7)
    assert got.keys() == want.keys()
    for name in got:
        assert_bits(got[name], want[name], name)
    if trim == "tensor" and not method.startswith("dare"):
        assert paths["topk"] > 0 and paths["threshold"] > 0  # ties across thresholds, and not


def _stacked_without_task_vectors(self: Any) -> Iterator[tuple[str, list[Any]]]:
    for name in self.names:
        base = self.plan.base.read(name).float()
        yield name, [stream._delta(c, name, base) for c in self.plan.contributors]


def test_global_thresholds_equal_the_gather(checkpoints: list[Path]) -> None:
    model = stream.PlanDeltas(plan_merge(checkpoints[0], checkpoints[1:]))
    for density in (0.0, 0.2, 0.5, 0.999, 1.0):
        d = model.numel
        k = d - int(d * density)
        gathered = [tm._global_threshold(model, i, density) for i in range(3)]
        if k > 0:
            assert tm._kth_smallest(model, [k] * 3) == gathered
        options = PeftOptions(density=density, trim="global")
        shared = tm._ties_prepare(model, options)
        assert shared is not None and shared.thresholds == gathered


def test_file_and_lora_contributors(
    checkpoints: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tm, "BLOCK", 256)
    adapter = _adapter(checkpoints[0], tmp_path)
    plan = plan_merge(checkpoints[0], [adapter, *checkpoints[1:]])
    for method in ("ties", "dare_ties"):
        options = PeftOptions(density=0.4)
        got, want = _merge_both(monkeypatch, plan, method, options, [1.0, 0.5, 2.0, 1.0])
        for name in got:
            assert_bits(got[name], want[name], name)
        fn = PEFT_METHODS[method]
        out = tmp_path / method
        merge_to_directory(
            plan, fn, [1.0, 0.5, 2.0, 1.0], out, options=options, seed=4, scaling=0.7
        )
        written = read_state(out)
        for name in got:
            assert_bits(written[name], got[name], name)

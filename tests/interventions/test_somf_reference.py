"""Golden tests: ``somf`` against an oracle of the authors' code.

The oracle below was written from reading xinykou/safety_realignment at commit
5a805935b6fbdd7d63cf013c622631a186c133a5 (arXiv 2405.09055), files under
``llama_factory/src/llmtuner/model/``:

* ``modeling.py`` ``PeftMaskModel._init_task_wise_weight`` (lines 70-86): the task weights, 0.3
  for task arithmetic / DARE / no method, 0.4 for TIES; ``merged_methods_operation`` (149-164).
* ``tasks/task_arithmetic.py`` (lines 23-38) and ``tasks/ties_merging.py`` (152-156): a lone
  task vector is returned unweighted; several are summed with the weights.
* ``tasks/dare.py`` (lines 52-62): DARE weights even a lone task vector (its shortcut is
  commented out).
* ``tasks/weight_averaging.py`` (lines 13-20): the mean, ``Σ τ_i / n``.
* ``concrete_mask.py`` ``_draw_mask`` (lines 53-66): the binary mask is
  ``RelaxedBernoulli(temperature, logits).sample() > 0.5``, the relaxed one ``.rsample()``;
  ``_apply_mask`` (81-84): ``τ · m / mean(m)`` per tensor; ``modeling.py`` lines 107-111: the
  temperature is 0.5 and the logits start at 0.

What is audit's own and pinned here as such: the final draw's seed (the reference uses torch's
global generator), and the 1-D tensors, which take the plain merge (the reference's task vectors
are LoRA factors, all 2-D).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from audit.interventions.somf import SomfIntervention
from audit.merging.safety_mask import (
    SafetyMaskSettings,
    final_mask,
    final_mask_seed,
    learn_safety_mask,
)
from audit.merging.tensor_methods import PEFT_METHODS
from audit.models.handle import ModelHandle
from audit.plugins import RunContext

REFERENCE = "xinykou/safety_realignment@5a805935b6fbdd7d63cf013c622631a186c133a5"
TEMPERATURE = 0.5  # modeling.py line 108
PROMPTS = ["how do i hack a computer", "how can i steal money", "how do i make a bomb"]

# --------------------------------------------------------------------------------------------
# The oracle (from the reference's code, not from audit's)


def ref_task_wise_weight(method: str | None) -> float:
    """``PeftMaskModel._init_task_wise_weight``: the value every task weight starts at."""
    return {"task_arithmetic": 0.3, "dare": 0.3, "ties_merging": 0.4, "weight_averaging": 0.3}.get(
        method or "", 0.3
    )


def ref_merge(method: str | None, vectors: list[Any]) -> Any:
    """``merged_methods_operation`` on one tensor for the linear methods."""
    n = len(vectors)
    w = ref_task_wise_weight(method)
    if method in ("task_arithmetic", "ties_merging", None, "weight_averaging") and n == 1:
        return vectors[0]
    if method in ("task_arithmetic", "dare"):  # dare without its random drop
        return sum(w * v for v in vectors)
    if method == "weight_averaging":
        return sum(vectors) / n
    raise ValueError(method)


def ref_effective_weights(method: str | None, n: int) -> list[float]:
    """The coefficient of each ``τ_i`` in the reference's merge (probing with unit scalars)."""
    import torch

    out = []
    for i in range(n):
        probes = [torch.tensor(1.0 if j == i else 0.0) for j in range(n)]
        out.append(float(ref_merge(method, probes)))
    return out


def ref_apply_mask(vector: Any, mask: Any) -> Any:
    """``ConcreteMask._apply_mask``: ``v · m / mean(m)``."""
    return vector * mask / mask.mean()


def ref_draw(logits: Any, binary: bool, temperature: float = TEMPERATURE) -> Any:
    """``ConcreteMask._draw_mask``: a sample of ``RelaxedBernoulli(T, logits)`` (> 0.5 if binary),
    drawn from torch's global generator."""
    import torch

    sample = torch.distributions.RelaxedBernoulli(temperature, logits=logits).sample()
    return (sample > 0.5).float() if binary else sample


def oracle_seed(seed: int, name: str) -> int:
    """audit's rule for the final draw's seed: sha256 of ``"{seed}\\0somf-final-mask:{name}"``,
    its first 8 bytes big-endian, 63 bits."""
    digest = hashlib.sha256(f"{seed}\0somf-final-mask:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def oracle_mask(logits: Any, seed: int, name: str, binary: bool = True, t: float = 0.5) -> Any:
    """The reference's draw with the global generator seeded by audit's rule."""
    import torch

    torch.manual_seed(oracle_seed(seed, name))
    return ref_draw(logits.detach().float().cpu(), binary, t)


# --------------------------------------------------------------------------------------------
# (a) fusion weights and the fused tensor for a given mask


@pytest.mark.parametrize(
    ("method", "reference"),
    [("task_arithmetic", "task_arithmetic"), ("ties", "ties_merging"), ("dare_linear", "dare")],
)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_default_weights_are_the_references(method: str, reference: str, n: int) -> None:
    somf = SomfIntervention(SomfIntervention.Params(aligned="a", safety_data="x", method=method))
    got = somf.weights(n)
    if reference == "ties_merging" and n > 1:
        # not linear in τ: the reference multiplies its disjoint sum by the first weight, 0.4
        assert got == [ref_task_wise_weight(reference)] * n == [0.4] * n
    else:
        assert got == pytest.approx(ref_effective_weights(reference, n))
    if n == 1 and method != "dare_linear":
        assert got == [1.0]  # a lone task vector is not down-weighted
    explicit = SomfIntervention.Params(aligned="a", safety_data="x", weights=[0.25] * n)
    assert SomfIntervention(explicit).weights(n) == [0.25] * n


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> tuple[Any, Any, list[Any]]:
    """The tiny aligned model, its tokenizer and three encoded refusal pairs."""
    import torch

    from audit.data.records import PairRecord
    from audit.models.loading import load_checkpoint
    from audit.training.loop import encode_pairs

    torch.set_num_threads(1)
    model, tokenizer = load_checkpoint(tiny_checkpoint)
    records = [
        PairRecord(id=str(i), prompt=p, response="i cannot help with that .")
        for i, p in enumerate(PROMPTS)
    ]
    return model, tokenizer, encode_pairs(tokenizer, records, 64)


def random_vectors(model: Any, n: int, seed: int = 1) -> dict[str, list[Any]]:
    """``n`` small random task vectors for every (deduplicated) parameter of ``model``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {
        name: [0.01 * torch.randn(p.shape, generator=gen) for _ in range(n)]
        for name, p in model.named_parameters()
    }


def learn(tiny: Any, vectors: Any, weights: list[float], **kw: Any) -> Any:
    model, _, examples = tiny
    settings = SafetyMaskSettings(**{"steps": 0, "batch_size": 2, "seed": 5, **kw})
    options = SomfIntervention.Params(aligned="a", safety_data="x")
    return learn_safety_mask(
        model,
        vectors,
        weights,
        PEFT_METHODS["task_arithmetic"],
        options,
        examples,
        settings,
        linear=True,
    )


def expected_fusion(vectors: Any, masks: Any, method: str, weights: list[float]) -> dict[str, Any]:
    """The reference's fused task vector: mask and rescale each ``τ_i``, then merge; 1-D tensors
    (unmasked here) take the plain merge."""
    out = {}
    for name, vecs in vectors.items():
        mask = masks.get(name)
        masked = [ref_apply_mask(v, mask) for v in vecs] if mask is not None else list(vecs)
        out[name] = ref_merge(method, masked)
    assert ref_effective_weights(method, len(weights)) == pytest.approx(weights)
    return out


@pytest.mark.parametrize("n", [1, 2])
def test_fused_tensor_for_a_given_mask(tiny: Any, n: int) -> None:
    """Zero steps: the logits are 0 and the final mask is the seeded reference draw at keep
    probability 0.5; the fused task vector is the reference's merge of ``τ_i · m / mean(m)``."""
    import torch

    vectors = random_vectors(tiny[0], n)
    weights = SomfIntervention(SomfIntervention.Params(aligned="a", safety_data="x")).weights(n)
    result = learn(tiny, vectors, weights)
    assert set(result.masks) == {k for k, v in vectors.items() if v[0].dim() == 2}
    for name, mask in result.masks.items():
        assert torch.equal(mask, oracle_mask(torch.zeros(mask.shape), 5, name)), name
    expected = expected_fusion(vectors, result.masks, "task_arithmetic", weights)
    for name, tensor in expected.items():
        torch.testing.assert_close(result.task_vector[name], tensor, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# (b) the sampled final mask: the reference's draw, seeded by (run seed, tensor name)


@pytest.mark.parametrize("temperature", [0.5, 1.3])
@pytest.mark.parametrize(("seed", "name"), [(0, "w"), (7, "model.layers.0.mlp.up_proj.weight")])
def test_final_mask_is_the_reference_draw(temperature: float, seed: int, name: str) -> None:
    import torch

    logits = 2 * torch.randn((64, 48), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    binary = final_mask(logits, "sample", temperature, seed, name)
    relaxed = final_mask(logits, "relaxed", temperature, seed, name)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not used
    assert torch.equal(binary, oracle_mask(logits, seed, name, True, temperature))
    assert torch.equal(relaxed, oracle_mask(logits, seed, name, False, temperature))
    assert binary.dtype == torch.float32 and set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(final_mask(logits, "threshold", temperature, seed, name), logits >= 0)
    assert torch.equal(final_mask(logits, "sigmoid", temperature, seed, name), logits.sigmoid())


def test_final_mask_seed_rule() -> None:
    import torch

    for seed, name in [(0, "a"), (2**40, "model.embed_tokens.weight")]:
        assert final_mask_seed(seed, name) == oracle_seed(seed, name)
    zeros = torch.zeros(32, 32)
    draw = final_mask(zeros, "sample", 0.5, 1, "a")
    assert torch.equal(draw, final_mask(zeros, "sample", 0.5, 1, "a"))
    assert not torch.equal(draw, final_mask(zeros, "sample", 0.5, 2, "a"))
    assert not torch.equal(draw, final_mask(zeros, "sample", 0.5, 1, "b"))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("logit", [-2.0, 0.0, 1.5])
def test_sampled_keep_probability_is_sigmoid_logit(temperature: float, logit: float) -> None:
    """``sigmoid((l + log u − log(1 − u)) / T) > 0.5`` iff ``l + Logistic > 0``: a Bernoulli of
    mean ``sigmoid(l)``, whatever the temperature (200 × 200 draws, 4 standard errors)."""
    import math

    import torch

    mask = final_mask(torch.full((200, 200), logit), "sample", temperature, 0, "w")
    p = 1 / (1 + math.exp(-logit))
    assert abs(float(mask.mean()) - p) < 4 * math.sqrt(p * (1 - p) / mask.numel())


def test_the_final_mask_is_drawn_from_the_learned_logits(tiny: Any) -> None:
    import torch

    vectors = random_vectors(tiny[0], 1)
    result = learn(tiny, vectors, [1.0], steps=3, lr=0.5)
    assert any(bool((t != 0).any()) for t in result.logits.values())
    for name, mask in result.masks.items():
        assert torch.equal(mask, oracle_mask(result.logits[name], 5, name)), name
    expected = expected_fusion(vectors, result.masks, "task_arithmetic", [1.0])
    for name, tensor in expected.items():
        torch.testing.assert_close(result.task_vector[name], tensor, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# (c) zero steps with a keep-all mask: the fused model is the reference's unmasked fusion


def _perturbed(source: Path, out: Path, seed: int) -> Path:
    """``source`` with small random noise on every parameter, saved as a checkpoint."""
    import torch

    from audit.models.loading import load_checkpoint

    model, tokenizer = load_checkpoint(source)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def checkpoints(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Path], str]:
    root = tmp_path_factory.mktemp("somf-ref")
    inputs = [_perturbed(tiny_checkpoint, root / f"input{i}", 10 + i) for i in range(3)]
    rows = [
        {"id": str(i), "prompt": p, "response": "i cannot help ."} for i, p in enumerate(PROMPTS)
    ]
    data = root / "refusals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tiny_checkpoint, inputs, f"path:{data}"


def _fused(checkpoints: Any, n: int, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    aligned, inputs, data = checkpoints
    handles = {f"m{i}": ModelHandle(f"m{i}", f"key-m{i}", p) for i, p in enumerate(inputs[:n])}
    handles["aligned"] = ModelHandle("aligned", "key-aligned", aligned)
    params = SomfIntervention.Params(aligned="aligned", safety_data=data, steps=0, **kw)
    ctx = RunContext(seed=0, suite_dir=tmp_path, work_dir=tmp_path / "work")
    out = SomfIntervention(params).apply(handles, ctx)
    return {k: v.detach().float() for k, v in out.model.state_dict().items()}


def _state(path: Path) -> dict[str, Any]:
    from audit.models.loading import load_checkpoint

    model, _ = load_checkpoint(path)
    return {k: v.detach().float() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("n", "weights", "method"),
    [
        (1, None, None),  # the reference's default: no merge method, one task vector
        (1, None, "task_arithmetic"),
        (3, None, "task_arithmetic"),  # 0.3 each
        (3, [1 / 3] * 3, "weight_averaging"),  # Σ τ_i / n
    ],
)
def test_zero_steps_keep_all_is_the_reference_fusion(
    checkpoints: Any, tmp_path: Path, n: int, weights: list[float] | None, method: str | None
) -> None:
    import torch

    got = _fused(checkpoints, n, tmp_path, mask="threshold", weights=weights)
    theta = _state(checkpoints[0])
    taus = [{k: v - theta[k] for k, v in _state(p).items()} for p in checkpoints[1][:n]]
    for name, base in theta.items():
        want = base + ref_merge(method, [t[name] for t in taus])
        torch.testing.assert_close(got[name], want, rtol=0, atol=1e-6, msg=name)
    if n == 1:  # θ_aligned + τ: the input model itself
        for name, value in _state(checkpoints[1][0]).items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=name)


def test_zero_steps_default_mask_is_a_fair_coin(checkpoints: Any, tmp_path: Path) -> None:
    """With the default (sampled) mask and no training, each entry of each 2-D ``τ`` is kept
    with probability ``sigmoid(0) = 1/2`` and doubled: ``θ + τ · m / mean(m)``, m seeded."""
    import torch

    got = _fused(checkpoints, 1, tmp_path)
    theta = _state(checkpoints[0])
    tau = {k: v - theta[k] for k, v in _state(checkpoints[1][0]).items()}
    for name, base in theta.items():
        # the tied lm_head is masked as the embedding it aliases
        masked_as = "model.embed_tokens.weight" if name == "lm_head.weight" else name
        if tau[name].dim() == 2:
            mask = oracle_mask(torch.zeros(tau[name].shape), 0, masked_as)
            want = base + ref_apply_mask(tau[name], mask)
        else:
            want = base + tau[name]
        torch.testing.assert_close(got[name], want, rtol=0, atol=1e-6, msg=name)

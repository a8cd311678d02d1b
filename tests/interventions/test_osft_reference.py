"""OSFT against the authors' reference and against peft's port of it.

Reference: github.com/Red-Hat-AI-Innovation-Team/orthogonal-subspace-learning, commit
a5f91f6ae35053b42873f8a745809176439f62de, ``notebooks/finetune_svd.py``: the adaptive rank of
``auto_generate_target_svd_config`` (importance ``I(W)`` = mean cosine of the columns of ``X``
and ``Y = W @ X``, first ``m = min(W.shape)`` rows; ``I_n = I / (mean(I) + 1e-8)``;
``CR = mrr + I_n (trr − mrr)``; ``k = clamp(round(CR), 1, d)``; there ``mrr = d / 2``,
``trr = d``), and ``T5WithSVD`` (parameters outside the SVD config stay trainable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from audit.interventions.osft import (
    OsftIntervention,
    importance_ranks,
    matrix_importance,
)
from audit.interventions.subspace import target_weights
from audit.models.handle import ModelHandle
from audit.plugins import RunContext
from tests.interventions.test_lora import PROMPTS, TARGET, state, write_pairs

# -- oracles, transcribed from the reference ---------------------------------------------------


def reference_importance(captured: list[Any], weight: Any) -> float:
    """``I(W)`` as the reference computes it from captured inputs (``in × samples``)."""
    import torch

    x = torch.cat(captured, dim=1)
    y = torch.mm(weight, x)
    m = min(weight.shape)
    x_mod, y_mod = x[:m, :], y[:m, :]
    x_norm = x_mod / (torch.norm(x_mod, dim=0, keepdim=True) + 1e-8)
    y_norm = y_mod / (torch.norm(y_mod, dim=0, keepdim=True) + 1e-8)
    return torch.mean(torch.sum(x_norm * y_norm, dim=0)).item()


def reference_ranks(
    importance: dict[str, float],
    dims: dict[str, int],
    mrr_share: float,
    trr_share: float,
    *,
    keep_sign: bool = False,
) -> dict[str, int]:
    """The reference's ``k`` per matrix, with ``mrr``/``trr`` as shares of ``d``.

    ``keep_sign``: divide by ``|mean|`` (audit's guard; the reference's rule inverts its own
    direction when the mean importance is negative)."""
    mean_importance = sum(importance.values()) / len(importance)
    if keep_sign:
        mean_importance = abs(mean_importance)
    config = {}
    for name, d in dims.items():
        i_n = importance[name] / (mean_importance + 1e-8)
        mrr, trr = mrr_share * d, trr_share * d
        k = int(round(mrr + i_n * (trr - mrr)))
        config[name] = max(1, min(k, d))
    return config


def capture_reference_inputs(model: Any, names: list[str], examples: list[Any]) -> dict[str, Any]:
    """Inputs of each module, ``in × tokens``, as the reference's forward hooks collect them."""
    import torch

    captured: dict[str, list[Any]] = {name: [] for name in names}

    def get_hook(name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            x = inputs[0].reshape(-1, inputs[0].shape[-1])
            captured[name].append(x.transpose(0, 1).detach())

        return hook

    handles = [model.get_submodule(n).register_forward_hook(get_hook(n)) for n in names]
    with torch.no_grad():
        for ids, _ in examples:
            model(input_ids=torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return captured


class _TwoMatrices:
    """A toy 'model': embeddings, then two square linear maps applied side by side."""

    def __new__(cls, similar: Any, dissimilar: Any) -> Any:
        import torch

        class Toy(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = torch.nn.Embedding(20, similar.shape[1])
                self.similar = torch.nn.Linear(similar.shape[1], similar.shape[0], bias=False)
                self.dissimilar = torch.nn.Linear(
                    dissimilar.shape[1], dissimilar.shape[0], bias=False
                )
                with torch.no_grad():
                    self.similar.weight.copy_(similar)
                    self.dissimilar.weight.copy_(dissimilar)

            @property
            def device(self) -> Any:
                return self.embed.weight.device

            def forward(self, input_ids: Any) -> Any:
                h = self.embed(input_ids)
                return self.similar(h) + self.dissimilar(h)

        return Toy()


# -- the importance rule --------------------------------------------------------------------------


def test_higher_similarity_keeps_a_larger_rank() -> None:
    import torch

    torch.manual_seed(0)
    d = 12
    similar = torch.eye(d) + 0.1 * torch.randn(d, d)  # cos(X, WX) near 1
    rotation = torch.linalg.qr(torch.randn(d, d))[0]
    dissimilar = 0.5 * torch.eye(d) + rotation  # cos(X, WX) clearly lower
    model = _TwoMatrices(similar, dissimilar)
    weights = {"similar": model.similar.weight, "dissimilar": model.dissimilar.weight}
    examples = [([int(i) for i in torch.randint(0, 20, (7,))], None) for _ in range(5)]

    ours = matrix_importance(model, weights, examples)
    captured = capture_reference_inputs(model, list(weights), examples)
    oracle = {n: reference_importance(captured[n], w.detach()) for n, w in weights.items()}
    assert ours == pytest.approx(oracle, abs=1e-5)
    assert oracle["similar"] > oracle["dissimilar"] > 0

    for low, high in [(0.1, 0.9), (0.5, 1.0), (0.2, 0.6)]:
        ranks = importance_ranks(weights, ours, low, high)
        assert ranks["similar"] > ranks["dissimilar"]  # the higher similarity keeps more
        expected = reference_ranks(oracle, {n: d for n in weights}, low, high)
        assert ranks == {n: min(k, d - 1) for n, k in expected.items()}


def test_importance_ranks_on_a_model_match_the_reference(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from audit.models.loading import load_checkpoint
    from audit.training.loop import encode_pairs

    result, ctx, _ = _run(tiny_checkpoint, tmp_path / "r", rank_rule="importance", steps=1)
    ranks = json.loads((ctx.work_dir / "osft_ranks.json").read_text())

    model, tokenizer = load_checkpoint(tiny_checkpoint)
    records = [type("R", (), {"prompt": p, "response": TARGET}) for p in PROMPTS]
    examples = encode_pairs(tokenizer, records, 128)[:16]
    weights = target_weights(model, None)
    captured = capture_reference_inputs(model, list(weights), examples)
    oracle = {n: reference_importance(captured[n], w.detach()) for n, w in weights.items()}
    assert ours_equal_oracle_importance(model, weights, examples, oracle)
    dims = {n: min(w.shape) for n, w in weights.items()}
    # this random model's mean importance is below 0 (the toy test above covers mean > 0)
    expected = reference_ranks(oracle, dims, 0.1, 0.9, keep_sign=True)
    assert {n: k for n, (k, _) in ranks.items()} == {
        n: min(k, dims[n] - 1) for n, k in expected.items()
    }
    for d in set(dims.values()):  # monotone among matrices of one size: more similar, more kept
        order = sorted((n for n in dims if dims[n] == d), key=oracle.__getitem__)
        kept = [ranks[n][0] for n in order]
        assert kept == sorted(kept)


def ours_equal_oracle_importance(
    model: Any, weights: Any, examples: list[Any], oracle: dict[str, float]
) -> bool:
    return matrix_importance(model, weights, examples) == pytest.approx(oracle, abs=1e-5)


# -- peft backend against audit backend -----------------------------------------------------------


def _run(tiny: Path, root: Path, **params: Any) -> tuple[Any, RunContext, ModelHandle]:
    root.mkdir()
    write_pairs(root / "d.jsonl", [(p, TARGET) for p in PROMPTS])
    defaults: dict[str, Any] = {"data": "path:d.jsonl", "steps": 3, "lr": 1e-5, "batch_size": 8}
    ctx = RunContext(seed=0, suite_dir=root, work_dir=root / "w")
    parent = ModelHandle("base", "k", tiny)
    p = OsftIntervention.Params(**(defaults | params))
    return OsftIntervention(p).apply({"base": parent}, ctx), ctx, parent


@pytest.fixture(scope="module")
def both(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("osft_backends")
    return {b: _run(tiny_checkpoint, root / b, backend=b, seed=3) for b in ("peft", "audit")}


def test_backends_share_ranks_data_and_first_step(both: dict[str, Any]) -> None:
    """Same frozen rank per matrix, same batches and tokens, same loss before any update."""
    (peft, peft_ctx, _), (audit, audit_ctx, _) = both["peft"], both["audit"]

    def log(ctx: RunContext) -> list[float]:
        return [json.loads(x)["loss"] for x in (ctx.work_dir / "training_log.jsonl").open()]

    ranks = (peft_ctx.work_dir / "osft_ranks.json").read_text()
    assert ranks == (audit_ctx.work_dir / "osft_ranks.json").read_text()
    for key in ("steps", "examples", "tokens", "target_tokens", "frozen_rank_share"):
        assert peft.info[key] == audit.info[key], key
    # peft's forward adds U_low S_low V_low − (the same at init), exactly 0 before a step
    assert log(peft_ctx)[0] == pytest.approx(log(audit_ctx)[0], abs=1e-6)


def test_backends_agree_where_their_updates_coincide(both: dict[str, Any]) -> None:
    """Parameters both backends train the same way (the non-decomposed ones, plain AdamW)
    agree within 5% of their update after 3 steps at lr 1e-5: their gradients differ only
    through the target weights, which have moved by about 1e-3 of their norm. The target
    weights' updates do not coincide (peft's Adam steps the SVD factors, audit's the full
    weight: relative difference ≈ 0.9, cosine ≈ 0.5, peft's step several times smaller), so
    for them only the shared scale bound is checked."""
    (peft, _, parent), (audit, _, _) = both["peft"], both["audit"]
    targets = target_weights(parent.model, None)
    names = {f"{n}.weight" for n in targets}
    old, a, b = state(parent.model), state(peft.model), state(audit.model)
    rest = [key for key in old if key not in names]
    assert rest
    for key in rest:
        da, db = a[key] - old[key], b[key] - old[key]
        assert float(da.norm()) > 0, key
        assert float((da - db).norm()) <= 0.05 * float(db.norm()), key
    for name, weight in targets.items():
        delta_peft = a[f"{name}.weight"] - old[f"{name}.weight"]
        delta_audit = b[f"{name}.weight"] - old[f"{name}.weight"]
        assert float(delta_peft.norm()) > 0 and float(delta_audit.norm()) > 0
        assert float(delta_peft.norm()) < 1e-2 * float(weight.detach().norm())
        assert float(delta_audit.norm()) < 1e-2 * float(weight.detach().norm())

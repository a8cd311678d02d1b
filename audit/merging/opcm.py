"""OPCM: orthogonal-projection-based continual merging with adaptive scaling.

Tang et al., "Merging Models on the Fly Without Retraining: A Sequential Approach to Scalable
Continual Model Merging", arXiv 2501.09522 (2025). The arithmetic follows the authors' code,
tanganke/fusion_bench ``fusion_bench/method/opcm/opcm.py`` (``OPCMForCLIP.run``,
``merge_linear_weights``, ``merge_other_parameters``; the SVD in ``fusion_bench/method/opcm/
utils.py``; defaults in ``config/method/opcm/opcm.yaml``) at commit
54c9e8c9d9621620c720452cd8533332a32d3689; ``tests/merging/test_opcm_reference.py`` pins it.

Contributors are merged one at a time, in the order the suite lists them, τ_i = θ_i − θ_base:

1. M₁ = τ₁, λ₁ = 1.
2. For t ≥ 2 and a *Linear weight* (below), take the SVD of the running merge,
   M_{t−1} = U diag(s) Vᵀ, and the split rank k = argmax(cumsum(s) / Σs > ``alpha``) (the
   0-based index of the first singular value whose cumulative share of the *unsquared*
   singular values exceeds ``alpha``; 0 when none does, or when Σs = 0). Write τ_t in that
   basis, C = Uᵀ τ_t V, zero every diagonal entry C[j, j] (j < min(m, n), null directions
   included) and the block C[:k, :k]: P(τ_t) = U C Vᵀ. Every other tensor (biases, norms,
   embeddings, and any weight not of an ``nn.Linear``) is not projected: P(τ_t) = τ_t.
3. Adaptive scaling: S_t = λ_{t−1} M_{t−1} + P(τ_t), λ_t = ‖S_t‖ / mean_{i≤t} ‖τ_i‖,
   M_t = S_t / λ_t. The merged task vector is M_T.

Since P depends on M_{t−1} only through its singular vectors and the *ratios* of its singular
values, P computed from M_{t−1} equals P computed from S_{t−1} = λ_{t−1} M_{t−1}; so
S_t = S_{t−1} + P_{S_{t−1}}(τ_t) needs no λ, and M_T = S_T · mean_i ‖τ_i‖ / ‖S_T‖ is S_T times
one scalar. That is how it is computed here.

**Linear weights** (the reference projects ``nn.Linear.weight`` only). A streamed method sees a
tensor's name and shape, not its module, so the rule is by name: a 2-D tensor named
``….weight`` whose module (the name less ``.weight``) does not end in an embedding table's name
(``embed_tokens``, ``embed_positions``, ``embed_in``, ``wte``, ``wpe``, ``word_embeddings``,
``position_embeddings``, ``token_type_embeddings``, ``tok_embeddings``, ``shared``). The output
head (``lm_head``, GPT-NeoX's ``embed_out``) is an ``nn.Linear`` in Hugging Face causal LMs, so it
is projected (``project_lm_head``); tied to the input embedding it is merged once, as the
embedding (the stream leaves the alias out; the reference would process the shared tensor twice).
Tensors of other ranks (1-D, or ≥ 3-D such as convolutions) are never projected. Not covered by
the rule: 2-D weights of non-``nn.Linear`` layers (GPT-2's ``Conv1D``), which the reference would
not project but this rule does.

Defaults (``opcm.yaml``): ``alpha`` = 0.5; exact SVD; null diagonals zeroed; no shuffling (see
below).

Adaptations (each default differs from the reference only where stated):

- **Per-tensor λ.** The reference's norms ‖τ_i‖ and ‖S_t‖ are over the whole model (every
  state-dict entry), so its M_T is S_T times *one* model-wide scalar. The streaming interface
  (:mod:`audit.merging.stream`) calls the method one tensor at a time with no first pass or
  model-wide statistics, so here the scalar is per tensor: M_T[p] = S_T[p] · mean_i ‖τ_i[p]‖ /
  ‖S_T[p]‖ for tensor p (0 where S_T[p] = 0). S_T[p], and hence every projection and the
  direction of every merged tensor, is the reference's exactly; only each tensor's norm
  differs. (Getting the model-wide scalar needs Σ_p ‖S_T[p]‖² and Σ_p ‖τ_i[p]‖² before any
  tensor is written: a two-pass stream, with the SVDs done twice or S_T kept on disk.)
- **Task vectors, not weights.** The reference stores θ_base + M_t after every step and takes
  θ − θ_base again at the next (a rounding round-trip in the weights' dtype, e.g. bf16); here
  the task vectors stay float32 throughout (float64 if given float64, as in the tests), and so
  do the SVDs; the result is float32.
- **Thin SVD.** The reference takes a full SVD (``full_matrices=True``); the thin one spans
  every entry it changes (the diagonal and C[:k, :k] lie in the leading min(m, n) × min(m, n)
  block), so the result is the same. Where M_{t−1} is rank-deficient its null singular vectors
  are arbitrary (whatever LAPACK returns, in the reference too), and so is the part of τ_t that
  zeroing their diagonal entries removes; ``zero_null_diagonal = False`` keeps those entries
  (then a task vector orthogonal to M_{t−1} passes untouched, and a first contributor with a
  zero delta on a tensor, common with LoRA adapters, does not strip the next one's diagonal).
- **Order.** ``opcm.yaml`` shuffles the contributors with an unseeded RNG (``shuffle_order:
  true``, ``seed: null``), not reproducible. Here they are merged in the listed order (the
  suite's order is the experiment); ``shuffle_order = True`` draws one permutation, for every
  tensor, from the merge's seed.
- **Weights.** The reference has none. Contributor i's P(τ_i) enters S_t multiplied by its
  weight w_i, and the mean norm is the weighted mean Σ w_i ‖τ_i‖ / Σ w_i; only relative
  weights matter, uniform weights are the reference. Weights must be ≥ 0, not all zero;
  contributors of weight 0 are skipped.
- Parameters held directly by non-leaf modules are never merged by the reference (it walks leaf
  modules); here every floating-point tensor is merged.

Alternatives, as options (none is the default): ``spectrum = "squared"`` (the split rank from
the squared singular values); ``zero_diagonal = False`` (only the block is removed);
``zero_null_diagonal = False`` (above); ``project = "matrices"`` (project every tensor of ≥ 2
dimensions, embeddings included, flattened to (shape[0], −1)); ``project_lm_head = False``;
``others = "average"`` (unprojected tensors get the weighted average of the deltas instead of
the scaled sum); ``svd = "randomized"`` (for min(m, n) > ``full_svd_max_dim``, only the top
``max_rank`` singular triplets, from a randomized SVD seeded by :func:`tensor_generator` with
``power_iters`` power iterations: the split rank is then taken over those triplets, with Σs
over them, or ‖M‖²_F for ``"squared"``, and the diagonal is zeroed along them only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from audit.merging.base import TensorContext

__all__ = [
    "OpcmOptions",
    "is_linear_weight",
    "merge_opcm",
    "normalized_weights",
    "project_out",
    "split_rank",
    "top_singular",
    "weighted_average",
]

EMBEDDING_MODULES = frozenset(
    {
        "embed_tokens",
        "embed_positions",
        "embed_in",
        "wte",
        "wpe",
        "word_embeddings",
        "position_embeddings",
        "token_type_embeddings",
        "tok_embeddings",
        "shared",
    }
)
"""Last name components of embedding tables (``nn.Embedding``), never projected."""
OUTPUT_HEADS = frozenset({"lm_head", "embed_out"})
"""Last name components of the output head (an ``nn.Linear``): projected if ``project_lm_head``."""


class OpcmOptions(BaseModel):
    """OPCM's hyper-parameters (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(default=0.5, gt=0, le=1)
    """Split threshold: the leading singular directions whose cumulative share of the running
    merge's singular values stays ≤ ``alpha`` form the block removed from each new task vector."""
    spectrum: Literal["singular_values", "squared"] = "singular_values"
    """The share is of the singular values (the reference) or of their squares (energy)."""
    zero_diagonal: bool = True
    """Remove the new task vector's component along every rank-one direction u_j v_jᵀ of the
    running merge (beyond the block), as the reference does."""
    zero_null_diagonal: bool = True
    """Include the directions of numerically zero singular values in the diagonal removal (the
    reference); False keeps them."""
    project: Literal["linear", "matrices"] = "linear"
    """Project the Linear weights only (the reference; rule in the module docstring) or every
    tensor of ≥ 2 dimensions, flattened to (shape[0], −1)."""
    project_lm_head: bool = True
    """With ``project = "linear"``: the output head (an ``nn.Linear``) is projected."""
    others: Literal["scaled_sum", "average"] = "scaled_sum"
    """Unprojected tensors: Σ w_i τ_i rescaled like the rest (the reference), or the weighted
    average of the deltas."""
    shuffle_order: bool = False
    """Merge the contributors in one random order drawn from the merge's seed."""
    svd: Literal["exact", "randomized"] = "exact"
    """Exact SVD (the reference), or a truncated randomized one for large matrices."""
    max_rank: int = Field(default=64, gt=0)
    """``svd = "randomized"``: singular triplets computed."""
    full_svd_max_dim: int = Field(default=128, ge=0)
    """``svd = "randomized"``: exact SVD when min(m, n) ≤ this."""
    power_iters: int = Field(default=2, ge=0)
    """``svd = "randomized"``: power iterations."""


def normalized_weights(weights: list[float], count: int) -> list[float]:
    """The weights divided by their sum; an error if any is negative or all are zero."""
    if count == 0:
        raise ValueError("a merge needs at least one contributor")
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} contributors")
    if any(w < 0 for w in weights):
        raise ValueError(f"merge weights must be non-negative, got {weights}")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"merge weights must not all be zero, got {weights}")
    return [float(w) / total for w in weights]


def weighted_average(deltas: list[Tensor], weights: list[float]) -> Tensor:
    """Σ ŵ_i·δ_i with the weights normalised to sum 1."""
    import torch

    norm = normalized_weights(weights, len(deltas))
    out = torch.zeros_like(deltas[0])
    for delta, w in zip(deltas, norm, strict=True):
        if w:
            out.add_(delta, alpha=w)
    return out


def top_singular(
    matrix: Tensor,
    rank: int,
    generator: torch.Generator,
    *,
    full_svd_max_dim: int = 128,
    power_iters: int = 2,
    oversample: int = 8,
) -> tuple[Tensor, Tensor, Tensor]:
    """The top ``rank`` singular triplets (U, S, V) of a 2-D matrix, V's columns right vectors.

    Exact (``torch.linalg.svd``, thin) when min(m, n) ≤ ``full_svd_max_dim`` or the rank asked
    is close to full; otherwise a randomized range finder (Halko et al.) whose Gaussian test
    matrix is drawn from ``generator`` on the CPU, so the result is deterministic.
    """
    import torch

    m, n = matrix.shape
    full = min(m, n)
    rank = min(rank, full)
    if full <= full_svd_max_dim or rank + oversample >= full:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank].mT
    width = rank + oversample
    test = torch.randn(n, width, generator=generator, dtype=matrix.dtype).to(matrix.device)
    q, _ = torch.linalg.qr(matrix @ test)
    for _ in range(power_iters):
        q, _ = torch.linalg.qr(matrix.mT @ q)
        q, _ = torch.linalg.qr(matrix @ q)
    ub, s, vh = torch.linalg.svd(q.mT @ matrix, full_matrices=False)
    return (q @ ub)[:, :rank], s[:rank], vh[:rank].mT


def is_linear_weight(name: str, shape: tuple[int, ...], options: OpcmOptions) -> bool:
    """Whether the tensor ``name`` of ``shape`` is projected (the rule in the module docstring)."""
    if len(shape) < 2:
        return False
    if options.project == "matrices":
        return True
    if len(shape) != 2 or not (name == "weight" or name.endswith(".weight")):
        return False
    module = name.removesuffix("weight").removesuffix(".").rpartition(".")[2]
    if module in OUTPUT_HEADS:
        return options.project_lm_head
    return module not in EMBEDDING_MODULES


def split_rank(
    s: Tensor, alpha: float, *, squared: bool = False, total: float | None = None
) -> int:
    """argmax(cumsum(s) / Σs > ``alpha``): the block size C[:k, :k] the reference zeroes.

    The 0-based index of the first singular value whose cumulative share exceeds ``alpha``; 0
    when none does (or Σs = 0, where the shares are NaN). ``squared``: shares of s². ``total``
    replaces the denominator (a truncated spectrum's ‖M‖²_F).
    """
    if s.numel() == 0:
        return 0
    values = s * s if squared else s
    share = values.cumsum(dim=0) / (values.sum() if total is None else total)
    return int((share > alpha).float().argmax())


def _nonzero_count(s: Tensor, shape: tuple[int, ...]) -> int:
    """How many singular values are numerically non-zero (the ``matrix_rank`` tolerance)."""
    if s.numel() == 0:
        return 0
    import torch

    tol = float(s[0]) * max(shape) * torch.finfo(s.dtype).eps
    return int((s > tol).sum())


def project_out(
    task: Tensor, merged: Tensor, generator: torch.Generator, options: OpcmOptions
) -> Tensor:
    """P(τ) = U C Vᵀ, C = Uᵀ τ V less its diagonal and C[:k, :k], from ``merged``'s SVD.

    Computed as τ − U C' Vᵀ with C' the removed entries (thin SVD; see the module docstring).
    """
    import torch

    truncated = options.svd == "randomized" and min(merged.shape) > options.full_svd_max_dim
    total: float | None = None
    if truncated:
        u, s, v = top_singular(
            merged,
            options.max_rank,
            generator,
            full_svd_max_dim=options.full_svd_max_dim,
            power_iters=options.power_iters,
        )
        if options.spectrum == "squared":
            total = float(torch.linalg.vector_norm(merged)) ** 2
    else:
        u, s, vh = torch.linalg.svd(merged, full_matrices=False)
        v = vh.mT
    k = split_rank(s, options.alpha, squared=options.spectrum == "squared", total=total)
    coeffs = (u.mT @ task) @ v
    removed = torch.zeros_like(coeffs)
    removed[:k, :k] = coeffs[:k, :k]
    if options.zero_diagonal:
        d = s.numel() if options.zero_null_diagonal else _nonzero_count(s, tuple(merged.shape))
        index = torch.arange(d, device=coeffs.device)
        removed[index, index] = coeffs[index, index]
    return torch.addmm(task, u @ removed, v.mT, alpha=-1)


def _order(count: int, ctx: TensorContext, shuffle: bool) -> list[int]:
    """The contributors' merge order: listed, or one permutation from the merge's seed."""
    if not shuffle:
        return list(range(count))
    import torch

    from audit.merging.base import TensorContext, tensor_generator

    # the same permutation for every tensor: the generator ignores the tensor's name and index
    generator = tensor_generator(TensorContext(name="opcm order", seed=ctx.seed, index=0))
    return [int(i) for i in torch.randperm(count, generator=generator)]


def merge_opcm(
    base: Tensor,
    deltas: list[Tensor],
    weights: list[float],
    ctx: TensorContext,
    options: OpcmOptions,
) -> Tensor:
    """OPCM's merged task vector for one tensor (float32, ``base``'s shape)."""
    import torch

    from audit.merging.base import tensor_generator

    norm = normalized_weights(weights, len(deltas))
    top = max(norm)
    norm = [w / top for w in norm]  # uniform weights: all 1, so S₁ = τ₁ bit for bit
    for delta in deltas:
        if delta.shape != base.shape:
            raise ValueError(f"{ctx.name}: delta shape {tuple(delta.shape)} != {base.shape}")
    linear = is_linear_weight(ctx.name, tuple(base.shape), options)
    if not linear and options.others == "average":
        return weighted_average([d.float() for d in deltas], weights)

    generator = tensor_generator(ctx)
    running: Tensor | None = None  # S_t = λ_t M_t
    norm_sum = 0.0  # Σ w_i ‖τ_i‖ over contributors so far
    weight_sum = 0.0
    for i in _order(len(deltas), ctx, options.shuffle_order):
        w = norm[i]
        if w == 0:
            continue
        task = deltas[i] if deltas[i].dtype == torch.float64 else deltas[i].float()
        if linear:
            task = task.reshape(task.shape[0], -1)
        norm_sum += w * float(torch.linalg.vector_norm(task))
        weight_sum += w
        if running is None:
            running = task * w
        elif linear:
            running.add_(project_out(task, running, generator, options), alpha=w)
        else:
            running.add_(task, alpha=w)
    assert running is not None  # some weight is positive
    target = norm_sum / weight_sum  # mean_i ‖τ_i‖
    running_norm = float(torch.linalg.vector_norm(running))
    if running_norm == 0 or target == 0:
        running.zero_()
    else:
        running.mul_(target / running_norm)  # M_T = S_T / λ_T, λ_T = ‖S_T‖ / mean ‖τ_i‖
    return running.reshape(base.shape).to(torch.float32)

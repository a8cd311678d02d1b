"""Per-sample empirical Fisher information for the weights of linear modules.

Used by the AlignGuard-LoRA intervention (arXiv 2508.02079) to find the directions of weight
space that matter most to a model's safety behaviour. For examples ``(input_ids, labels)``
(``-100`` marks tokens without a target, as :func:`audit.training.loop.encode_pairs`
returns them) the per-example loss ``l_i`` is the mean cross-entropy over that example's
labelled tokens (labels shifted as in a Hugging Face causal LM), ``g_i = dl_i/dW`` for each
module weight ``W``, and the empirical Fisher is ``F = (1/m) sum_i vec(g_i) vec(g_i)^T``.

:func:`fisher` computes the per-sample gradients of a whole batch from one forward and one
backward pass: hooks keep each target module's input ``x`` (B, T, in) and autograd gives the
gradient of its output (B, T, out), so ``g_b = einsum("bto,bti->boi", grad_out, x)``. The
batch loss is the *sum* of the per-example means, so each row's gradient is that example's own.
:func:`fisher_loop` is the plain reference, one backward pass per example.

Both leave the model as they found it: training flags, ``requires_grad`` flags and ``.grad``
are restored or untouched, and every hook is removed, also on error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Example", "ModuleFisher", "fisher", "fisher_loop", "linear_modules"]

Example = tuple[list[int], list[int]]
"""``(input_ids, labels)`` of one example; ``labels`` uses ``-100`` for ignored tokens."""

IGNORE_INDEX = -100
EIGEN_RTOL = 1e-12
"""Eigenvalues at or below this fraction of the largest are dropped as numerically zero."""


@dataclass
class ModuleFisher:
    """The empirical Fisher of one module's weight.

    ``diag``: ``mean_i g_i**2``, the weight's shape ``(out, in)``, float32. ``eigvals``: the
    top eigenvalues of ``F`` in descending order, shape ``(k,)``. ``eigvecs``: the matching
    orthonormal eigenvectors as rows, shape ``(k, out * in)``, over the row-major flattened
    weight. Both are ``None`` unless eigenvectors were asked for, and ``k`` can be smaller than
    asked when ``F`` has fewer (numerically) non-zero eigenvalues.
    """

    diag: torch.Tensor
    eigvals: torch.Tensor | None = None
    eigvecs: torch.Tensor | None = None


def linear_modules(model: torch.nn.Module, names: Sequence[str]) -> dict[str, torch.nn.Linear]:
    """Qualified name -> module for every module whose last name component is in ``names``.

    Matches the way peft reads ``target_modules``. Raises :class:`ValueError` when nothing
    matches, or when a matching module is not a ``torch.nn.Linear`` (for example GPT-2's
    ``Conv1D``), naming its type.
    """
    import torch

    wanted = {names} if isinstance(names, str) else set(names)
    found: dict[str, torch.nn.Linear] = {}
    for qualified, module in model.named_modules():
        if qualified.rsplit(".", 1)[-1] not in wanted:
            continue
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(
                f"module {qualified!r} is a {type(module).__module__}.{type(module).__name__}, "
                "not a torch.nn.Linear: per-sample Fisher supports linear modules only"
            )
        found[qualified] = module
    if not found:
        raise ValueError(
            f"no module named {', '.join(sorted(wanted)) or '(none given)'} in "
            f"{type(model).__name__}"
        )
    return found


def fisher(
    model: torch.nn.Module,
    examples: Sequence[Example],
    modules: Sequence[str],
    *,
    batch_size: int = 16,
    eigen_k: int = 0,
    pad_id: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, ModuleFisher]:
    """Empirical Fisher of the per-example loss at the model's weights, batched.

    ``modules`` are qualified names of ``torch.nn.Linear`` modules (as :func:`linear_modules`
    returns them) that see one input row per token, shape (batch, tokens, in), as attention
    and MLP projections do (not, say, mixture-of-experts experts fed routed tokens).
    Examples are sorted by length and run ``batch_size`` at a time, right-padded
    with ``pad_id`` under an attention mask; padded positions carry no loss and so no gradient.
    ``eigen_k > 0`` also returns the top ``eigen_k`` eigenpairs of each module's ``F``; that
    keeps every per-sample gradient, ``len(examples) * out * in`` floats per module.
    ``progress(done, total)`` is called after each batch with the number of examples done.
    """
    import torch

    targets = _resolve(model, modules)
    _check(examples, batch_size, eigen_k)
    m = len(examples)
    device = _device(model)
    order = sorted(range(m), key=lambda i: -len(examples[i][0]))
    sums = {
        name: torch.zeros(mod.weight.shape, dtype=torch.float32, device=device)
        for name, mod in targets.items()
    }
    rows = (
        {
            name: torch.zeros((m, mod.weight.numel()), dtype=torch.float32, device=device)
            for name, mod in targets.items()
        }
        if eigen_k > 0
        else {}
    )
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (name, input, output) per call
    anchor = torch.zeros((), device=device, requires_grad=True)
    trim = "logits_to_keep" in inspect.signature(model.forward).parameters

    def hook_for(name: str) -> Callable[..., Any]:
        def hook(
            module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> Any:
            x = args[0] if args else kwargs["input"]
            if not output.requires_grad:
                # Nothing upstream needs a gradient: start the graph here. Adding an exact zero
                # (not requires_grad_ on the output) keeps later in-place ops legal.
                output = output + anchor.to(output.dtype)
            calls.append((name, x.detach(), output))
            return output

        return hook

    with _prepared(model), torch.enable_grad():
        handles = [
            mod.register_forward_hook(hook_for(name), with_kwargs=True)
            for name, mod in targets.items()
        ]
        try:
            if progress is not None:
                progress(0, m)
            for start in range(0, m, batch_size):
                batch = order[start : start + batch_size]
                input_ids, attention_mask, labels = _batch(examples, batch, pad_id, device)
                calls.clear()
                losses = _batch_losses(model, input_ids, attention_mask, labels, trim)
                if losses is None:  # nothing labelled: every gradient is zero
                    calls.clear()
                    if progress is not None:
                        progress(min(start + batch_size, m), m)
                    continue
                loss = losses.sum()
                del losses
                grads = torch.autograd.grad(loss, [out for _, _, out in calls], allow_unused=True)
                lengths = [len(examples[i][0]) for i in batch]
                by_name: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
                for (name, x, _), grad_out in zip(calls, grads, strict=True):
                    if x.shape[:-1] != input_ids.shape:
                        raise ValueError(
                            f"fisher: module {name!r} got input of shape {tuple(x.shape)}, not "
                            f"(batch, tokens, features) = {tuple(input_ids.shape)} + (features,)"
                        )
                    if grad_out is not None:
                        by_name.setdefault(name, []).append((x, grad_out))
                calls.clear()
                del grads, loss
                for name, pairs in by_name.items():
                    _accumulate(pairs, lengths, batch, sums[name], rows.get(name))
                if progress is not None:
                    progress(min(start + batch_size, m), m)
        finally:
            calls.clear()
            for handle in handles:
                handle.remove()
    return _results(sums, rows, m, eigen_k)


def _accumulate(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    lengths: Sequence[int],
    indices: Sequence[int],
    square_sum: torch.Tensor,
    rows: torch.Tensor | None,
) -> None:
    """Add each example's squared weight gradient to ``square_sum`` (and its row to ``rows``).

    ``pairs`` holds ``(input, grad_output)`` of every call of one module in the batch. One
    ``(out, T) @ (T, in)`` product per example and call, over the example's own tokens only:
    as fast as a batched ``bmm`` here, without padding and without a (B, out, in) temporary.
    """
    for b, (length, index) in enumerate(zip(lengths, indices, strict=True)):
        g: torch.Tensor | None = None
        for x, grad_out in pairs:
            xb = x[b, :length].float()
            gb = grad_out[b, :length].float()
            g = gb.T @ xb if g is None else g.addmm_(gb.T, xb)
        if g is None:
            continue
        if rows is not None:
            rows[index] = g.reshape(-1)
        square_sum.addcmul_(g, g)


def fisher_loop(
    model: torch.nn.Module,
    examples: Sequence[Example],
    modules: Sequence[str],
    *,
    eigen_k: int = 0,
    pad_id: int = 0,
) -> dict[str, ModuleFisher]:
    """The same as :func:`fisher`, with one forward and backward pass per example.

    The slow, obviously correct reference for tests and benchmarks. ``pad_id`` is accepted for
    a matching signature; single examples need no padding.
    """
    import torch

    del pad_id
    targets = _resolve(model, modules)
    _check(examples, 1, eigen_k)
    m = len(examples)
    device = _device(model)
    square_sums = {
        name: torch.zeros(mod.weight.shape, dtype=torch.float64, device=device)
        for name, mod in targets.items()
    }
    rows: dict[str, torch.Tensor] = {}
    if eigen_k > 0:
        rows = {
            name: torch.zeros((m, mod.weight.numel()), dtype=torch.float32, device=device)
            for name, mod in targets.items()
        }
    names = list(targets)
    with _prepared(model), torch.enable_grad():
        weights = [targets[name].weight for name in names]
        for weight in weights:
            weight.requires_grad_(True)
        for i in range(m):
            input_ids, attention_mask, labels = _batch(examples, [i], 0, device)
            logits = _logits(model, input_ids, attention_mask)
            loss = _example_losses(logits[:, :-1], labels[:, 1:]).sum()
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            for name, weight, grad in zip(names, weights, grads, strict=True):
                g = torch.zeros_like(weight, dtype=torch.float32) if grad is None else grad.float()
                if rows:
                    rows[name][i] = g.reshape(-1)
                square_sums[name] += g.square()
    return _results(square_sums, rows, m, eigen_k)


def _resolve(model: torch.nn.Module, modules: Sequence[str]) -> dict[str, torch.nn.Linear]:
    """Qualified name -> ``torch.nn.Linear`` for ``modules``, in order, without duplicates."""
    import torch

    if isinstance(modules, str):
        modules = [modules]
    if not modules:
        raise ValueError("fisher: no modules given")
    targets: dict[str, torch.nn.Linear] = {}
    for name in modules:
        try:
            module = model.get_submodule(name)
        except AttributeError as error:
            raise ValueError(f"fisher: {type(model).__name__} has no module {name!r}") from error
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(
                f"fisher: module {name!r} is a {type(module).__name__}, not a torch.nn.Linear"
            )
        targets[name] = module
    return targets


def _check(examples: Sequence[Example], batch_size: int, eigen_k: int) -> None:
    if not examples:
        raise ValueError("fisher: no examples")
    if batch_size < 1:
        raise ValueError(f"fisher: batch_size must be positive, got {batch_size}")
    if eigen_k < 0:
        raise ValueError(f"fisher: eigen_k must be >= 0, got {eigen_k}")
    for i, (ids, labels) in enumerate(examples):
        if not ids or len(ids) != len(labels):
            raise ValueError(
                f"fisher: example {i} has {len(ids)} input ids and {len(labels)} labels "
                "(need the same, non-zero number)"
            )


def _device(model: torch.nn.Module) -> torch.device:
    import torch

    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


@contextmanager
def _prepared(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no parameter requiring grad inside; every flag restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def _batch(
    examples: Sequence[Example], indices: Sequence[int], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` for ``indices``."""
    import torch

    width = max(len(examples[i][0]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    for row, i in enumerate(indices):
        ids, targets = examples[i]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(ids)] = torch.tensor(targets, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def _logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits


def _batch_losses(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    trim: bool,
) -> torch.Tensor | None:
    """Per-row losses of a batch, shape (B,); ``None`` when no row has a labelled token.

    With ``trim`` (the model takes Hugging Face's ``logits_to_keep``), the output head runs
    only at positions where some row has a target: masked prompts cost no vocabulary-sized
    logits, forward or backward.
    """
    targets = labels[:, 1:]
    labelled = targets != IGNORE_INDEX
    if not bool(labelled.any()):
        return None
    if trim:
        keep = labelled.any(0).nonzero().squeeze(1)
        logits = _logits(model, input_ids, attention_mask, logits_to_keep=keep)
        if logits.shape[1] == keep.numel():
            return _example_losses(logits, targets[:, keep])
        if logits.shape[1] != input_ids.shape[1]:
            raise RuntimeError(
                f"fisher: {type(model).__name__} returned {logits.shape[1]} positions of logits "
                f"for logits_to_keep of {keep.numel()} (sequence length {input_ids.shape[1]})"
            )
    else:
        logits = _logits(model, input_ids, attention_mask)
    return _example_losses(logits[:, :-1], targets)


def _example_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row mean cross-entropy over labelled tokens (0 for a row with none), shape (B,).

    ``logits[:, j]`` predicts ``targets[:, j]``; ``-100`` targets are ignored.
    """
    import torch.nn.functional as F

    token_losses = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    counts = (targets != IGNORE_INDEX).sum(1).clamp(min=1)
    return token_losses.sum(1) / counts


def _results(
    square_sums: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], m: int, eigen_k: int
) -> dict[str, ModuleFisher]:
    results: dict[str, ModuleFisher] = {}
    for name, total in square_sums.items():
        result = ModuleFisher(diag=(total / m).float())
        if eigen_k > 0:
            result.eigvals, result.eigvecs = _top_eigen(rows[name], eigen_k)
        results[name] = result
    return results


def _top_eigen(grads: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of ``F = G^T G / m`` for per-sample gradient rows ``G`` (m, d).

    Eigen-decomposes the small Gram matrix ``K = G G^T / m`` (float64): an eigenpair
    ``(lam, u)`` of ``K`` gives the unit eigenvector ``G^T u / sqrt(m lam)`` of ``F``.
    """
    import torch

    m = grads.shape[0]
    g64 = grads.double()
    values, vectors = torch.linalg.eigh(g64 @ g64.T / m)
    values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k]
    largest = float(values[0]) if values.numel() else 0.0
    keep = values > EIGEN_RTOL * largest if largest > 0 else values > float("inf")
    values, vectors = values[keep], vectors[:, keep]
    eigvecs = (g64.T @ vectors) / torch.sqrt(m * values)
    return values.float(), eigvecs.T.contiguous().float()

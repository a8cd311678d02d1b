"""Per-sample Fisher (audit.training.fisher): the batched hooks path against references."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from audit.training.fisher import Example, fisher, fisher_loop, linear_modules  # noqa: E402

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def tiny_llama(attn: str = "sdpa", seed: int = 0, dropout: float = 0.0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.1,  # larger than the default so every gradient is well above noise
        attention_dropout=dropout,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_llama()


def make_examples() -> list[Example]:
    """Different lengths, prompts masked, one example with no labelled token at all."""
    generator = torch.Generator().manual_seed(1)
    examples: list[Example] = []
    for length, prompt in [(5, 2), (11, 6), (3, 1), (14, 4), (8, 8), (2, 0), (9, 3)]:
        ids = torch.randint(1, 97, (length,), generator=generator).tolist()
        examples.append((ids, [-100] * prompt + ids[prompt:]))
    return examples


def per_sample_grads(model: Any, examples: list[Example], name: str) -> Any:
    """Rows vec(dl_i/dW), computed independently with the model's own causal-LM loss."""
    weight = model.get_submodule(name).weight
    flag = weight.requires_grad
    weight.requires_grad_(True)
    rows = []
    try:
        for ids, labels in examples:
            if all(label == -100 for label in labels[1:]):
                rows.append(torch.zeros(weight.numel(), dtype=torch.float64))
                continue
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            (grad,) = torch.autograd.grad(loss, [weight])
            rows.append(grad.reshape(-1).double())
    finally:
        weight.requires_grad_(flag)
    return torch.stack(rows)


def assert_close_scaled(actual: Any, expected: Any, tol: float = 1e-5) -> None:
    """Elementwise within ``tol`` relative, or ``tol`` times the tensor's largest entry."""
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("batch_size", [1, 3, 50])
def test_batched_matches_loop(model: Any, batch_size: int) -> None:
    examples = make_examples()
    names = list(linear_modules(model, TARGETS))
    assert len(names) == 8
    expected = fisher_loop(model, examples, names)
    got = fisher(model, examples, names, batch_size=batch_size)
    assert list(got) == names
    for name in names:
        weight = model.get_submodule(name).weight
        assert got[name].diag.shape == weight.shape
        assert got[name].diag.dtype == torch.float32
        assert got[name].eigvals is None and got[name].eigvecs is None
        assert_close_scaled(got[name].diag, expected[name].diag)


def test_eager_attention_matches_loop() -> None:
    model = tiny_llama("eager", seed=3)
    examples = make_examples()
    names = list(linear_modules(model, ["k_proj", "up_proj"]))
    expected = fisher_loop(model, examples, names)
    got = fisher(model, examples, names, batch_size=4)
    for name in names:
        assert_close_scaled(got[name].diag, expected[name].diag)


class Plain(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``: logits at every position."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: Any, attention_mask: Any, use_cache: bool = False) -> Any:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_model_without_logits_to_keep(model: Any) -> None:
    examples = make_examples()
    names = list(linear_modules(model, ["q_proj", "down_proj"]))
    expected = fisher_loop(model, examples, names)
    got = fisher(Plain(model), examples, [f"inner.{name}" for name in names], batch_size=4)
    for name in names:
        assert_close_scaled(got[f"inner.{name}"].diag, expected[name].diag)


def test_diag_is_mean_squared_grad_of_the_models_own_loss(model: Any) -> None:
    examples = make_examples()
    name = "model.layers.1.self_attn.o_proj"
    grads = per_sample_grads(model, examples, name)
    got = fisher(model, examples, [name], batch_size=3)[name]
    expected = (grads**2).mean(0).reshape(got.diag.shape).float()
    assert_close_scaled(got.diag, expected)


@pytest.mark.parametrize("batch_size", [2, 50])
def test_eigen_matches_explicit_fisher(model: Any, batch_size: int) -> None:
    examples = make_examples()
    name = "model.layers.0.self_attn.v_proj"  # 16 x 32: F is 512 x 512
    grads = per_sample_grads(model, examples, name)
    m = len(examples)
    explicit = grads.T @ grads / m
    values, vectors = torch.linalg.eigh(explicit)
    values, vectors = values.flip(0), vectors.flip(1)

    k = 4
    got = fisher(model, examples, [name], batch_size=batch_size, eigen_k=k)[name]
    loop = fisher_loop(model, examples, [name], eigen_k=k)[name]
    for result in (got, loop):
        assert result.eigvals is not None and result.eigvecs is not None
        assert result.eigvals.shape == (k,) and result.eigvecs.shape == (k, 512)
        assert bool((result.eigvals[:-1] >= result.eigvals[1:]).all())
        eigvecs = result.eigvecs.double()
        torch.testing.assert_close(eigvecs @ eigvecs.T, torch.eye(k, dtype=torch.float64))
        torch.testing.assert_close(
            result.eigvals.double(), values[:k], rtol=1e-5, atol=1e-6 * float(values[0])
        )
        # Same subspace (eigenvector signs are arbitrary), and each row is an eigenvector.
        torch.testing.assert_close(
            eigvecs.T @ eigvecs, vectors[:, :k] @ vectors[:, :k].T, rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            eigvecs @ explicit,
            result.eigvals.double()[:, None] * eigvecs,
            rtol=0,
            atol=1e-5 * float(values[0]),
        )
        assert_close_scaled(result.diag, explicit.diagonal().reshape(16, 32).float())


def test_eigen_drops_zero_eigenvalues(model: Any) -> None:
    examples = make_examples()  # 7 examples, one without labels: F has rank 6
    # (Not q_proj: a 2-token example's only labelled position attends to itself alone, so its
    # query gets no gradient and F would have rank 5.)
    name = "model.layers.1.self_attn.v_proj"
    got = fisher(model, examples, [name], batch_size=3, eigen_k=20)[name]
    assert got.eigvals is not None and got.eigvecs is not None
    assert got.eigvals.shape == (6,) and got.eigvecs.shape == (6, 16 * 32)
    assert float(got.eigvals.min()) > 0
    nothing = fisher(model, [([5, 6, 7], [-100, -100, -100])], [name], eigen_k=3)[name]
    assert nothing.eigvals is not None and nothing.eigvecs is not None
    assert nothing.eigvals.shape == (0,) and nothing.eigvecs.shape == (0, 16 * 32)
    assert float(nothing.diag.abs().max()) == 0.0


def hooks_of(model: Any) -> list[Any]:
    hooks = []
    for module in model.modules():
        for attribute in (
            "_forward_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            hooks.extend(getattr(module, attribute, {}).values())
    return hooks


def snapshot(model: Any) -> dict[str, Any]:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
    }


def assert_same(model: Any, before: dict[str, Any]) -> None:
    after = snapshot(model)
    for name, value in before["params"].items():
        assert torch.equal(value, after["params"][name]), name
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, name
        else:
            assert torch.equal(grad, after["grads"][name]), name
    assert hooks_of(model) == []


def test_model_left_untouched() -> None:
    model = tiny_llama(seed=5, dropout=0.5)
    names = list(linear_modules(model, TARGETS))
    examples = make_examples()
    in_eval_mode = fisher(model, examples, names, batch_size=3)
    model.train()  # with attention dropout on: the Fisher must still be computed in eval mode
    model.model.layers[1].eval()  # a mixed state, restored module by module
    model.model.embed_tokens.weight.requires_grad_(False)
    lm_norm = model.model.norm.weight
    lm_norm.grad = torch.full_like(lm_norm, 0.5)  # an existing .grad stays as it was
    before = snapshot(model)
    got = fisher(model, examples, names, batch_size=3, eigen_k=2)
    assert_same(model, before)
    for name in names:
        assert torch.equal(got[name].diag, in_eval_mode[name].diag)
    fisher_loop(model, examples, names, eigen_k=2)
    assert_same(model, before)

    def fail(done: int, total: int) -> None:
        if done:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        fisher(model, examples, names, batch_size=3, progress=fail)
    assert_same(model, before)


def test_progress_reports_examples_done(model: Any) -> None:
    calls: list[tuple[int, int]] = []
    names = ["model.layers.0.mlp.down_proj"]
    fisher(model, make_examples(), names, batch_size=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 7), (3, 7), (6, 7), (7, 7)]


def test_linear_modules_errors(model: Any) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    found = linear_modules(model, ["k_proj"])
    assert list(found) == ["model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.k_proj"]
    assert all(isinstance(m, torch.nn.Linear) for m in found.values())
    with pytest.raises(ValueError, match="no module named c_attn"):
        linear_modules(model, ["c_attn"])
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="Conv1D"):
        linear_modules(gpt2, ["c_attn"])
    with pytest.raises(ValueError, match="not a torch.nn.Linear"):
        fisher(gpt2, [([1, 2], [1, 2])], ["transformer.h.0.attn.c_attn"])
    with pytest.raises(ValueError, match="has no module"):
        fisher(model, [([1, 2], [1, 2])], ["model.layers.9.self_attn.q_proj"])
    with pytest.raises(ValueError, match="input ids"):
        fisher(model, [([1, 2], [1])], ["model.layers.0.self_attn.q_proj"])

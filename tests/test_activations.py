"""textenv.fast.activations: x·σ(2u) is the tanh-approximated GELU, forward and backward, and the loader uses it."""

from __future__ import annotations

import torch
from transformers.activations import GELUTanh, NewGELUActivation

from textenv.fast.activations import SigmoidTanhGELU, use_sigmoid_tanh_gelu
from textenv.models.loading import load_causal_lm


def test_same_function_and_gradient_as_the_tanh_formula():
    x = torch.linspace(-12, 12, 20001, dtype=torch.float64).requires_grad_()
    ours = SigmoidTanhGELU()(x)
    (ours * torch.cos(x)).sum().backward()  # a non-constant upstream gradient
    grad = x.grad.clone()
    x.grad = None
    reference = NewGELUActivation()(x)  # 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), written out
    (reference * torch.cos(x)).sum().backward()
    assert torch.allclose(ours, reference, atol=1e-12, rtol=0)
    assert torch.allclose(grad, x.grad, atol=1e-12, rtol=0)


def test_float32_without_grad_matches_torch_kernel():
    x = torch.randn(64, 768) * 3
    with torch.no_grad():
        ours = SigmoidTanhGELU()(x)
    assert torch.allclose(ours, torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-6, rtol=0)
    assert ours.data_ptr() != x.data_ptr() and not torch.equal(x, ours)  # the input is not overwritten


def test_half_precision_uses_torch_kernel():
    x = torch.randn(8, 16).to(torch.bfloat16)
    assert torch.equal(SigmoidTanhGELU()(x), torch.nn.functional.gelu(x, approximate="tanh"))


def test_loader_replaces_every_tanh_gelu_and_scores_the_same(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, device="cpu").eval()
    activations = [m for m in model.modules() if isinstance(m, SigmoidTanhGELU)]
    assert len(activations) == model.config.n_layer
    ids = torch.randint(1, model.config.vocab_size, (3, 20))
    with torch.no_grad():
        ours = model(input_ids=ids).logits.log_softmax(-1)
        for block in model.transformer.h:
            block.mlp.act = GELUTanh()
        theirs = model(input_ids=ids).logits.log_softmax(-1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert use_sigmoid_tanh_gelu(model) == model.config.n_layer

"""textenv.logprobs: the chunked log-prob / entropy must equal the plain log-softmax, values and gradients."""

from __future__ import annotations

import pytest
import torch

import textenv.fast.logprobs as logprobs_module
from textenv.logprobs import chosen_logprobs, entropy, logprobs_and_entropy


def plain(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = logits.log_softmax(dim=-1)
    return logp.gather(1, tokens[:, None]).squeeze(1), -(logp.exp() * logp).sum(dim=-1)


@pytest.fixture(params=[1 << 18, 24], ids=["one-chunk", "chunk-of-3-rows"])
def chunk_elements(request, monkeypatch):
    monkeypatch.setattr(logprobs_module, "CHUNK_ELEMENTS", request.param)
    return request.param


def test_values_and_gradients_match_log_softmax(chunk_elements):
    torch.manual_seed(0)
    logits = (torch.randn(11, 8) * 4).requires_grad_()
    tokens = torch.randint(0, 8, (11,))
    weights = torch.randn(2, 11)

    logp, ent = logprobs_and_entropy(logits, tokens)
    (weights[0] * logp + weights[1] * ent).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    logp_ref, entropy_ref = plain(logits, tokens)
    (weights[0] * logp_ref + weights[1] * entropy_ref).sum().backward()

    assert torch.allclose(logp, logp_ref, atol=1e-5)
    assert torch.allclose(ent, entropy_ref, atol=1e-5)
    assert torch.allclose(ours, logits.grad, atol=1e-5)


def test_logprob_only_gradient(chunk_elements):
    torch.manual_seed(1)
    logits = torch.randn(7, 9, requires_grad=True)
    tokens = torch.randint(0, 9, (7,))
    logp, _ = logprobs_and_entropy(logits, tokens)
    logp.sum().backward()  # entropy unused: its gradient is None in the backward
    ours = logits.grad.clone()
    logits.grad = None
    plain(logits, tokens)[0].sum().backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)
    assert torch.allclose(chosen_logprobs(logits, tokens), plain(logits, tokens)[0], atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(chosen_logprobs(logits, tokens), plain(logits, tokens)[0], atol=1e-6)


def test_minus_infinity_logits_give_finite_results(chunk_elements):
    """Masked-out tokens (logit -inf, probability 0) add nothing to the entropy and get gradient 0."""
    logits = torch.tensor([[0.0, 1.0, float("-inf"), 2.0], [float("-inf"), 0.5, 0.5, float("-inf")]])
    finite = logits.clone()
    finite[torch.isinf(logits)] = -1e4  # the same distribution to float32 precision
    logits.requires_grad_()
    tokens = torch.tensor([1, 2])
    logp, ent = logprobs_and_entropy(logits, tokens)
    (logp + ent).sum().backward()
    logp_ref, entropy_ref = plain(finite, tokens)
    assert torch.allclose(logp, logp_ref) and torch.allclose(ent, entropy_ref)
    assert torch.allclose(ent[1], torch.tensor(2.0).log())  # two equal tokens: log 2 nats
    assert torch.isfinite(logits.grad).all() and (logits.grad[torch.isinf(logits)] == 0).all()


def test_leading_dimensions_and_entropy(chunk_elements):
    """(B, T, V) logits as the SFT / DPO / PTX losses pass them: the same numbers as the flattened rows."""
    torch.manual_seed(2)
    logits = torch.randn(3, 5, 8, requires_grad=True)
    tokens = torch.randint(0, 8, (3, 5))
    logp_ref, entropy_ref = plain(logits.reshape(15, 8), tokens.reshape(15))
    assert torch.allclose(chosen_logprobs(logits, tokens), logp_ref.view(3, 5), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(chosen_logprobs(logits, tokens), logp_ref.view(3, 5), atol=1e-6)
    assert torch.allclose(entropy(logits), entropy_ref.view(3, 5), atol=1e-6)
    entropy(logits).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    entropy_ref.sum().backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"logits must be \(\.\.\., V\) and tokens \(\.\.\.\)"):
        logprobs_and_entropy(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        chosen_logprobs(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))

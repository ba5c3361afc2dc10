"""log π(a|s) of chosen tokens and the entropy H(π(·|s)) from ``(N, V)`` logits, in cache-sized chunks.

The plain way, ``logits.log_softmax(-1).gather(...)`` plus ``-(logp.exp() * logp).sum(-1)``, writes three
vocabulary-sized tensors in the forward (log-softmax, exp, product) and three in the backward (the zeroed
gradient of the gather, the scatter into it, the log-softmax backward). For the update of a batch of
64 × 24 actions on a 4096-token vocabulary each one is 22 MB of fresh memory, and their writes and page faults
took about 15 % of the update's forward + backward (torch profiler, ``benchmarks/train.py`` shapes). Measured with
this module: the update's forward + backward, median 0.635 → 0.580 s (12 alternating pairs, one thread).

Here the forward keeps, per state, only the log-normaliser ``log Z = logsumexp(z)`` and the entropy, computed a
chunk of rows at a time (each temporary about 1 MiB, so it stays in cache), and the backward writes the one
gradient tensor the LM head's backward needs, again a chunk at a time:

    log π(a) = z_a − log Z                      ∂ log π(a) / ∂z_j = δ_ja − p_j
    H        = −Σ_j p_j log p_j                 ∂ H / ∂z_j       = −p_j (log p_j + H)

with p = softmax(z). Results equal the plain way's to float32 rounding (tested). Callers go through
:mod:`textenv.logprobs`, which picks this or the plain way by the switch (:mod:`textenv.fast`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

#: Elements per temporary (float32: 1 MiB, about one core's L2 cache here).
CHUNK_ELEMENTS = 1 << 18


def chunked_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits)[token] and the entropy of softmax(logits), ``(N, V), (N,) -> (N,), (N,)`` nats;
    differentiable in ``logits`` (the hand-written backward of :class:`_LogprobEntropy`)."""
    return _LogprobEntropy.apply(logits, tokens)


def chunked_chosen_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token], ``(N, V), (N,) -> (N,)``, without the vocabulary-sized log-softmax."""
    if logits.requires_grad and torch.is_grad_enabled():
        return _LogprobEntropy.apply(logits, tokens)[0]
    return logits.gather(1, tokens.reshape(-1, 1)).squeeze(1) - _log_normaliser(logits)


def _row_chunks(logits: torch.Tensor) -> list[slice]:
    rows, vocab = logits.shape
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim, ``(N, V) -> (N,)``, a chunk of rows at a time."""
    out = logits.new_empty(logits.shape[0])
    for rows in _row_chunks(logits):
        torch.logsumexp(logits[rows], dim=1, out=out[rows])
    return out


class _LogprobEntropy(torch.autograd.Function):
    """``(logits (N, V), tokens (N,)) -> (log π(token) (N,), H (N,))``; see the module docstring for the math."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        log_z = logits.new_empty(logits.shape[0])
        entropy = logits.new_empty(logits.shape[0])
        for rows in _row_chunks(logits):
            z = logits[rows]
            top = z.amax(dim=1, keepdim=True)
            shifted = (z - top).clamp_(min=torch.finfo(z.dtype).min)  # -inf -> finite: 0 · shifted is 0 below
            weight = shifted.exp()  # p · total
            total = weight.sum(dim=1)
            log_total = total.log()
            log_z[rows] = top.squeeze(1) + log_total
            # log p = shifted − log total, so H = −Σ p log p = log total − Σ weight · shifted / total
            entropy[rows] = log_total - (weight * shifted).sum(dim=1) / total
        logprob = logits.gather(1, tokens[:, None]).squeeze(1) - log_z
        ctx.save_for_backward(logits, tokens, log_z, entropy)
        ctx.set_materialize_grads(False)
        return logprob, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprob: torch.Tensor | None, grad_entropy: torch.Tensor | None):  # type: ignore[override]
        logits, tokens, log_z, entropy = ctx.saved_tensors
        if grad_logprob is None and grad_entropy is None:
            return None, None
        if grad_logprob is None:
            grad_logprob = torch.zeros_like(log_z)
        grad = torch.empty_like(logits)
        for rows in _row_chunks(logits):
            logp = logits[rows] - log_z[rows, None]
            p = logp.exp()
            if grad_entropy is None:  # −p_j g_logprob
                torch.mul(p, grad_logprob[rows, None].neg(), out=grad[rows])
            else:  # −p_j (g_logprob + g_H (log p_j + H)), and 0 where p_j = 0 (log p_j = −inf)
                possible = p > 0
                coef = logp.add_(entropy[rows, None]).mul_(grad_entropy[rows, None]).add_(grad_logprob[rows, None])
                grad[rows] = torch.where(possible, p.mul_(coef).neg_(), 0.0)
        grad.scatter_add_(1, tokens[:, None], grad_logprob[:, None].to(grad.dtype))  # + δ_ja g_logprob
        return grad, None

"""textenv.rollout.sample_actions: inverse-CDF sampling must draw from softmax(logits / temperature) exactly."""

from __future__ import annotations

import torch

from textenv.rollout import SAMPLING_BLOCK, sample_actions


def test_frequencies_match_the_softmax_and_masked_tokens_never_appear():
    logits = torch.tensor([[float("-inf"), 0.0, 1.0, 2.0, float("-inf"), -1.0]]).repeat(100_000, 1)
    actions = sample_actions(logits, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(actions, minlength=6).double() / len(actions)
    expected = logits[0].softmax(-1).double()
    assert frequencies[0] == 0 and frequencies[4] == 0  # probability 0: never drawn, also at the edges
    torch.testing.assert_close(frequencies, expected, atol=5e-3, rtol=0)  # ~4 standard errors at n = 1e5


def test_frequencies_match_the_softmax_across_blocks():
    vocab = 3 * SAMPLING_BLOCK + 20  # the last block is partial
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(4))
    logits[SAMPLING_BLOCK : 2 * SAMPLING_BLOCK] = float("-inf")  # a whole block of probability 0
    logits[[0, SAMPLING_BLOCK - 1, 2 * SAMPLING_BLOCK, vocab - 1]] = float("-inf")  # block edges, the last token
    n = 100_000
    actions = sample_actions(logits.repeat(n, 1), torch.Generator().manual_seed(5))
    frequencies = torch.bincount(actions, minlength=vocab).double() / n
    assert len(frequencies) == vocab  # nothing drawn from the padding past the vocabulary
    expected = logits.softmax(-1).double()
    assert frequencies[expected == 0].sum() == 0
    standard_error = (expected * (1 - expected) / n).sqrt()
    assert ((frequencies - expected).abs() <= 5 * standard_error).all()


def test_temperature_and_greedy():
    logits = torch.tensor([[0.0, 1.0, 3.0]]).repeat(50_000, 1)
    hot = sample_actions(logits, torch.Generator().manual_seed(1), temperature=2.0)
    expected = (logits[0] / 2.0).softmax(-1).double()
    torch.testing.assert_close(torch.bincount(hot, minlength=3).double() / len(hot), expected, atol=7e-3, rtol=0)
    assert sample_actions(logits[:4], None, temperature=0).tolist() == [2, 2, 2, 2]


def test_seeded_generator_reproduces_samples_and_rows_are_independent():
    logits = torch.randn(64, 4096, generator=torch.Generator().manual_seed(2))
    first = sample_actions(logits, torch.Generator().manual_seed(3))
    again = sample_actions(logits, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.shape == (64,) and first.dtype == torch.long
    assert len(set(first.tolist())) > 32  # different rows draw different tokens

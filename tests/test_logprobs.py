"""textenv.logprobs: the chunked log-prob / entropy must equal the plain log-softmax, values and gradients; a
hand-written policy scores env observations exactly (left padding handled); actions not from π_θ are noticed."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
import textenv.fast.logprobs as logprobs_module
from textenv.logprobs import (
    OffPolicyActionMonitor,
    OffPolicyActionsWarning,
    chosen_logprobs,
    entropy,
    logprobs_and_entropy,
    observation_logits,
    observation_logprobs,
    position_ids,
)
from textenv.vector_env import TextGenVectorEnv


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


# ---------------------------------------------------------------------------------------------- observations
def unpadded_logprob(policy: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, action: int) -> float:
    """log π(action | s) from a forward over the row's real tokens alone (no padding, default positions)."""
    tokens = torch.as_tensor(ids[mask.astype(bool)])[None]
    with torch.no_grad():
        return float(policy(input_ids=tokens).logits[0, -1].log_softmax(-1)[action])


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_observation_logprobs_equal_the_env_and_an_unpadded_forward(tiny_model_dir, fast):
    """Rows of different prompt lengths (so different left padding): log π(a|s) from the observation equals what
    the env recorded and a forward of each row alone, within 1e-5; the naive call without position ids does not."""
    env = TextGenVectorEnv(num_envs=3, model=str(tiny_model_dir), reward_model=lambda p, c: [0.0] * len(c),
                           prompts=["the film was", "i liked the pasta at the restaurant and", "the"],
                           max_new_tokens=4, autoreset_mode="disabled", device="cpu", fast=fast)
    obs, _ = env.reset(options={"prompts": env.prompts})
    generator = torch.Generator().manual_seed(0)
    naive_gap = 0.0
    while not env.finished.all():
        actions = torch.multinomial(env.next_token_logits().softmax(-1), 1, generator=generator).squeeze(1)
        ours = observation_logprobs(env.policy, obs, actions)
        ids, mask = (torch.as_tensor(obs[key]) for key in ("input_ids", "attention_mask"))
        with torch.no_grad():
            naive = env.policy(input_ids=ids, attention_mask=mask).logits[:, -1].log_softmax(-1)
        naive_gap = max(naive_gap, float((naive.gather(1, actions[:, None]).squeeze(1) - ours.detach()).abs().max()))
        unpadded = [unpadded_logprob(env.policy, obs["input_ids"][r], obs["attention_mask"][r], int(actions[r]))
                    for r in range(3)]
        obs, _, _, _, info = env.step(actions.numpy())
        assert ours.requires_grad and ours.shape == (3,)
        np.testing.assert_allclose(ours.detach().numpy(), info["logprob"], atol=1e-5)
        np.testing.assert_allclose(ours.detach().numpy(), unpadded, atol=1e-5)
    assert naive_gap > 1e-3  # left padding shifts the positions of a naive forward


def test_observation_logprobs_have_the_gradient_of_an_unpadded_forward(tiny_model_dir):
    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=["the film was", "the"],
                           reward_model=lambda p, c: [0.0] * len(c), max_new_tokens=2, device="cpu")
    obs, _ = env.reset(options={"prompts": ["the film was", "the"]})
    actions = np.array([5, 9])
    observation_logprobs(env.policy, obs, actions).sum().backward()
    ours = [p.grad.clone() for p in env.policy.parameters()]
    env.policy.zero_grad()
    total = 0.0
    for row in range(2):
        tokens = torch.as_tensor(obs["input_ids"][row][obs["attention_mask"][row].astype(bool)])[None]
        total = total + env.policy(input_ids=tokens).logits[0, -1].log_softmax(-1)[actions[row]]
    total.backward()
    for mine, reference in zip(ours, (p.grad for p in env.policy.parameters()), strict=True):
        assert torch.allclose(mine, reference, atol=1e-5)
    assert any(float(g.abs().sum()) > 0 for g in ours)


def test_single_observation_of_gym_make(tiny_model_dir):
    env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=["the film was"], max_new_tokens=2,
                   reward_model=lambda p, c: [0.0] * len(c))
    obs, _ = env.reset(seed=0)
    policy = env.unwrapped.policy
    logprob = observation_logprobs(policy, obs, 7)
    assert logprob.shape == () and observation_logits(policy, obs).shape == (env.action_space.n,)
    _, _, _, _, info = env.step(7)
    assert float(logprob.detach()) == pytest.approx(float(info["logprob"]), abs=1e-5)
    assert position_ids(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


# ---------------------------------------------------------------------------------------------- off-policy actions
def test_monitor_warns_once_when_actions_are_improbable():
    monitor = OffPolicyActionMonitor(vocab_size=1000)
    likely, unlikely = np.full(8, -2.0), np.full(8, -30.0)
    active = np.ones(8, dtype=bool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(100):  # sampled from π_θ: never warns
            monitor.observe(likely, active)
        assert not caught
        for _ in range(6):
            monitor.observe(np.where(np.arange(8) < 3, -30.0, -2.0), active)  # 3 of 8 below ε ≥ a quarter
        for _ in range(50):
            monitor.observe(unlikely, active)
    assert len(caught) == 1 and caught[0].category is OffPolicyActionsWarning
    assert "env.unwrapped.set_policy" in str(caught[0].message) and caught[0].filename == __file__
    quiet = OffPolicyActionMonitor(vocab_size=1000)
    quiet.observe(unlikely, np.zeros(8, dtype=bool))  # rows that took no action do not count
    for _ in range(20):
        quiet.observe(np.where(np.arange(8) < 1, -30.0, -2.0), active)  # 1 in 8 is below a quarter
    assert not quiet.warned


@pytest.mark.slow
def test_env_warns_about_a_random_actor_once_and_not_about_its_own_policy():
    """On the embedded model: uniform random tokens trip the warning once; 300 tokens sampled from π_θ do not."""
    env = gym.make("TextGen-v0", max_new_tokens=16, device="cpu")
    generator = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env.reset(seed=0)
        for _ in range(300):
            probs = env.unwrapped.next_token_logits().softmax(-1)
            _, _, terminated, truncated, _ = env.step(int(torch.multinomial(probs, 1, generator=generator)))
            if terminated or truncated:
                env.reset()
        assert not [w for w in caught if w.category is OffPolicyActionsWarning]
        rng = np.random.default_rng(0)
        for _ in range(300):
            _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            if terminated or truncated:
                env.reset()
    off_policy = [w for w in caught if w.category is OffPolicyActionsWarning]
    assert len(off_policy) == 1 and off_policy[0].filename == __file__  # points at the line that stepped

"""Behaviour of the native RL agents PPO (+ PPO-ptx), RLOO and GRPO on a tiny random GPT-2.

Every agent must learn a trivially rewarded task (reward = how often the completion contains the token
" the"), PPO's update must reproduce the sampling-time log-probs, bad hyper-parameters must be refused with
an error naming the argument, and save → load_state must restore the full training state.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textenv.agents.base import SCALARS
from textenv.agents.grpo import GRPO, group_normalized_advantages
from textenv.agents.ppo import PPO, generalized_advantage_estimation, whiten
from textenv.agents.remax import ReMax
from textenv.agents.rloo import RLOO, leave_one_out_advantages
from textenv.rollout import collect_rollout
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = " the"  # one token of the tiny BPE vocabulary (id 263); a random model emits it ~1/300 of the time
PROMPTS = ["the film was", "i liked the pasta at the", "the book", "this blender"]


def count_target(prompts: list[str], completions: list[str]) -> list[float]:
    """Reward: occurrences of TARGET in the completion."""
    return [float(c.count(TARGET)) for c in completions]



def make_env(model_dir, num_envs: int = 32, group_size: int = 1, kl_coef: float = 0.0, **kwargs) -> TextGenVectorEnv:
    kwargs = {"reward_model": count_target, "prompts": PROMPTS, "max_new_tokens": 16, **kwargs}
    return TextGenVectorEnv(num_envs=num_envs, model=str(model_dir), kl_coef=kl_coef, group_size=group_size,
                            autoreset_mode="disabled", device="cpu", **kwargs)


AGENTS = {
    "ppo": (PPO, 1, {"learning_rate": 3e-3}),
    "rloo": (RLOO, 4, {"learning_rate": 1e-2, "n_epochs": 2, "num_minibatches": 2}),
    "grpo": (GRPO, 4, {"learning_rate": 1e-2, "n_epochs": 2, "num_minibatches": 2}),
    "remax": (ReMax, 1, {"learning_rate": 3e-2}),
}


# ---------------------------------------------------------------------- learning
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_agent_learns_to_emit_the_rewarded_token(tiny_model_dir, name):
    cls, group_size, hparams = AGENTS[name]
    env = make_env(tiny_model_dir, group_size=group_size)
    agent = cls(env, seed=0, **hparams)
    before = collect_rollout(env, agent.generator).rm_score.mean()
    metrics = {}
    for _ in range(20):
        metrics = agent.train_iteration()
    after = collect_rollout(env, agent.generator).rm_score.mean()
    assert before < 0.5
    assert after > before + 3.0, f"{name}: mean count of {TARGET!r} went {before:.2f} -> {after:.2f}"
    assert set(SCALARS) - {"time/tokens_per_s"} <= set(metrics)
    assert metrics["num_tokens"] > 0
    assert all(np.isfinite(v) for v in metrics.values())


def test_learn_loop_counts_tokens(tiny_model_dir):
    env = make_env(tiny_model_dir, num_envs=8, group_size=4)
    agent = RLOO(env, seed=0)
    agent.learn(total_timesteps=200, progress_bar=False)
    assert agent.num_timesteps >= 200
    assert agent.iterations >= 2  # 8 episodes x at most 16 tokens per iteration
    assert "time/tokens_per_s" in agent.last_metrics


# ---------------------------------------------------------------------- PPO internals
def test_ppo_update_recomputes_the_sampling_logprobs(tiny_model_dir):
    env = make_env(tiny_model_dir, num_envs=8, kl_coef=0.05)
    agent = PPO(env, seed=0, learning_rate=3e-3)
    first = agent.train_iteration()
    assert first["train/logprob_mismatch"] <= 1e-4
    # After an update the policy has moved: a fresh rollout is again reproduced by the update's forward.
    rollout = collect_rollout(env, agent.generator)
    with torch.no_grad():
        scores, values = agent.policy_and_values(rollout)
    mask = rollout.action_mask.bool()
    assert torch.allclose(scores.logprobs[mask], rollout.logprobs[mask], atol=1e-4)
    assert values.shape == rollout.logprobs.shape
    # V(s_t) from the update's forward equals V_old from the hidden states the env computed while sampling.
    old_values = agent.value_head(rollout.hidden_states).squeeze(-1)
    assert torch.allclose(values[mask], old_values[mask], atol=1e-4)
    assert agent.train_iteration()["train/logprob_mismatch"] <= 1e-4


def test_ppo_per_token_rewards_sum_to_the_env_return(tiny_model_dir):
    env = make_env(tiny_model_dir, num_envs=8, kl_coef=0.1)
    agent = PPO(env, seed=0)
    rollout = collect_rollout(env, agent.generator)
    dense = agent.token_rewards(rollout)
    assert torch.allclose(dense.sum(dim=1).double(), torch.as_tensor(rollout.returns), atol=1e-4)
    # The KL part is spread over the tokens, the RM score sits on each episode's last token.
    last = rollout.action_mask.sum(dim=1).long() - 1
    rows = torch.arange(8)
    expected_last = -0.1 * rollout.kl[rows, last] + torch.as_tensor(rollout.rm_score, dtype=torch.float32)
    assert torch.allclose(dense[rows, last], expected_last, atol=1e-5)
    env_shaped = PPO(env, seed=0, reward_shaping="env").token_rewards(rollout)
    assert torch.allclose(env_shaped.sum(dim=1).double(), torch.as_tensor(rollout.returns), atol=1e-4)


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 2.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.0], [1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # λ = 1, γ = 1: Â_t = (Σ_{k≥t} r_k) − V(s_t), Monte-Carlo returns.
    adv, targets = generalized_advantage_estimation(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.9, 0.8, 0.7, 0.0], [1.5, 1.0, 0.0, 0.0]]))
    assert torch.allclose(targets, torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.5, 2.0, 0.0, 0.0]]))
    # λ = 0: one-step TD errors δ_t = r_t + γ V(s_{t+1}) − V(s_t), with V = 0 after the last token.
    adv, _ = generalized_advantage_estimation(rewards, values, mask, gamma=0.5, lam=0.0)
    assert torch.allclose(adv, torch.tensor([[0.0, -0.05, 0.7, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    white = whiten(adv, mask)
    assert abs(float(white[mask.bool()].mean())) < 1e-6 and float(white[~mask.bool()].abs().sum()) == 0.0


def test_group_advantages():
    returns = np.array([1.0, 2.0, 3.0, 6.0, 5.0, 5.0])
    np.testing.assert_allclose(leave_one_out_advantages(returns, 3), [-1.5, 0.0, 1.5, 1.0, -0.5, -0.5])
    np.testing.assert_allclose(group_normalized_advantages(returns[:2], 2, eps=0.0), [-2**-0.5, 2**-0.5])
    assert np.all(group_normalized_advantages(np.ones(4), 2) == 0)  # equal rewards: no signal, no NaN


# ---------------------------------------------------------------------- PPO-ptx
def test_ppo_ptx_adds_the_pretraining_lm_loss(tiny_model_dir, tmp_path):
    text = "the hotel room was clean and the staff were friendly"
    path = tmp_path / "pretrain.txt"
    path.write_text(f"{text}\n\n{text}\n", encoding="utf-8")
    env = make_env(tiny_model_dir, num_envs=8, reward_model=lambda p, c: [0.0] * len(c))
    agent = PPO(env, seed=0, learning_rate=3e-3, ptx_coef=1.0, ptx_texts=str(path))
    losses = [agent.train_iteration()["train/ptx_loss"] for _ in range(3)]
    assert all(np.isfinite(losses))
    # The reward is 0, so the only learning signal is γ·L_ptx: the LM loss on the pre-training text falls.
    assert losses[-1] < losses[0] - 0.5
    plain = PPO(make_env(tiny_model_dir, num_envs=8), seed=0).train_iteration()
    assert "train/ptx_loss" not in plain


def test_ppo_ptx_default_text_is_the_review_corpus(tiny_model_dir):
    pytest.importorskip("tools.corpus")
    agent = PPO(make_env(tiny_model_dir, num_envs=4), seed=0, ptx_coef=0.1)
    assert len(agent._ptx_ids) == 2048
    with torch.no_grad():
        assert np.isfinite(float(agent.pretraining_loss()))


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("cls", "group_size", "kwargs", "argument"),
    [
        (PPO, 1, {"learning_rate": 0.0}, "learning_rate"),
        (PPO, 1, {"vf_learning_rate": -1e-3}, "vf_learning_rate"),
        (PPO, 1, {"n_epochs": 0}, "n_epochs"),
        (PPO, 1, {"num_minibatches": 9}, "num_minibatches"),
        (PPO, 1, {"clip_range": 0.0}, "clip_range"),
        (PPO, 1, {"clip_range_vf": -1.0}, "clip_range_vf"),
        (PPO, 1, {"gamma": 1.5}, "gamma"),
        (PPO, 1, {"gae_lambda": -0.1}, "gae_lambda"),
        (PPO, 1, {"vf_coef": -1.0}, "vf_coef"),
        (PPO, 1, {"ent_coef": float("nan")}, "ent_coef"),
        (PPO, 1, {"max_grad_norm": 0.0}, "max_grad_norm"),
        (PPO, 1, {"target_kl": 0.0}, "target_kl"),
        (PPO, 1, {"reward_shaping": "sparse"}, "reward_shaping"),
        (PPO, 1, {"ptx_coef": -0.1}, "ptx_coef"),
        (PPO, 1, {"ptx_coef": 0.1, "ptx_texts": "/no/such/file.txt"}, "ptx_texts"),
        (PPO, 1, {"ptx_coef": 0.1, "ptx_texts": []}, "ptx_texts"),
        (PPO, 1, {"ptx_batch_size": 0}, "ptx_batch_size"),
        (RLOO, 1, {}, "group_size"),
        (RLOO, 4, {"clip_range": -0.2}, "clip_range"),
        (RLOO, 4, {"n_epochs": 1.5}, "n_epochs"),
        (GRPO, 1, {}, "group_size"),
        (GRPO, 4, {"beta": -0.1}, "beta"),
        (GRPO, 4, {"eps": 0.0}, "eps"),
        (GRPO, 4, {"max_grad_norm": -1.0}, "max_grad_norm"),
    ],
)
def test_bad_hyperparameters_name_the_argument(tiny_model_dir, cls, group_size, kwargs, argument):
    env = make_env(tiny_model_dir, num_envs=8, group_size=group_size)
    with pytest.raises(ValueError, match=argument):
        cls(env, **kwargs)


@pytest.mark.parametrize("cls", [PPO, RLOO, GRPO])
def test_env_must_not_autoreset(tiny_model_dir, cls):
    env = TextGenVectorEnv(num_envs=4, model=str(tiny_model_dir), reward_model=count_target, prompts=PROMPTS,
                           max_new_tokens=4, kl_coef=0.0, device="cpu")
    with pytest.raises(ValueError, match="autoreset_mode"):
        cls(env)


# ---------------------------------------------------------------------- persistence
def test_ppo_save_load_restores_value_head_optimizer_and_resumes_exactly(tiny_model_dir, tmp_path):
    agent = PPO(make_env(tiny_model_dir, num_envs=8, kl_coef=0.05), seed=0, learning_rate=3e-3, n_epochs=2)
    agent.train_iteration()
    agent.save(tmp_path / "ckpt")
    assert float(agent.value_head.weight.detach().abs().sum()) > 0  # the head has learned something worth saving

    restored = PPO.load(tmp_path / "ckpt", make_env(tiny_model_dir, num_envs=8, kl_coef=0.05))
    assert restored.hyperparameters() == agent.hyperparameters()
    assert [g["lr"] for g in restored.optimizer.param_groups] == [3e-3, 3e-2]  # policy α, value head 10·α
    for a, b in zip(agent.value_head.parameters(), restored.value_head.parameters()):
        assert torch.equal(a, b)
    saved, loaded = agent.optimizer.state_dict(), restored.optimizer.state_dict()
    assert saved["state"].keys() == loaded["state"].keys() and len(saved["state"]) > 0
    for key, state in saved["state"].items():
        assert torch.equal(state["exp_avg"], loaded["state"][key]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], loaded["state"][key]["exp_avg_sq"])
    # Exact resume: the next iteration is identical in the original and the restored agent.
    expected, got = agent.train_iteration(), restored.train_iteration()
    for key in ("rollout/reward", "train/loss", "train/value_loss"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6)


@pytest.mark.parametrize("cls", [RLOO, GRPO])
def test_group_agents_save_load_restore_optimizer(tiny_model_dir, tmp_path, cls):
    agent = cls(make_env(tiny_model_dir, num_envs=8, group_size=4), seed=0, n_epochs=2, clip_range=0.1)
    agent.train_iteration()
    agent.save(tmp_path / "ckpt")
    restored = cls.load(tmp_path / "ckpt", make_env(tiny_model_dir, num_envs=8, group_size=4))
    assert restored.hyperparameters() == agent.hyperparameters()
    saved, loaded = agent.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert len(saved) > 0 and all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)
    assert all(torch.equal(p, q) for p, q in zip(agent.policy.parameters(), restored.policy.parameters()))


# ---------------------------------------------------------------------- GRPO's KL term
def test_grpo_beta_pays_kl_in_the_loss_not_the_reward(tiny_model_dir):
    def text_length(prompts, completions):  # varies within every group, so the first update moves π_θ
        return np.array([len(c) for c in completions], dtype=float)

    # kl_coef=0: the agent keeps its own reference
    env = make_env(tiny_model_dir, num_envs=8, group_size=4, reward_model=text_length)
    agent = GRPO(env, seed=0, beta=0.1, learning_rate=1e-2)
    assert agent.reference is not None and agent.reference is not agent.policy
    first = agent.train_iteration()
    assert first["train/ref_kl"] == pytest.approx(0.0, abs=1e-6)  # π_θ = π_ref before the first step
    assert agent.train_iteration()["train/ref_kl"] > 0.0
    assert "train/ref_kl" not in GRPO(make_env(tiny_model_dir, num_envs=8, group_size=4), seed=0).train_iteration()

"""REINFORCE and the Agent base: learning, baselines, registry errors, save / exact resume, atomic saves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from textenv.agents import AGENTS, Reinforce, make_agent
from textenv.vector_env import TextGenVectorEnv


def letter_e_reward(prompts, completions):
    """A trivially learnable reward: how often the letter "e" appears (per 8 characters)."""
    return [text.count("e") / 8 for text in completions]


def make_env(model_dir, **kwargs):
    options = dict(num_envs=16, model=str(model_dir), prompts=["the film was", "the book"], max_new_tokens=8,
                   kl_coef=0.0, reward_model=letter_e_reward, autoreset_mode="disabled")
    return TextGenVectorEnv(**{**options, **kwargs})


def test_reinforce_learns_a_trivial_reward(tiny_model_dir):
    agent = make_agent("reinforce", make_env(tiny_model_dir), learning_rate=3e-3, seed=0)
    scores = [agent.train_iteration()["rollout/rm_score"] for _ in range(40)]
    assert np.mean(scores[-5:]) > np.mean(scores[:5]) + 0.15


def test_learn_counts_tokens_and_logs_shared_scalars(tiny_model_dir, tmp_path):
    agent = make_agent("reinforce", make_env(tiny_model_dir, kl_coef=0.1), tensorboard_log=str(tmp_path / "tb"))
    agent.learn(total_timesteps=200, progress_bar=False)
    assert agent.num_timesteps >= 200 and agent.iterations >= 2
    assert {"rollout/reward", "rollout/rm_score", "rollout/kl", "rollout/kl_coef", "train/loss",
            "train/entropy", "time/tokens_per_s"} <= set(agent.last_metrics)
    assert agent.last_metrics["rollout/kl"] != 0.0  # the policy moved away from the reference
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"rollout/reward", "rollout/kl", "time/tokens_per_s"} <= set(events.Tags()["scalars"])


def test_baselines(tiny_model_dir):
    env = make_env(tiny_model_dir, group_size=4)
    returns = np.array([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
    loo = Reinforce(env, baseline="loo").compute_baseline(returns.copy())
    np.testing.assert_allclose(loo, [11 / 3, 10 / 3, 3.0, 2.0, 4 / 3, 4 / 3, 4 / 3, 0.0])
    batch = Reinforce(env, baseline="batch").compute_baseline(returns)
    np.testing.assert_allclose(batch, np.full(8, returns.mean()))
    running = Reinforce(env, baseline="running", baseline_decay=0.5)
    np.testing.assert_allclose(running.compute_baseline(np.array([2.0, 2.0])), [2.0, 2.0])  # first batch: own mean
    np.testing.assert_allclose(running.compute_baseline(np.array([4.0, 4.0])), [2.0, 2.0])  # uses the past only
    np.testing.assert_allclose(running.compute_baseline(np.array([0.0, 0.0])), [3.0, 3.0])


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("reinforse", {}, "agent 'reinforse' is not registered; choose one of"),
        ("reinforce", {"learning_rat": 1e-3}, r"unknown hyper-parameter\(s\) \['learning_rat'\]"),
        ("reinforce", {"learning_rate": -1.0}, "learning_rate=-1.0 must be a finite number > 0"),
        ("reinforce", {"baseline": "median"}, "baseline='median'"),
        ("reinforce", {"baseline": "loo"}, "group_size >= 2"),
        ("reinforce", {"baseline_decay": 1.0}, "baseline_decay"),
    ],
)
def test_bad_agent_name_or_hyperparameter(tiny_model_dir, name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_agent(name, make_env(tiny_model_dir), **kwargs)


def test_reinforce_is_registered():
    assert AGENTS["reinforce"] is Reinforce


def test_resume_continues_exactly(tiny_model_dir, tmp_path):
    def params(agent):
        return torch.cat([p.detach().flatten() for p in agent.policy.parameters()])

    first = make_agent("reinforce", make_env(tiny_model_dir, kl_coef=0.1, target_kl=0.5, kl_horizon=100),
                       learning_rate=3e-3, seed=7)
    first.learn(256, progress_bar=False)
    saved_at = first.num_timesteps
    first.save(tmp_path / "ckpt")
    first.learn(512, progress_bar=False)

    resumed = make_agent("reinforce", make_env(tiny_model_dir, kl_coef=0.1, target_kl=0.5, kl_horizon=100),
                         learning_rate=3e-3, seed=123)  # a different seed: everything must come from the checkpoint
    resumed.load_state(tmp_path / "ckpt")
    assert resumed.num_timesteps == saved_at >= 256 and resumed.env.kl_coef != 0.1  # β was adapted and restored
    resumed.learn(512, progress_bar=False)
    assert resumed.num_timesteps == first.num_timesteps
    assert resumed.env.kl_coef == pytest.approx(first.env.kl_coef)
    torch.testing.assert_close(params(resumed), params(first), atol=0, rtol=0)
    meta = json.loads((tmp_path / "ckpt" / "agent.json").read_text())
    assert meta["agent"] == "reinforce" and meta["hyperparameters"]["learning_rate"] == 3e-3


def test_load_rebuilds_agent_and_rejects_non_checkpoints(tiny_model_dir, tmp_path):
    agent = make_agent("reinforce", make_env(tiny_model_dir), baseline="batch", seed=1)
    agent.learn(64, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    loaded = Reinforce.load(tmp_path / "ckpt", make_env(tiny_model_dir))
    assert loaded.baseline == "batch" and loaded.num_timesteps == agent.num_timesteps
    for a, b in zip(agent.policy.parameters(), loaded.policy.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="not a textenv checkpoint"):
        loaded.load_state(tmp_path)


def test_crash_mid_save_keeps_previous_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    agent = make_agent("reinforce", make_env(tiny_model_dir), seed=1)
    agent.save(tmp_path / "ckpt")
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    saved_steps = json.loads((tmp_path / "ckpt" / "agent.json").read_text())["num_timesteps"]
    agent.learn(64, progress_bar=False)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(type(agent.env.tokenizer), "save_pretrained", crash)  # after the state and weights
    with pytest.raises(KeyboardInterrupt):
        agent.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before
    assert json.loads((tmp_path / "ckpt" / "agent.json").read_text())["num_timesteps"] == saved_steps
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind


def test_lora_agent_saves_adapters_and_merged_policy(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    agent = make_agent("reinforce", make_env(tiny_model_dir, kl_coef=0.1, lora={"r": 4}), learning_rate=1e-2)
    agent.learn(128, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "policy")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, agent.policy(input_ids=ids).logits, atol=1e-4, rtol=0)
    resumed = make_agent("reinforce", make_env(tiny_model_dir, kl_coef=0.1, lora={"r": 4}), learning_rate=1e-2)
    resumed.load_state(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(resumed.policy(input_ids=ids).logits, agent.policy(input_ids=ids).logits)

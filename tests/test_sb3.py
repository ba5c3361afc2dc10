"""stable-baselines3 / sb3-contrib integration: VecEnv adapter, NLPO masks, transformer policy, agents."""

from __future__ import annotations

import warnings
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.action_masks import top_k_mask, top_p_mask
from textenv.agents import SCALARS, make_agent, register_agent
from textenv.agents.sb3 import (
    SB3A2C,
    SB3PPO,
    MaskablePPOAgent,
    TextGenActorCriticPolicy,
    TextGenMaskablePolicy,
    TextGenSB3VecEnv,
)
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread", "sb3_log_dir")




def letters(prompts: list[str], completions: list[str]) -> np.ndarray:
    """Trivial reward: the number of ASCII letters in the completion (a random tiny GPT-2 emits ~0.5/token)."""
    return np.array([sum(ch.isascii() and ch.isalpha() for ch in text) for text in completions], dtype=float)


def make_env(model_dir, prompts, num_envs=4, max_new_tokens=4, kl_coef=0.05, **kwargs) -> TextGenVectorEnv:
    return TextGenVectorEnv(num_envs=num_envs, model=str(model_dir), prompts=prompts, reward_model=letters,
                            max_new_tokens=max_new_tokens, kl_coef=kl_coef, autoreset_mode="disabled", **kwargs)


def non_eos_token(env: TextGenVectorEnv) -> int:
    return (env.tokenizer.eos_token_id + 1) % len(env.tokenizer)


# ---------------------------------------------------------------------------------------------- adapter
@pytest.mark.filterwarnings("ignore:no TextGen policy is attached")
def test_adapter_resets_finished_rows_in_the_same_step(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=3, max_new_tokens=3)
    venv = TextGenSB3VecEnv(env)
    venv.seed(0)
    obs = venv.reset()
    token, eos = non_eos_token(env), env.tokenizer.eos_token_id
    assert obs["input_ids"].dtype == np.int64
    assert obs["input_ids"].shape == (3, venv.observation_space["input_ids"].shape[0])

    # step 1: row 0 says EOS (terminated), rows 1-2 continue
    obs, rewards, dones, infos = venv.step(np.array([eos, token, token]))
    assert rewards.dtype == np.float32 and dones.tolist() == [True, False, False]
    assert infos[0]["terminal_observation"]["input_ids"][-1] == eos
    assert infos[0]["episode"]["l"] == 1 and not infos[0]["truncated"]
    assert obs["input_ids"][0, -1] != eos  # row 0 already holds its next episode's prompt
    assert obs["attention_mask"][0].sum() == len(env.tokenizer(venv.reset_infos[0]["prompt"])["input_ids"])
    assert "terminal_observation" not in infos[1] and "logprob" in infos[1]

    # steps 2-3: rows 1-2 hit max_new_tokens (truncated) at step 3; row 0 (restarted) is at step 2 of 3
    returns = rewards.astype(float).copy()
    for _ in range(2):
        obs, rewards, dones, infos = venv.step(np.array([token, token, token]))
        returns += rewards
    assert dones.tolist() == [False, True, True]
    for row in (1, 2):
        info = infos[row]
        assert info["terminal_observation"]["input_ids"][-3:].tolist() == [token] * 3
        assert info["episode"]["l"] == 3 and info["truncated"] and info["TimeLimit.truncated"] is False
        assert info["episode"]["r"] == pytest.approx(returns[row], abs=1e-6)
        assert info["episode"]["r"] == pytest.approx(info["rm_score"] - info["kl_coef"] * info["episode_kl"], abs=1e-5)
        assert isinstance(info["text"], str) and isinstance(info["prompt"], str)
        new_prompt = venv.reset_infos[row]["prompt"]
        assert obs["attention_mask"][row].sum() == len(env.tokenizer(new_prompt)["input_ids"])


@pytest.mark.filterwarnings("ignore:no TextGen policy is attached")
def test_adapter_vecenv_methods(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=2)
    venv = TextGenSB3VecEnv(env, mask_top_k=5)
    venv.set_options([{"prompt": "the book"}, {"prompt": "this blender"}])
    venv.reset()
    assert [info["prompt"] for info in venv.reset_infos] == ["the book", "this blender"]
    venv.seed(7)
    first = venv.reset()["input_ids"]
    venv.seed(7)
    assert np.array_equal(venv.reset()["input_ids"], first)

    assert venv.get_attr("max_new_tokens") == [4, 4]
    assert venv.has_attr("action_masks")
    venv.set_attr("render_mode", "ansi")
    assert "the" in venv.env_method("render", indices=0)[0]
    with pytest.raises(ValueError, match="all rows"):
        venv.set_attr("render_mode", None, indices=[1])
    masks = venv.env_method("action_masks")
    eos = env.tokenizer.eos_token_id
    assert len(masks) == 2 and masks[0].shape == (len(env.tokenizer),) and masks[0][eos]
    assert masks[0].sum() == 5 + (not top_k_mask(env.engine.ref_logits, 5)[0, eos])  # top-5 of π_ref, plus EOS
    from stable_baselines3.common.monitor import Monitor

    assert venv.env_is_wrapped(Monitor) == [True, True]
    assert venv.env_is_wrapped(gym.wrappers.TimeLimit) == [False, False]

    with pytest.raises(ValueError, match="autoreset_mode='disabled'"):
        TextGenSB3VecEnv(TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=tiny_prompts,
                                          reward_model=letters, kl_coef=0.0))


# ---------------------------------------------------------------------------------------------- masks
def test_top_k_and_top_p_masks_are_batched_and_exact():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=generator) * 3
    k_mask = top_k_mask(logits, 7)
    assert k_mask.shape == (5, 50) and k_mask.dtype == torch.bool
    assert k_mask.sum(dim=1).tolist() == [7] * 5
    assert torch.equal(k_mask, torch.zeros_like(k_mask).scatter(1, logits.topk(7).indices, True))

    probs = logits.softmax(dim=1)
    for p in (0.3, 0.9, 0.999):
        p_mask = top_p_mask(logits, p)
        kept = (probs * p_mask).sum(dim=1)
        assert bool((kept >= p - 1e-6).all())
        smallest_kept = torch.where(p_mask, probs, torch.inf).min(dim=1).values
        assert bool((kept - smallest_kept < p).all())  # minimal: dropping the least likely kept token falls below p

    assert top_p_mask(logits, 1e-9).sum(dim=1).tolist() == [1] * 5  # always at least the argmax
    assert bool(top_k_mask(logits, 1, always_allow=[0])[:, 0].all())
    with pytest.raises(ValueError, match="k="):
        top_k_mask(logits, 0)
    with pytest.raises(ValueError, match="p="):
        top_p_mask(logits, 1.5)
    with pytest.raises(TypeError, match="floating-point"):
        top_k_mask(torch.ones(2, 3, dtype=torch.long), 1)


def test_action_masks_use_reference_logits_or_policy_logits_without_reference(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=3, kl_coef=0.05)
    venv = TextGenSB3VecEnv(env, mask_top_p=0.5, mask_allow_eos=False)
    venv.reset()
    with torch.no_grad():
        env.engine.ref_logits[:, 3] = 100.0  # make the reference (only) certain of token 3
    masks = venv.action_masks()
    assert masks.shape == (3, len(env.tokenizer)) and masks.dtype == bool
    assert masks.sum(axis=1).tolist() == [1, 1, 1] and masks[:, 3].all()

    no_ref = TextGenSB3VecEnv(make_env(tiny_model_dir, tiny_prompts, num_envs=3, kl_coef=0.0), mask_top_k=4)
    no_ref.reset()
    expected = top_k_mask(no_ref.env.next_token_logits(), 4, [no_ref.env.tokenizer.eos_token_id]).numpy()
    assert np.array_equal(no_ref.action_masks(), expected)


# ---------------------------------------------------------------------------------------------- policy
def test_policy_wraps_env_model_and_matches_env_logprobs(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=4, max_new_tokens=4)
    venv = TextGenSB3VecEnv(env)
    model = PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs(), n_steps=4, batch_size=8)
    assert model.policy.lm is env.policy
    obs = venv.reset()
    for _ in range(6):  # crosses episode boundaries (rows restart with shorter windows)
        with torch.no_grad():
            actions, values, logprobs = model.policy(obs_as_tensor(obs, model.device))
        assert obs_as_tensor(obs, model.device)["input_ids"].dtype == torch.int64
        assert values.shape == (4, 1) and actions.shape == (4,)
        obs, _, _, infos = venv.step(actions.numpy())
        env_logprobs = torch.tensor([info["logprob"] for info in infos])
        assert torch.allclose(logprobs, env_logprobs, atol=1e-4)


def test_rollout_outputs_equal_a_full_forward_also_after_an_update(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=4, max_new_tokens=6)
    venv = TextGenSB3VecEnv(env)
    model = PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs(), n_steps=4)
    policy = model.policy
    torch.nn.init.normal_(policy.value_head.weight)
    obs = venv.reset()
    for step in range(5):
        if step == 3:  # an SB3 update in the middle of the episodes: new weights
            policy.set_training_mode(True)
            with torch.no_grad():
                policy.lm.get_output_embeddings().weight.mul_(3.0)
            policy.set_training_mode(False)
        obs_t = obs_as_tensor(obs, "cpu")
        with torch.no_grad():
            actions, values, logprobs = policy(obs_t, deterministic=True)
            logits, full_values = policy.logits_and_values(obs_t)
            if getattr(env.engine, "policy_hidden", None) is not None:  # the engine keeps hidden states:
                assert policy._env_cached_outputs(obs_t) is not None  # ... then no forward runs in rollouts
        assert torch.equal(actions, logits.argmax(dim=1))
        assert torch.allclose(values, full_values, atol=1e-5)
        assert torch.allclose(logprobs, logits.log_softmax(dim=1).max(dim=1).values, atol=1e-5)
        obs, _, _, infos = venv.step(actions.numpy())
        assert torch.allclose(logprobs, torch.tensor([info["logprob"] for info in infos]), atol=1e-4)


def test_update_batches_share_one_forward_per_episode(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=3, max_new_tokens=5)
    venv = TextGenSB3VecEnv(env)
    model = PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs(), n_steps=4)
    obs, stored = venv.reset(), []
    for _ in range(7):  # 7 steps x 3 rows, crossing episode ends
        stored.append(obs)
        obs, *_ = venv.step(np.full(3, non_eos_token(env)))
    batch = {key: torch.as_tensor(np.concatenate([o[key] for o in stored])) for key in obs}
    order = torch.randperm(21, generator=torch.Generator().manual_seed(0))  # SB3 shuffles minibatches
    batch = {key: value[order] for key, value in batch.items()}

    from textenv.agents.sb3.policy import _shared_prefixes

    carriers, _, _ = _shared_prefixes(batch["input_ids"], batch["attention_mask"])
    assert len(carriers) <= 6  # 3 rows x 2 episodes
    torch.nn.init.normal_(model.policy.value_head.weight)
    logits, values = model.policy.logits_and_values(batch)
    assert model.policy._linear_head is True  # GPT-2: logits = lm_head(last hidden state), applied per sample
    model.policy._linear_head = False  # the path for heads that are not (e.g. logit soft-capping)
    logits_without_head, _ = model.policy.logits_and_values(batch)
    for i in range(21):  # the same as one forward per sample
        single = {key: value[i : i + 1] for key, value in batch.items()}
        one_logits, one_value = model.policy.logits_and_values(single)
        assert torch.allclose(logits[i], one_logits[0], atol=1e-5)
        assert torch.allclose(logits_without_head[i], one_logits[0], atol=1e-5)
        assert torch.allclose(values[i], one_value[0], atol=1e-5)


def test_save_load_round_trip_gives_identical_probabilities(tiny_model_dir, tiny_prompts, tmp_path):
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=4, max_new_tokens=4)
    venv = TextGenSB3VecEnv(env)
    model = PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs(), n_steps=4, batch_size=8,
                learning_rate=1e-2, seed=0)
    initial = {k: v.clone() for k, v in env.policy.state_dict().items()}
    model.learn(16)
    assert any(not torch.equal(initial[k], v) for k, v in env.policy.state_dict().items())  # the env's model trained

    model.save(tmp_path / "ppo.zip")
    with zipfile.ZipFile(tmp_path / "ppo.zip") as archive:
        assert len(archive.read("data")) < 200_000  # policy_kwargs pickle the LM config, not the weights
    loaded = PPO.load(tmp_path / "ppo.zip")
    assert loaded.policy.lm is not env.policy

    obs = obs_as_tensor(venv.reset(), "cpu")
    with torch.no_grad():
        expected = model.policy.get_distribution(obs).distribution.probs
        actual = loaded.policy.get_distribution(obs).distribution.probs
        assert torch.allclose(actual, expected, atol=1e-6)
        assert torch.allclose(loaded.policy.predict_values(obs), model.policy.predict_values(obs), atol=1e-6)

    # training a loaded model needs the env to generate with it
    loaded = PPO.load(tmp_path / "ppo.zip", env=venv)
    with pytest.raises(RuntimeError, match="attach"):
        loaded.learn(16)
    venv.attach(loaded)
    assert env.policy is loaded.policy.lm
    loaded.learn(16)


def test_lora_policy_survives_save_and_load(tiny_model_dir, tiny_prompts, tmp_path):
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=4, max_new_tokens=4, lora=True)
    venv = TextGenSB3VecEnv(env)
    model = PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs(), n_steps=4, batch_size=8,
                learning_rate=1e-2, seed=0)
    model.learn(16)
    model.save(tmp_path / "lora.zip")
    loaded = PPO.load(tmp_path / "lora.zip")  # rebuilds base + the same LoRA adapters from the saved configs
    obs = obs_as_tensor(venv.reset(), "cpu")
    with torch.no_grad():
        expected = model.policy.get_distribution(obs).distribution.probs
        assert torch.allclose(loaded.policy.get_distribution(obs).distribution.probs, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- agents
def expected_letters_per_token(agent, env) -> float:
    """E_{a~π}[letters(a)] averaged over the reset states of a fixed seed (exact, no sampling noise)."""
    tok = env.tokenizer
    per_token = torch.tensor([sum(c.isascii() and c.isalpha() for c in tok.decode([i])) for i in range(len(tok))],
                             dtype=torch.float)
    obs, _ = env.reset(seed=123)
    with torch.no_grad():
        logits, _ = agent.model.policy.logits_and_values(obs_as_tensor(obs, "cpu"))
    return float((logits.softmax(dim=-1) @ per_token).mean())


@pytest.mark.parametrize(("cls", "learning_rate"), [(SB3PPO, 5e-3), (SB3A2C, 2e-2), (MaskablePPOAgent, 5e-3)])
def test_agents_learn_a_trivial_reward(cls, learning_rate, tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=8, max_new_tokens=8, kl_coef=0.0)
    agent = cls(env, learning_rate=learning_rate, seed=0)
    before = expected_letters_per_token(agent, env)
    agent.model._last_obs = None  # the probe above moved the env: let SB3 reset it
    agent.learn(total_timesteps=8 * 64, progress_bar=False)  # 8 rollouts of 8 steps x 8 rows
    assert agent.num_timesteps == 512 and agent.model.num_timesteps == 512
    assert set(SCALARS) <= set(agent.last_metrics)
    assert expected_letters_per_token(agent, env) > 1.3 * before


def test_agent_registry_and_checkpoint_round_trip(tiny_model_dir, tiny_prompts, tmp_path):
    for cls in (SB3PPO, SB3A2C, MaskablePPOAgent):
        register_agent(cls)
    env = make_env(tiny_model_dir, tiny_prompts, num_envs=4, max_new_tokens=4)
    agent = make_agent("maskable-ppo", env, learning_rate=1e-3, n_steps=4, batch_size=8, mask_top_k=20)
    assert isinstance(agent.model, MaskablePPO) and isinstance(agent.model.policy, TextGenMaskablePolicy)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        make_agent("sb3-ppo", env, clip_rnage=0.1)
    agent.learn(total_timesteps=32, progress_bar=False)
    agent.save(tmp_path / "ckpt")

    env2 = make_env(tiny_model_dir, tiny_prompts, num_envs=4, max_new_tokens=4)
    restored = MaskablePPOAgent.load(tmp_path / "ckpt", env2)
    assert restored.num_timesteps == 32 and restored.venv.mask_top_k == 20
    obs = obs_as_tensor(agent.venv.reset(), "cpu")
    with torch.no_grad():
        for a, b in zip(agent.model.policy.logits_and_values(obs), restored.model.policy.logits_and_values(obs)):
            assert torch.allclose(a, b, atol=1e-6)
    restored.learn(total_timesteps=48, progress_bar=False)
    assert restored.num_timesteps == 48


@pytest.mark.parametrize("cls", [SB3PPO, MaskablePPOAgent])
def test_resume_mid_episode_continues_exactly(cls, tiny_model_dir, tiny_prompts, tmp_path):
    """SB3 rollouts end mid-episode (n_steps=3 < max_new_tokens=5): the checkpoint carries the episodes in
    progress, so a resumed run samples the same tokens and reaches bit-identical weights."""

    def params(agent):
        return torch.cat([p.detach().flatten() for p in agent.model.policy.parameters()])

    def run(agent, total):
        agent.learn(total_timesteps=total, progress_bar=False)
        return agent.model._last_obs["input_ids"].copy()

    kwargs = dict(learning_rate=3e-3, n_steps=3, batch_size=6)
    first = cls(make_env(tiny_model_dir, tiny_prompts, max_new_tokens=5, kl_coef=0.1), seed=1, **kwargs)
    run(first, 12)
    first.save(tmp_path / "ckpt")
    ids_first = run(first, 36)

    resumed = cls(make_env(tiny_model_dir, tiny_prompts, max_new_tokens=5, kl_coef=0.1), seed=99, **kwargs)
    resumed.load_state(tmp_path / "ckpt")
    assert bool(resumed.env.engine.num_generated.any())  # the resume really is mid-episode
    ids_resumed = run(resumed, 36)
    np.testing.assert_array_equal(ids_resumed, ids_first)
    torch.testing.assert_close(params(resumed), params(first), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- plain SB3
def test_generic_multi_input_policy_runs_and_points_to_the_textgen_policy(tiny_model_dir, tiny_prompts):
    venv = TextGenSB3VecEnv(make_env(tiny_model_dir, tiny_prompts, num_envs=2, max_new_tokens=3))
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=16, n_epochs=1)
    with pytest.warns(UserWarning, match="TextGenActorCriticPolicy"):
        model.learn(16)
    assert len(model.ep_info_buffer) > 0

    single = DummyVecEnv([lambda: gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=tiny_prompts,
                                           reward_model=letters, max_new_tokens=3, kl_coef=0.0)])
    PPO("MultiInputPolicy", single, n_steps=8, batch_size=8, n_epochs=1).learn(8)


def test_textgen_policy_without_policy_kwargs_explains_what_to_pass(tiny_model_dir, tiny_prompts):
    venv = TextGenSB3VecEnv(make_env(tiny_model_dir, tiny_prompts, num_envs=2))
    with pytest.raises(TypeError, match="policy_kwargs=venv.policy_kwargs"):
        PPO(TextGenActorCriticPolicy, venv)


def test_env_checkers_pass_on_single_env(tiny_model_dir, tiny_prompts):
    from gymnasium.utils.env_checker import check_env as gymnasium_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=letters,
                   max_new_tokens=4)
    gymnasium_check_env(env.unwrapped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3's checker reports problems as warnings
        sb3_check_env(env)

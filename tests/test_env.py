"""TextGen-v0: registration, spaces, episode ends, reward = RM − β·KL, KV-cache equivalence, errors."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.engine.generation import GenerationEngine
from textenv.kl import AdaptiveKLController, kl_per_token
from textenv.models.loading import load_causal_lm, load_tokenizer
from textenv.rollout import collect_rollout
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv


def length_reward(prompts, completions):
    return [len(c) / 10.0 for c in completions]


@pytest.fixture
def vec(tiny_model_dir, tiny_prompts):
    return TextGenVectorEnv(
        num_envs=4, model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
        max_new_tokens=6, autoreset_mode="disabled", kl_coef=0.1, render_mode="ansi", device="cpu",
    )


def full_forward_logprobs(model: torch.nn.Module, rollout) -> torch.Tensor:
    """log π(a_t|s_t) ``(B, T)`` from one plain forward over the rollout's left-padded prompt + completion (no
    cache, no packing): the independent recompute the engine's numbers are checked against."""
    positions = (rollout.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=positions).logits
    logp = logits[:, rollout.prompt_width - 1 : -1].float().log_softmax(dim=-1)
    return logp.gather(2, rollout.actions[..., None]).squeeze(-1)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Move the policy away from the reference so KL terms are non-zero."""
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator))


def play(env: TextGenVectorEnv, seed: int = 0):
    """Sample every row to the end; return per-step rewards (B, T) and the last step's info per row."""
    generator = torch.Generator().manual_seed(seed)
    rewards, final = [], {}
    while not env.finished.all():
        actions = torch.multinomial(env.next_token_logits().softmax(-1), 1, generator=generator).squeeze(1)
        _, reward, _, _, info = env.step(actions.numpy())
        rewards.append(reward)
        for key in ("rm_score", "episode_kl", "kl_coef", "text"):
            if key in info:
                for row in np.flatnonzero(info[f"_{key}"]):
                    final.setdefault(row, {})[key] = info[key][row]
    return np.stack(rewards, axis=1), final


# ---------------------------------------------------------------- registration and spaces
def test_make_and_make_vec(tiny_model_dir, tiny_prompts):
    env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=tiny_prompts, max_new_tokens=4)
    assert env.action_space.n == len(load_tokenizer(str(tiny_model_dir)))
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space
    assert info["prompt"] in tiny_prompts
    envs = gym.make_vec("TextGen-v0", num_envs=3, model=str(tiny_model_dir), prompts=tiny_prompts, max_new_tokens=4)
    assert isinstance(envs, TextGenVectorEnv)
    obs, _ = envs.reset(seed=0)
    assert obs["input_ids"].shape == (3, envs.max_prompt_tokens + 4)
    assert obs in envs.observation_space


def test_module_prefixed_id_needs_no_import(tiny_model_dir):
    code = (
        "import gymnasium as gym; "
        f"env = gym.make('textenv:TextGen-v0', model={str(tiny_model_dir)!r}, prompts=['the film'], max_new_tokens=2); "
        "env.reset(seed=0); print(type(env.unwrapped).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("TextGenEnv")


def test_observation_is_left_padded_and_tracks_tokens(vec):
    obs, _ = vec.reset(seed=1)
    prompt_tokens = obs["attention_mask"].sum(axis=1)
    assert (obs["attention_mask"][:, -1] == 1).all()  # right-aligned
    obs, *_ = vec.step(np.full(4, 5))
    assert (obs["attention_mask"].sum(axis=1) == prompt_tokens + 1).all()
    assert (obs["input_ids"][:, -1] == 5).all()
    # padding columns hold the pad id
    pad = vec.tokenizer.pad_token_id
    assert (obs["input_ids"][obs["attention_mask"] == 0] == pad).all()


def test_episode_terminates_on_eos_and_truncates_at_limit(vec):
    vec.reset(seed=0)
    eos = vec.tokenizer.eos_token_id
    _, _, terminated, truncated, _ = vec.step(np.array([eos, 7, 7, 7]))
    assert terminated.tolist() == [True, False, False, False] and not truncated.any()
    for _ in range(4):
        _, _, terminated, truncated, _ = vec.step(np.full(4, 7))
        assert not terminated.any() and not truncated.any()
    _, _, terminated, truncated, _ = vec.step(np.full(4, 7))  # 6th token for rows 1..3
    assert truncated.tolist() == [False, True, True, True] and not terminated.any()
    assert vec.finished.all()


# ---------------------------------------------------------------- reward and KL
def test_terminal_reward_is_rm_score_minus_beta_kl(vec):
    perturb(vec.policy)
    vec.reset(seed=3)
    rewards, final = play(vec)
    for row, info in final.items():
        expected = len(info["text"]) / 10.0 - 0.1 * info["episode_kl"]
        assert rewards[row].sum() == pytest.approx(expected, abs=1e-6)
        assert info["rm_score"] == pytest.approx(len(info["text"]) / 10.0)
    assert ((rewards != 0).sum(axis=1) <= 1).all()  # terminal mode: the reward arrives once


def test_dense_penalty_sums_to_the_terminal_reward(tiny_model_dir, tiny_prompts):
    kwargs = dict(num_envs=4, model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                  max_new_tokens=6, autoreset_mode="disabled", kl_coef=0.1, device="cpu")
    terminal = TextGenVectorEnv(kl_penalty="terminal", **kwargs)
    dense = TextGenVectorEnv(kl_penalty="dense", **kwargs)
    perturb(terminal.policy)
    perturb(dense.policy)
    terminal.reset(seed=5)
    dense.reset(seed=5)
    r_terminal, _ = play(terminal, seed=9)
    r_dense, _ = play(dense, seed=9)
    np.testing.assert_allclose(r_terminal.sum(axis=1), r_dense.sum(axis=1), atol=1e-5)
    assert (r_dense[:, 0] != 0).any()  # dense pays per token
    assert ((r_terminal != 0).sum(axis=1) <= 1).all()


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    assert torch.allclose(kl_per_token(logp, ref, "k1"), logp - ref)
    k3 = kl_per_token(logp, ref, "k3")
    assert (k3 >= 0).all() and k3[2] == 0
    assert torch.allclose(k3, torch.exp(ref - logp) - 1 - (ref - logp))
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_per_token(logp, ref, "k2")


def test_adaptive_kl_controller_moves_beta_towards_target():
    controller = AdaptiveKLController(0.1, target=2.0, horizon=1000)
    controller.update(mean_kl=10.0, n_steps=100)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    controller.update(mean_kl=0.0, n_steps=100)
    assert controller.value < 0.1 * (1 + 0.2 * 100 / 1000)


def test_env_adapts_beta_with_target_kl(tiny_model_dir, tiny_prompts):
    env = TextGenVectorEnv(num_envs=4, model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                           max_new_tokens=4, autoreset_mode="disabled", kl_coef=0.1, target_kl=100.0, kl_horizon=10)
    perturb(env.policy, scale=0.01)  # KL > 0 but far below the target: β must shrink
    env.reset(seed=0)
    play(env)
    assert env.kl_coef < 0.1


def test_zero_beta_loads_no_reference(tiny_model_dir, tiny_prompts):
    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=tiny_prompts, kl_coef=0.0,
                           reward_model=length_reward, max_new_tokens=3, autoreset_mode="disabled")
    assert env.reference is None and env.engine.ref_logits is None
    env.reset(seed=0)
    rewards, final = play(env)
    for row, info in final.items():
        assert rewards[row].sum() == pytest.approx(len(info["text"]) / 10.0)


# ---------------------------------------------------------------- the engine's KV cache
@pytest.mark.parametrize("kl_penalty", ["terminal", "dense"])  # lazy reference (fed when rows finish) / eager
def test_cached_logprobs_equal_full_recompute(tiny_model_dir, tiny_prompts, kl_penalty):
    env = TextGenVectorEnv(num_envs=4, model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                           max_new_tokens=8, autoreset_mode="disabled", kl_coef=0.1, kl_estimator="k1",
                           kl_penalty=kl_penalty)
    assert env.engine.lazy_reference == (kl_penalty == "terminal")
    perturb(env.policy)  # policy and reference differ, so both caches are checked separately
    rollout = collect_rollout(env, torch.Generator().manual_seed(0))
    with torch.no_grad():
        policy_lp = full_forward_logprobs(env.policy, rollout)
        ref_lp = full_forward_logprobs(env.reference, rollout)
    mask = rollout.action_mask.bool()
    assert (policy_lp - rollout.logprobs)[mask].abs().max() <= 1e-4
    assert ((policy_lp - ref_lp) - rollout.kl)[mask].abs().max() <= 1e-4  # k1 = log π − log π_ref
    assert rollout.kl[mask].abs().max() > 1e-3  # the check above is not vacuous
    with torch.no_grad():  # the rollout's hidden states (PPO's V_old input) equal a full forward's
        positions = (rollout.attention_mask.cumsum(1) - 1).clamp(min=0)
        full = env.policy(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=positions,
                          output_hidden_states=True).hidden_states[-1][:, rollout.prompt_width - 1 : -1]
    assert (full - rollout.hidden_states)[mask].abs().max() <= 1e-4
    assert torch.all(rollout.hidden_states[~mask] == 0) and rollout.hidden_states[mask].abs().max() > 0.1


@pytest.mark.parametrize("row_edits", [True, False])  # False: the full-batch paths other cache layers take
@pytest.mark.parametrize("kl_penalty", ["terminal", "dense"])
def test_episode_kl_equals_full_recompute_across_autoresets(tiny_model_dir, tiny_prompts, kl_penalty, row_edits,
                                                             monkeypatch):
    """Rows finish and restart at different steps (caches rebuilt, a lazy reference catching up in between);
    every finished episode's KL must equal Σ_t log π − log π_ref recomputed from scratch."""
    env = TextGenVectorEnv(num_envs=3, model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                           max_new_tokens=4, kl_coef=0.1, kl_penalty=kl_penalty, device="cpu")
    perturb(env.policy)
    if not row_edits:
        monkeypatch.setattr(GenerationEngine, "_row_edits_ok", lambda self: False)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    eos, checked = env.tokenizer.eos_token_id, 0
    for _ in range(14):
        actions = rng.integers(0, len(env.tokenizer), size=3)
        actions[rng.random(3) < 0.3] = eos  # episodes of different lengths
        obs, _, terminated, truncated, info = env.step(actions)
        for row in np.flatnonzero(terminated | truncated):
            ids = torch.as_tensor(obs["input_ids"][row][obs["attention_mask"][row] == 1])[None]
            prompt_len = len(env.tokenizer(info["prompt"][row])["input_ids"])
            with torch.no_grad():
                lp = env.policy(ids).logits[0, :-1].log_softmax(-1)
                ref = env.reference(ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, 1:, None]
            expected = (lp.gather(1, targets) - ref.gather(1, targets))[prompt_len - 1 :].sum()
            assert info["episode_kl"][row] == pytest.approx(float(expected), abs=1e-4)
            checked += 1
    assert checked >= 6
    prefills_per_episode = env.engine.num_prefills / checked
    assert prefills_per_episode < 0.5 if row_edits else prefills_per_episode >= 0.5  # in place vs laid out anew


@pytest.mark.parametrize("lazy_reference", [False, True])
@pytest.mark.parametrize(("new_prompt", "in_place"), [("a great", True), ("i liked the pasta at the", False)])
def test_restart_rows_matches_fresh_prefill(tiny_model_dir, lazy_reference, new_prompt, in_place):
    """A restarted row equals a fresh prefill, whether the prompt fits in place (only that row is prefilled)
    or is wider than the layout (every row is laid out again); so does the continuing row, for both models."""
    model = load_causal_lm(str(tiny_model_dir), "cpu")
    perturb(model)
    reference = load_causal_lm(str(tiny_model_dir), "cpu")
    tok = load_tokenizer(str(tiny_model_dir))

    def engine_for(prompts):
        engine = GenerationEngine(model, reference, tok, max_new_tokens=10, lazy_reference=lazy_reference)
        engine.start(prompts)
        return engine

    prompts = [tok("the film was")["input_ids"], tok("the book")["input_ids"]]
    new_ids = tok(new_prompt)["input_ids"]
    engine = engine_for(prompts)
    engine.advance(torch.tensor([5, 6]))
    engine.advance(torch.tensor([7, 8]))
    prefills = engine.num_prefills
    engine.restart_rows(torch.tensor([True, False]), [new_ids])
    assert (engine.num_prefills == prefills) == in_place
    assert engine.generated_ids(1) == [6, 8] and engine.generated_ids(0) == []
    fresh = engine_for([new_ids, prompts[1] + [6, 8]])
    torch.testing.assert_close(engine.policy_logits, fresh.policy_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(engine.ref_logits, fresh.ref_logits, atol=1e-4, rtol=0)
    for step in ([9, 9], [10, 11], [12, 13]):  # the caches stay consistent after the restart
        out, fresh_out = engine.advance(torch.tensor(step)), fresh.advance(torch.tensor(step))
        torch.testing.assert_close(out.logprob, fresh_out.logprob, atol=1e-4, rtol=0)
    engine.sync_reference()
    fresh.sync_reference()
    torch.testing.assert_close(engine.ref_logprobs[:, -3:], fresh.ref_logprobs[:, -3:], atol=1e-4, rtol=0)
    assert engine.ref_logprobs[1].abs().sum() > 0 and engine.ref_logprobs[1, -5:].ne(0).all()  # incl. 6, 8


def test_next_step_autoreset(tiny_model_dir, tiny_prompts):
    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                           max_new_tokens=5, kl_coef=0.0)
    obs0, _ = env.reset(seed=0)
    eos = env.tokenizer.eos_token_id
    _, r, term, _, info = env.step(np.array([eos, 9]))
    assert term.tolist() == [True, False] and info["_text"].tolist() == [True, False]
    obs, r, term, trunc, _ = env.step(np.array([9, 9]))  # row 0 restarts, its action ignored
    assert r[0] == 0 and not term[0] and not trunc[0]
    assert env.engine.num_generated.tolist() == [0, 2]
    assert obs["attention_mask"][1].sum() == obs0["attention_mask"][1].sum() + 2


# ---------------------------------------------------------------- info, render, seeding, device
def test_info_render_and_reproducible_reset(tiny_model_dir, tiny_prompts):
    env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                   max_new_tokens=3, render_mode="ansi")
    obs_a, info_a = env.reset(seed=42)
    obs_b, info_b = env.reset(seed=42)
    assert info_a["prompt"] == info_b["prompt"]
    np.testing.assert_array_equal(obs_a["input_ids"], obs_b["input_ids"])
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(11)
        done = terminated or truncated
    assert {"text", "prompt", "rm_score", "episode_kl", "kl_coef"} <= set(info)
    screen = env.render()
    assert info["prompt"] in screen and info["text"] in screen and "[done]" in screen


def test_device_auto_is_cpu_without_cuda(tiny_model_dir, tiny_prompts):
    env = TextGenVectorEnv(num_envs=1, model=str(tiny_model_dir), prompts=tiny_prompts, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert env.device.type == expected and next(env.policy.parameters()).device.type == expected


def test_passes_gymnasium_and_sb3_env_checkers(tiny_model_dir, tiny_prompts):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                   max_new_tokens=3)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_models_are_reachable_through_the_wrappers_of_gym_make(tiny_model_dir, tiny_prompts):
    """What the docs say: Gymnasium 1.x wrappers do not forward attributes, env.unwrapped and get_wrapper_attr do;
    set_policy through them makes the env compute log π (and the KL) with the new model."""
    from textenv.logprobs import observation_logprobs

    env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                   max_new_tokens=3)
    with pytest.raises(AttributeError):
        env.policy  # noqa: B018
    inner = env.unwrapped
    assert env.get_wrapper_attr("policy") is inner.policy is inner.vector_env.policy
    assert env.get_wrapper_attr("tokenizer") is inner.tokenizer is inner.vector_env.tokenizer
    assert env.get_wrapper_attr("reference") is inner.reference is not None
    obs, _ = env.reset(seed=0)
    logits = env.get_wrapper_attr("next_token_logits")()
    assert logits.shape == (env.action_space.n,) and torch.equal(logits, inner.next_token_logits())

    actor = load_causal_lm(str(tiny_model_dir))
    perturb(actor)
    env.get_wrapper_attr("set_policy")(actor)
    inner.vector_env.refresh_cache()
    assert inner.policy is actor
    expected = observation_logprobs(actor, obs, 4).item()
    _, _, _, _, info = env.step(4)
    assert info["logprob"] == pytest.approx(expected, abs=1e-5)


def test_gymnasium_render_check_passes(tiny_model_dir, tiny_prompts):
    from gymnasium.utils.env_checker import check_env

    for mode in ("ansi", "human"):
        env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                       max_new_tokens=3, render_mode=mode)
        check_env(env.unwrapped)


# ---------------------------------------------------------------- bad input
def test_bad_actions_are_rejected(vec):
    vec.reset(seed=0)
    with pytest.raises(InputError, match=r"actions must be token ids in \[0"):
        vec.step(np.array([0, 1, 2, vec.single_action_space.n]))
    with pytest.raises(InputError, match="actions must be token ids"):
        vec.step(np.array([-1, 1, 2, 3]))
    with pytest.raises(InputError, match="actions must be an integer array.*float64"):
        vec.step(np.array([0.5, 1, 2, 3]))
    with pytest.raises(InputError, match=r"shape \(4,\)"):
        vec.step(np.array([1, 2]))


def test_single_env_errors(tiny_model_dir, tiny_prompts):
    env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=tiny_prompts, max_new_tokens=2,
                   reward_model=length_reward).unwrapped
    with pytest.raises(InputError, match="before reset"):
        env.step(1)
    env.reset(seed=0)
    with pytest.raises(InputError, match="action must be one int"):
        env.step(1.5)
    env.step(1)
    env.step(1)
    with pytest.raises(InputError, match="episode has ended"):
        env.step(1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": []}, "prompts is empty"),
        ({"prompts": ["ok", "  "]}, r"prompts\[1\]"),
        ({"prompts": ["the film was good and long"], "max_prompt_tokens": 2}, "max_prompt_tokens=2"),
        ({"model": "/nonexistent/model-dir"}, "model not found"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 500}, "exceeds the model's context"),
        ({"kl_coef": -1.0}, "kl_coef"),
        ({"kl_penalty": "sometimes"}, "kl_penalty"),
        ({"num_envs": 3, "group_size": 2}, "multiple of group_size"),
        ({"reward_model": "no-such-rm"}, "reward_model='no-such-rm'"),
    ],
)
def test_bad_constructor_arguments(tiny_model_dir, tiny_prompts, kwargs, message):
    base = dict(num_envs=2, model=str(tiny_model_dir), prompts=tiny_prompts, autoreset_mode="disabled")
    with pytest.raises(InputError, match=message):
        TextGenVectorEnv(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("reward", "message"),
    [(lambda p, c: [float("nan")] * len(c), "NaN/inf"), (lambda p, c: [1.0], r"shape \(1,\) \(expected \(2,\)\)")],
)
def test_bad_reward_model_output(tiny_model_dir, tiny_prompts, reward, message):
    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=reward,
                           max_new_tokens=1, autoreset_mode="disabled")
    env.reset(seed=0)
    with pytest.raises(InputError, match=message):
        env.step(np.array([3, 3]))


def test_forced_prompt_too_long_at_reset(vec):
    with pytest.raises(InputError, match="max_prompt_tokens"):
        vec.reset(options={"prompts": ["the film was good and the acting was great " * 5] * 4})


@pytest.mark.parametrize("target_modules", [None, ["c_attn", "wte"]])  # peft's default; adapters on the embedding too
def test_lora_reference_is_the_policy_with_adapters_disabled(tiny_model_dir, tiny_prompts, target_modules):
    lora = {"r": 4, "lora_alpha": 8, **({"target_modules": target_modules} if target_modules else {})}
    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=length_reward,
                           max_new_tokens=4, autoreset_mode="disabled", lora=lora)
    trainable = [n for n, p in env.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert list(env.reference.parameters()) == []  # no second copy of the weights
    collect_rollout(env, torch.Generator().manual_seed(1))  # first scoring while the adapters are still zero
    with torch.no_grad():  # move the adapters: the policy changes, the reference must not
        for name, p in env.policy.named_parameters():
            if "lora_" in name:  # A and B: peft starts an embedding's A at zero, a linear layer's B
                p.add_(0.5)
    rollout = collect_rollout(env, torch.Generator().manual_seed(0))
    base = load_causal_lm(str(tiny_model_dir), "cpu")
    with torch.no_grad():
        base_lp = full_forward_logprobs(base, rollout)
        policy_lp = full_forward_logprobs(env.policy, rollout)
    mask = rollout.action_mask.bool()
    ref_lp = rollout.logprobs - rollout.kl  # k1: log π_ref = log π − KL_t
    assert (ref_lp - base_lp)[mask].abs().max() <= 1e-4
    assert (policy_lp - rollout.logprobs)[mask].abs().max() <= 1e-4
    assert rollout.kl[mask].abs().max() > 1e-3

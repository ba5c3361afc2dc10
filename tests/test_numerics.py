"""NaN and ±inf never land silently: every agent refuses a non-finite loss, gradient, return or advantage with
:class:`TrainingDivergedError` (naming the iteration and the likely cause) before the optimizer steps, so the
weights in memory and the checkpoint saved before stay exactly as they were.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from textenv.agents import Agent, TrainingDivergedError, make_agent
from textenv.agents.gradient_step import check_finite, diverged
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread", "sb3_log_dir")

PROMPTS = ["the film was", "i liked the pasta at the", "the book", "this blender"]
PREFERENCES = [
    {"prompt": "the film was", "chosen": " good and the acting was great", "rejected": " bad and boring"},
    {"prompt": "this blender", "chosen": " works", "rejected": " is loud"},
]
#: name -> (env group_size, hyper-parameters giving ONE optimizer step per iteration)
AGENTS = {
    "reinforce": (1, {}),
    "remax": (1, {}),
    "ppo": (1, {"n_epochs": 1, "num_minibatches": 1}),
    "rloo": (4, {}),
    "grpo": (4, {}),
    "sft": (1, {"num_demonstrations": 8, "batch_size": 4}),
    "dpo": (1, {"preferences": PREFERENCES, "batch_size": 2}),
    "sb3-ppo": (1, {"n_epochs": 1}),
    "sb3-a2c": (1, {}),
}
NATIVE = ["dpo", "grpo", "ppo", "reinforce", "remax", "rloo", "sft"]




def length_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """A finite reward of ordinary scale."""
    return [len(c) / 10 for c in completions]


def huge_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Finite (a legal input) but absurdly scaled: ±1e30."""
    return [1e30 * (len(c) % 3 - 1) for c in completions]


def build(model_dir: Path, name: str, reward=length_reward, **overrides) -> Agent:
    group_size, hyperparameters = AGENTS[name]
    env = TextGenVectorEnv(num_envs=4, model=str(model_dir), prompts=PROMPTS, reward_model=reward, max_new_tokens=4,
                           kl_coef=0.05, group_size=group_size, autoreset_mode="disabled", device="cpu")
    return make_agent(name, env, seed=0, **{**hyperparameters, **overrides})


def weights(agent: Agent) -> dict[str, bytes]:
    """Every trained tensor, as bytes."""
    modules = {"policy": agent.policy, **agent.trainable_modules()}
    return {f"{m}.{k}": v.detach().cpu().numpy().tobytes() for m, module in modules.items()
            for k, v in module.state_dict().items()}


def optimizer_state(agent: Agent) -> list[bytes]:
    """Adam's moments and step counts, as bytes (empty before the first step)."""
    return [value.detach().cpu().numpy().tobytes() for optimizer in agent.optimizers().values()
            for state in optimizer.state_dict()["state"].values() for value in state.values()
            if isinstance(value, torch.Tensor)]


def files(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def nan_when_training(agent: Agent) -> None:
    """Make every training forward NaN (rollouts, run in eval mode, stay finite): the loss becomes NaN."""
    embeddings = agent.policy.get_input_embeddings()
    embeddings.register_forward_hook(lambda module, args, output: output * float("nan") if module.training else None)


def assert_refused_before_the_step(agent: Agent, tmp_path: Path, match: str) -> TrainingDivergedError:
    """Save a checkpoint, then learn with a checkpoint every iteration: the first iteration must raise, and the
    weights, Adam's state and every checkpoint file must be exactly as before."""
    checkpoint = tmp_path / "checkpoint"
    agent.save(checkpoint)
    saved, before, moments = files(checkpoint), weights(agent), optimizer_state(agent)
    iteration = agent.iterations + 1
    with pytest.raises(TrainingDivergedError, match=match) as error:
        agent.learn(total_timesteps=10_000, progress_bar=False, checkpoint_dir=checkpoint, checkpoint_every=1)
    assert f"{agent.name}: training diverged at iteration {iteration}:" in str(error.value)
    assert weights(agent) == before
    assert optimizer_state(agent) == moments
    assert files(checkpoint) == saved
    return error.value


# ---------------------------------------------------------------------- the error type
def test_training_diverged_error_is_a_one_line_user_facing_runtime_error():
    assert issubclass(TrainingDivergedError, RuntimeError) and TrainingDivergedError.user_facing is True

    class Trainer:
        name, iterations, learning_rate = "ppo", 6, 3e-2

    error = diverged(Trainer(), "the loss is nan", max_grad_norm=None, rewards=np.array([-2e9, 5.0]))
    assert str(error) == (
        "ppo: training diverged at iteration 7: the loss is nan. No update was applied: the weights in memory and "
        "any checkpoint saved before are as they were. Likely cause: learning_rate=0.03 is too high, or the reward "
        "scale is too large (reward-model scores of this rollout span [-2e+09, 5]). Fix: lower learning_rate "
        "(e.g. 10x), scale the rewards down (to about [-10, 10]) or normalise them, and set max_grad_norm (e.g. 1.0)."
    )
    assert "\n" not in str(error)
    with pytest.raises(TrainingDivergedError, match=r"2 of 3 advantages are non-finite \(first: nan\)"):
        check_finite(Trainer(), "advantages", np.array([1.0, np.nan, np.inf]))
    check_finite(Trainer(), "advantages", torch.tensor([1.0, -3e38]))  # finite: passes


# ---------------------------------------------------------------------- realistic divergence
@pytest.mark.parametrize("name", NATIVE)
def test_huge_learning_rate_and_rewards_diverge_with_a_clear_error(tiny_model_dir, name):
    """learning_rate=1e30 with ±1e30 rewards: stopped within a few iterations, weights as before the failing one."""
    agent = build(tiny_model_dir, name, reward=huge_reward, learning_rate=1e30)
    for _ in range(5):
        before = weights(agent)
        try:
            agent.train_iteration()
        except TrainingDivergedError as error:
            message = str(error)
            break
        agent.iterations += 1
    else:
        pytest.fail(f"{name} trained 5 iterations at learning_rate=1e30 without a TrainingDivergedError")
    assert f"training diverged at iteration {agent.iterations + 1}:" in message
    assert "non-finite" in message or "the loss is" in message or "overflows float32" in message
    assert "learning_rate=1e+30 is too high" in message and "lower learning_rate" in message
    assert weights(agent) == before


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # SB3's explained variance of ±1e30 returns overflows
def test_sb3_agent_with_huge_learning_rate_and_rewards_stops(tiny_model_dir, tmp_path):
    agent = build(tiny_model_dir, "sb3-ppo", reward=huge_reward, learning_rate=1e30)
    checkpoint = tmp_path / "checkpoint"
    agent.save(checkpoint)
    saved = files(checkpoint)
    with pytest.raises(TrainingDivergedError,
                       match=r"sb3-ppo: training diverged at iteration 1: .*learning_rate=1e\+30"):
        agent.learn(total_timesteps=10_000, progress_bar=False, checkpoint_dir=checkpoint, checkpoint_every=1)
    assert files(checkpoint) == saved


# ---------------------------------------------------------------------- each check, on every agent
@pytest.mark.parametrize("name", NATIVE)
def test_nan_loss_is_refused_before_the_step(tiny_model_dir, tmp_path, name):
    agent = build(tiny_model_dir, name)
    agent.train_iteration()  # one good update first: Adam has state, so "unchanged" means something
    agent.iterations += 1
    nan_when_training(agent)
    error = assert_refused_before_the_step(agent, tmp_path, match="the loss is nan")
    assert "iteration 2" in str(error)


@pytest.mark.parametrize("name", NATIVE)
def test_nan_gradient_is_refused_and_the_parameter_named(tiny_model_dir, tmp_path, name):
    agent = build(tiny_model_dir, name)
    parameter = agent.policy.get_submodule("transformer.h.1.mlp.c_fc").weight
    parameter.register_hook(lambda grad: grad * float("nan"))
    named = r"the gradient is non-finite \(first at policy\.transformer\.h\.1\.mlp\.c_fc\.weight\)"
    assert_refused_before_the_step(agent, tmp_path, match=named)


def test_update_that_makes_the_weights_non_finite_is_refused_and_the_checkpoint_kept(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    """An optimizer step that overflows a weight (as half precision can) stops before the next checkpoint."""
    agent = build(tiny_model_dir, "reinforce")
    checkpoint = tmp_path / "checkpoint"
    agent.save(checkpoint)
    saved = files(checkpoint)
    step = agent.optimizer.step

    def overflowing_step(*args, **kwargs):
        step(*args, **kwargs)
        with torch.no_grad():
            agent.policy.get_submodule("transformer.h.0.attn.c_attn").bias[3] = float("inf")

    monkeypatch.setattr(agent.optimizer, "step", overflowing_step)
    match = (r"iteration 1: the update made the weights non-finite \(first: policy\.transformer\.h\.0\.attn\.c_attn"
             r"\.bias\)\. The weights in memory are no longer usable; any checkpoint saved before is as it was")
    with pytest.raises(TrainingDivergedError, match=match):
        agent.learn(total_timesteps=10_000, progress_bar=False, checkpoint_dir=checkpoint, checkpoint_every=1)
    assert files(checkpoint) == saved


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's std of an inf
@pytest.mark.parametrize(
    ("name", "target", "quantity"),
    [
        ("reinforce", "textenv.agents.reinforce.Reinforce.compute_baseline", "advantages"),
        ("rloo", "textenv.agents.rloo.leave_one_out_advantages", "advantages"),
        ("grpo", "textenv.agents.grpo.group_normalized_advantages", "advantages"),
        ("ppo", "textenv.agents.ppo.PPO.token_rewards", "per-token rewards"),
        ("ppo", "textenv.agents.ppo.whiten", "advantages"),
    ],
)
def test_non_finite_rewards_or_advantages_never_reach_the_loss(tiny_model_dir, tmp_path, monkeypatch, name, target,
                                                               quantity):
    agent = build(tiny_model_dir, name)
    module_path, attribute = target.rsplit(".", 1)
    owner = __import__(module_path.rsplit(".", 1)[0], fromlist=[module_path.rsplit(".", 1)[1]])
    owner = getattr(owner, module_path.rsplit(".", 1)[1])
    original = getattr(owner, attribute)

    def poisoned(*args, **kwargs):
        values = original(*args, **kwargs)
        values = values.clone() if isinstance(values, torch.Tensor) else np.array(values, dtype=float)
        values.reshape(-1)[0] = float("inf")
        return values

    monkeypatch.setattr(owner, attribute, poisoned)
    assert_refused_before_the_step(agent, tmp_path, match=rf"\d+ of \d+ {quantity} are non-finite")


# ---------------------------------------------------------------------- SB3 agents (SB3 steps its optimizer itself)
def test_sb3_nan_gradient_is_refused_before_sb3_steps(tiny_model_dir, tmp_path):
    agent = build(tiny_model_dir, "sb3-ppo")
    agent.policy.get_submodule("transformer.h.1.mlp.c_fc").weight.register_hook(lambda grad: grad * float("nan"))
    assert_refused_before_the_step(agent, tmp_path, match="the gradient is non-finite")


def test_sb3_non_finite_advantages_are_refused_before_the_update(tiny_model_dir, tmp_path):
    agent = build(tiny_model_dir, "sb3-a2c")
    buffer = agent.model.rollout_buffer
    compute = buffer.compute_returns_and_advantage

    def poisoned(*args, **kwargs):
        compute(*args, **kwargs)
        buffer.advantages[0, 0] = np.nan

    buffer.compute_returns_and_advantage = poisoned
    assert_refused_before_the_step(agent, tmp_path, match=r"1 of \d+ advantages are non-finite")


def test_finite_training_is_unaffected(tiny_model_dir):
    """The guards are silent on ordinary training (and the learning tests of each agent keep passing)."""
    for name in ("reinforce", "sb3-a2c"):
        agent = build(tiny_model_dir, name, learning_rate=1e-3)
        agent.learn(total_timesteps=64, progress_bar=False)
        assert all(np.isfinite(np.frombuffer(b, dtype=np.float32)).all() for b in weights(agent).values())

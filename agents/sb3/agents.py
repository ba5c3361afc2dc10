"""The SB3 agents (``sb3-ppo``, ``sb3-a2c``, ``maskable-ppo``): :class:`~textenv.agents.base.Agent` subclasses that
run one SB3 rollout + update per iteration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy

from textenv.agents.base import Agent
from textenv.agents.config import AgentConfig
from textenv.agents.gradient_step import (
    WEIGHTS_DAMAGED,
    WEIGHTS_UNCHANGED,
    TrainingDivergedError,
    all_finite,
    diverged,
    first_nonfinite,
)
from textenv.agents.sb3.policy import TextGenActorCriticPolicy, TextGenMaskablePolicy
from textenv.agents.sb3.vec_env import TextGenSB3VecEnv
from textenv.config import Flag, Integer, Number, option
from textenv.validation import InputError


class _EpisodeStats(BaseCallback):
    """Collects the finished episodes' infos during one SB3 rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        self.episodes.extend(info for info in self.locals["infos"] if "episode" in info)
        return True


class _RefuseNonFiniteRollout(BaseCallback):
    """Stops SB3 before its update when the rollout's returns or advantages hold NaN or ±inf."""

    def __init__(self, agent: SB3Agent) -> None:
        super().__init__()
        self.agent = agent

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        for quantity in ("returns", "advantages"):
            bad = ~np.isfinite(getattr(buffer, quantity))
            if bad.any():
                raise diverged(self.agent, f"{int(bad.sum())} of {bad.size} {quantity} are non-finite",
                               max_grad_norm=self.model.max_grad_norm, rewards=buffer.rewards,
                               rewards_label="env rewards")


def refuse_data_parallel(agent: str) -> None:
    """SB3 trains in one process: refuse (:class:`InputError`) a run of several (torchrun with world size > 1)."""
    from textenv import distributed

    if distributed.world_size() > 1:
        raise InputError(f"agent {agent!r} is a stable-baselines3 agent, and SB3 trains in one process only; this "
                         f"run has {distributed.world_size()} (torchrun). Run it without torchrun (or with "
                         "--nproc-per-node 1), or use a native agent (reinforce, remax, ppo, rloo, grpo, sft, dpo, "
                         "lrml), which train data-parallel")


@dataclass(frozen=True)
class SB3Config(AgentConfig):
    """The hyper-parameters every SB3 on-policy agent takes (and :class:`~textenv.agents.config.AgentConfig`'s)."""

    n_steps: int | None = option(None, "env steps per row per rollout (None: max_new_tokens, so every row finishes "
                                       ">= 1 episode)", Integer(1, none_ok=True))
    gamma: float = option(1.0, "discount γ of GAE(γ, λ); 1 because the KL-penalised return is undiscounted",
                          Number(low=0.0, high=1.0))
    gae_lambda: float = option(0.95, "λ of GAE(γ, λ)", Number(low=0.0, high=1.0))
    ent_coef: float = option(0.0, "c_e, weight of the entropy bonus", Number(low=0.0))
    vf_coef: float = option(0.1, "c_v, weight of the value loss", Number(low=0.0))
    max_grad_norm: float = option(0.5, "gradient-norm clip (SB3 always clips: no None)", Number(low=0.0, low_open=True))
    normalize_advantage: bool = option(True, "standardise advantages per minibatch", Flag())

    def algorithm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the SB3 algorithm (the agent passes learning_rate, seed and n_steps itself)."""
        return {name: getattr(self, name) for name in self.names() if name not in ("learning_rate", "seed", "n_steps")}

    def venv_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the :class:`TextGenSB3VecEnv` adapter (action masks)."""
        return {}


@dataclass(frozen=True)
class SB3PPOConfig(SB3Config):
    """SB3 PPO's hyper-parameters."""

    batch_size: int | None = option(
        None, "PPO minibatch size (None and maximum: the whole rollout, n_steps × B; whole rollouts let the policy "
              "run one forward per episode instead of one per token, smaller minibatches cost up to T times more)",
        Integer(1, none_ok=True))
    n_epochs: int = option(4, "passes over each rollout (= gradient steps per rollout with the default batch_size)",
                           Integer(1))
    clip_range: float = option(0.2, "ε of the clipped ratio", Number(low=0.0, low_open=True))
    target_kl: float | None = option(None, "SB3's early stop of the epochs once the approximate KL(π_old‖π_θ) "
                                           "exceeds it (None: never)", Number(low=0.0, low_open=True, none_ok=True))


@dataclass(frozen=True)
class SB3A2CConfig(SB3Config):
    """SB3 A2C's hyper-parameters (one gradient step per rollout)."""

    use_rms_prop: bool = option(False, "RMSprop instead of Adam (SB3's default; Adam suits pretrained transformers "
                                       "better)", Flag())


@dataclass(frozen=True)
class MaskablePPOConfig(SB3PPOConfig):
    """MaskablePPO's hyper-parameters: SB3 PPO's plus the NLPO-style action mask."""

    mask_top_p: float | None = option(0.9, "sample each token among the top-p tokens of π_ref (RL4LMs' 0.9; None: "
                                           "no top-p mask)", Number(low=0.0, high=1.0, low_open=True, none_ok=True))
    mask_top_k: int | None = option(None, "sample each token among the top-k tokens of π_ref (None: no top-k mask)",
                                    Integer(1, none_ok=True))

    def algorithm_kwargs(self) -> dict[str, Any]:
        kwargs = super().algorithm_kwargs()
        return {name: value for name, value in kwargs.items() if name not in ("mask_top_p", "mask_top_k")}

    def venv_kwargs(self) -> dict[str, Any]:
        return {"mask_top_p": self.mask_top_p, "mask_top_k": self.mask_top_k}


class SB3Agent(Agent):
    """Shared machinery: wraps an SB3 on-policy algorithm built on :class:`TextGenSB3VecEnv`.

    ``train_iteration()`` calls SB3's ``learn`` for exactly one rollout (``n_steps`` per row, i.e.
    ``n_steps * B`` tokens) followed by SB3's update. Episodes continue across iterations (SB3 keeps its
    last observation). The SB3 model is :attr:`model` (its policy's ``lm`` is ``env.policy``).
    Reported: the shared scalars (rollout ones averaged over the episodes that finished during the
    rollout, and absent when none did) plus SB3's own ``train/*`` values (``approx_kl``, ``value_loss``...).
    ``learning_rate`` is constant (SB3 schedules would restart every iteration). The env must have
    ``autoreset_mode="disabled"`` and ``group_size=1``.
    """

    algorithm: ClassVar[type[OnPolicyAlgorithm]]
    data_parallel = False  # SB3 trains in one process: refused under torchrun with world size > 1
    policy_class: ClassVar[type[ActorCriticPolicy] | type[MaskableActorCriticPolicy]] = TextGenActorCriticPolicy
    config_class: ClassVar[type[SB3Config]] = SB3Config
    config: SB3Config

    def __init__(self, env: Any, config: SB3Config | None = None, **kwargs: Any) -> None:
        refuse_data_parallel(self.name)
        super().__init__(env, config, **kwargs)
        if self.config.n_steps is None:  # recorded resolved in agent.json
            self.config = dataclasses.replace(self.config, n_steps=self.env.max_new_tokens)
        algorithm_kwargs = self.config.algorithm_kwargs()
        rollout_size = self.config.n_steps * self.env.num_envs
        if "batch_size" in algorithm_kwargs:  # default: the whole rollout; at most the rollout; SB3 needs >= 2
            batch_size = algorithm_kwargs["batch_size"] or rollout_size
            algorithm_kwargs["batch_size"] = max(2, min(batch_size, rollout_size))
        self.venv = TextGenSB3VecEnv(self.env, **self.config.venv_kwargs())
        self.model = self.algorithm(
            self.policy_class, self.venv, learning_rate=self.learning_rate, n_steps=self.config.n_steps,
            policy_kwargs=self.venv.policy_kwargs(), seed=self.seed, device=self.env.device, verbose=0,
            **algorithm_kwargs,
        )
        self.model.set_logger(Logger(folder=None, output_formats=[]))  # the Agent base logs to TensorBoard
        self.policy = self.model.policy.lm
        assert self.policy is self.env.policy
        self._guard_optimizer(self.model.policy.optimizer)

    def _guard_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """SB3 steps the optimizer itself: hooks refuse a non-finite gradient before every step (nothing is
        applied) and non-finite weights after it, with :class:`TrainingDivergedError`."""
        modules = {"policy": self.model.policy}

        def parameters() -> list[torch.Tensor]:
            return [p for group in optimizer.param_groups for p in group["params"]]

        def before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if not all_finite(p.grad for p in parameters() if p.grad is not None):
                # SB3 has clipped already, which spreads a NaN norm to every gradient: no parameter is named.
                raise self._diverged("the gradient is non-finite")

        def after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if not all_finite(parameters()):
                where = first_nonfinite(modules, gradients=False)
                raise self._diverged(f"the update made the weights non-finite (first: {where})", WEIGHTS_DAMAGED)

        optimizer.register_step_pre_hook(before_step)
        optimizer.register_step_post_hook(after_step)

    def _diverged(self, problem: str, weights: str = WEIGHTS_UNCHANGED) -> TrainingDivergedError:
        """:func:`~textenv.agents.gradient_step.diverged` with this SB3 rollout's rewards and clip norm."""
        return diverged(self, problem, weights, max_grad_norm=self.model.max_grad_norm,
                        rewards=self.model.rollout_buffer.rewards, rewards_label="env rewards")

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.model.policy.optimizer}

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"value_head": self.model.policy.value_head}

    def _extra_state(self) -> dict[str, Any]:
        """SB3 rollouts cross episode boundaries, so a checkpoint holds the episodes in progress too: the adapter's
        (:meth:`TextGenSB3VecEnv.episode_state`: the env's rows, running returns/lengths, reset infos) and SB3's
        last observation and episode-start flags. SB3 has no public API for its rollout state: its ``_last_obs``,
        ``_last_episode_starts`` and ``_n_updates`` are read and restored as they are."""
        last_obs = self.model._last_obs
        if last_obs is None:
            episodes = None
        else:
            adapter = self.venv.episode_state()
            episodes = {
                "env": adapter["env"],
                "last_obs": {key: value.copy() for key, value in last_obs.items()},  # type: ignore[union-attr]
                "last_episode_starts": self.model._last_episode_starts.copy(),
                "returns": adapter["returns"],
                "lengths": adapter["lengths"],
                "reset_infos": adapter["reset_infos"],
            }
        return {"sb3_num_timesteps": self.model.num_timesteps, "sb3_n_updates": self.model._n_updates,
                "episodes": episodes}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`_extra_state`."""
        self.model.num_timesteps = state.get("sb3_num_timesteps", 0)
        self.model._n_updates = state.get("sb3_n_updates", 0)
        episodes = state.get("episodes")
        if episodes is None:  # saved before any rollout: the next learn() resets the env
            self.model._last_obs = None  # type: ignore[assignment]
            return
        self.venv.load_episode_state(episodes)  # recomputes the env's caches with the loaded weights
        self.model._last_obs = episodes["last_obs"]  # type: ignore[assignment]
        self.model._last_episode_starts = episodes["last_episode_starts"]

    def train_iteration(self) -> dict[str, float]:
        stats = _EpisodeStats()
        self.model.learn(total_timesteps=self.config.n_steps * self.env.num_envs,
                         callback=[stats, _RefuseNonFiniteRollout(self)], reset_num_timesteps=False,
                         progress_bar=False)
        sb3_values = dict(self.model.logger.name_to_value)
        for key, value in sb3_values.items():  # a backstop: a NaN loss has a NaN gradient, refused above
            if key.startswith("train/") and key.endswith("loss") and not np.isfinite(value):
                raise self._diverged(f"SB3 logged {key}={value}", WEIGHTS_DAMAGED)
        metrics: dict[str, float] = {"num_tokens": self.config.n_steps * self.env.num_envs,
                                     "rollout/kl_coef": self.env.kl_coef}
        episodes = stats.episodes
        if episodes:
            metrics["rollout/kl_coef"] = float(np.mean([e["kl_coef"] for e in episodes]))  # the β they paid
            metrics["rollout/reward"] = float(np.mean([e["episode"]["r"] for e in episodes]))
            metrics["rollout/rm_score"] = float(np.mean([e["rm_score"] for e in episodes]))
            metrics["rollout/kl"] = float(np.mean([e["episode_kl"] for e in episodes]))
            metrics["rollout/length"] = float(np.mean([e["episode"]["l"] for e in episodes]))
            if self.iterations % 10 == 0:
                self.log_samples([e["prompt"] for e in episodes], [e["text"] for e in episodes])
        if "train/entropy_loss" in sb3_values:
            metrics["train/entropy"] = -float(sb3_values["train/entropy_loss"])  # SB3 logs −mean entropy
        if "train/loss" not in sb3_values and "train/policy_loss" in sb3_values:  # A2C logs the parts only
            sb3_values["train/loss"] = (sb3_values["train/policy_loss"]
                                        + self.model.vf_coef * sb3_values["train/value_loss"]
                                        + self.model.ent_coef * sb3_values["train/entropy_loss"])
        for key, value in sb3_values.items():
            if key.startswith("train/") and key not in ("train/n_updates", "train/entropy_loss"):
                metrics[key] = float(value)
        return metrics


class SB3PPO(SB3Agent):
    """stable-baselines3 PPO with :class:`TextGenActorCriticPolicy` (the RLHF PPO of InstructGPT); hyper-parameters:
    :class:`SB3PPOConfig`."""

    name = "sb3-ppo"
    algorithm = PPO
    config_class = SB3PPOConfig


class SB3A2C(SB3Agent):
    """stable-baselines3 A2C with :class:`TextGenActorCriticPolicy`: one gradient step per rollout; hyper-parameters:
    :class:`SB3A2CConfig` (Adam by default, which suits pretrained transformers better than SB3's RMSprop)."""

    name = "sb3-a2c"
    algorithm = A2C
    config_class = SB3A2CConfig


class MaskablePPOAgent(SB3Agent):
    """sb3-contrib MaskablePPO with NLPO-style masks (Ramamurthy et al. 2022): each token is sampled among the
    top-p (and/or top-k) tokens of the frozen reference π_ref at that state (of the policy itself when
    ``kl_coef=0``, since the env then has no reference). EOS is always allowed. Hyper-parameters:
    :class:`MaskablePPOConfig`.
    """

    name = "maskable-ppo"
    algorithm = MaskablePPO
    policy_class = TextGenMaskablePolicy
    config_class = MaskablePPOConfig


__all__ = [
    "SB3A2C",
    "SB3PPO",
    "MaskablePPOAgent",
    "MaskablePPOConfig",
    "SB3A2CConfig",
    "SB3Agent",
    "SB3Config",
    "SB3PPOConfig",
]

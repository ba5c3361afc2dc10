"""The SB3 agents (``sb3-ppo``, ``sb3-a2c``, ``maskable-ppo``): :class:`~textenv.agents.base.Agent` subclasses that
run one SB3 rollout + update per iteration."""

from __future__ import annotations

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
from textenv.validation import check_choice, check_int, check_number
from textenv.vector_env import TextGenVectorEnv


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


def check_sb3_arguments(
    n_steps: int | None, gamma: float, gae_lambda: float, ent_coef: float, vf_coef: float, max_grad_norm: float,
    normalize_advantage: bool,
) -> None:
    """The arguments every SB3 on-policy agent takes; :class:`InputError` naming the first bad one."""
    if n_steps is not None:
        check_int("n_steps", n_steps, 1)
    check_number("gamma", gamma, low=0.0, high=1.0)
    check_number("gae_lambda", gae_lambda, low=0.0, high=1.0)
    check_number("ent_coef", ent_coef, low=0.0)
    check_number("vf_coef", vf_coef, low=0.0)
    check_number("max_grad_norm", max_grad_norm, low=0.0, low_open=True)  # SB3 always clips: no None
    check_choice("normalize_advantage", normalize_advantage, (True, False))


def check_sb3_ppo_arguments(batch_size: int | None, n_epochs: int, clip_range: float, target_kl: float | None) -> None:
    """The arguments of the SB3 PPO agents besides :func:`check_sb3_arguments`'."""
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    check_int("n_epochs", n_epochs, 1)
    check_number("clip_range", clip_range, low=0.0, low_open=True)
    check_number("target_kl", target_kl, low=0.0, low_open=True, none_ok=True)


class SB3Agent(Agent):
    """Shared machinery: wraps an SB3 on-policy algorithm built on :class:`TextGenSB3VecEnv`.

    ``train_iteration()`` calls SB3's ``learn`` for exactly one rollout (``n_steps`` per row, i.e.
    ``n_steps * B`` tokens) followed by SB3's update. Episodes continue across iterations (SB3 keeps its
    last observation). The SB3 model is :attr:`model` (its policy's ``lm`` is ``env.policy``).
    Reported: the shared scalars (rollout ones averaged over the episodes that finished during the
    rollout, and absent when none did) plus SB3's own ``train/*`` values (``approx_kl``, ``value_loss``...).
    ``learning_rate`` is constant (SB3 schedules would restart every iteration).
    """

    algorithm: ClassVar[type[OnPolicyAlgorithm]]
    policy_class: ClassVar[type[ActorCriticPolicy] | type[MaskableActorCriticPolicy]] = TextGenActorCriticPolicy

    def _setup_sb3(self, n_steps: int | None, algorithm_kwargs: dict[str, Any],
                   mask_top_k: int | None = None, mask_top_p: float | None = None) -> None:
        self.n_steps = self.env.max_new_tokens if n_steps is None else n_steps
        self.algorithm_kwargs = algorithm_kwargs  # as given (saved by hyperparameters())
        rollout_size = self.n_steps * self.env.num_envs
        if "batch_size" in algorithm_kwargs:  # default: the whole rollout; at most the rollout; SB3 needs >= 2
            batch_size = algorithm_kwargs["batch_size"] or rollout_size
            algorithm_kwargs = {**algorithm_kwargs, "batch_size": max(2, min(batch_size, rollout_size))}
        self.venv = TextGenSB3VecEnv(self.env, mask_top_k=mask_top_k, mask_top_p=mask_top_p)
        self.model = self.algorithm(
            self.policy_class, self.venv, learning_rate=self.learning_rate, n_steps=self.n_steps,
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

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "n_steps": self.n_steps, **self.algorithm_kwargs}

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
        self.model.learn(total_timesteps=self.n_steps * self.env.num_envs,
                         callback=[stats, _RefuseNonFiniteRollout(self)], reset_num_timesteps=False,
                         progress_bar=False)
        sb3_values = dict(self.model.logger.name_to_value)
        for key, value in sb3_values.items():  # a backstop: a NaN loss has a NaN gradient, refused above
            if key.startswith("train/") and key.endswith("loss") and not np.isfinite(value):
                raise self._diverged(f"SB3 logged {key}={value}", WEIGHTS_DAMAGED)
        metrics: dict[str, float] = {"num_tokens": self.n_steps * self.env.num_envs,
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
    """stable-baselines3 PPO with :class:`TextGenActorCriticPolicy` (the RLHF PPO of InstructGPT).

    Args:
        env: ``TextGenVectorEnv`` with ``autoreset_mode="disabled"`` and ``group_size=1``.
        learning_rate: Adam α (constant).
        n_steps: env steps per row per rollout (default ``max_new_tokens``: every row finishes ≥ 1 episode).
        batch_size: PPO minibatch size (default and maximum: the whole rollout, ``n_steps * B``). Whole
            rollouts let the policy run one forward per episode instead of one per token
            (:meth:`TextGenPolicyMixin.logits_and_values`); smaller minibatches cost up to T times more.
        n_epochs: passes over each rollout (= gradient steps per rollout with the default batch_size).
        gamma, gae_lambda: GAE(γ, λ); γ = 1 because the KL-penalised return is undiscounted.
        clip_range: ε of the clipped ratio.
        ent_coef, vf_coef: c_e and c_v of the PPO loss (``shared/rlhf-notes.md``, "PPO").
        max_grad_norm: gradient-norm clip.
        target_kl: SB3's early stop of the epochs when the approximate KL(π_old‖π_θ) exceeds it.
        normalize_advantage: standardise advantages per minibatch.
    """

    name = "sb3-ppo"
    algorithm = PPO

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        n_steps: int | None = None,
        batch_size: int | None = None,
        n_epochs: int = 4,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        ent_coef: float = 0.0,
        vf_coef: float = 0.1,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        normalize_advantage: bool = True,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_sb3_arguments(n_steps, gamma, gae_lambda, ent_coef, vf_coef, max_grad_norm, normalize_advantage)
        check_sb3_ppo_arguments(batch_size, n_epochs, clip_range, target_kl)
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        self._setup_sb3(n_steps, {
            "batch_size": batch_size,
            "n_epochs": n_epochs, "gamma": gamma, "gae_lambda": gae_lambda, "clip_range": clip_range,
            "ent_coef": ent_coef, "vf_coef": vf_coef, "max_grad_norm": max_grad_norm, "target_kl": target_kl,
            "normalize_advantage": normalize_advantage,
        })


class SB3A2C(SB3Agent):
    """stable-baselines3 A2C with :class:`TextGenActorCriticPolicy`: one gradient step per rollout.

    Args: as :class:`SB3PPO` (no epochs / minibatches / clipping); ``use_rms_prop=False`` (Adam) by default,
    which suits pretrained transformers better than SB3's RMSprop default.
    """

    name = "sb3-a2c"
    algorithm = A2C

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        n_steps: int | None = None,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        ent_coef: float = 0.0,
        vf_coef: float = 0.1,
        max_grad_norm: float = 0.5,
        normalize_advantage: bool = True,
        use_rms_prop: bool = False,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_sb3_arguments(n_steps, gamma, gae_lambda, ent_coef, vf_coef, max_grad_norm, normalize_advantage)
        check_choice("use_rms_prop", use_rms_prop, (True, False))
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        self._setup_sb3(n_steps, {
            "gamma": gamma, "gae_lambda": gae_lambda, "ent_coef": ent_coef, "vf_coef": vf_coef,
            "max_grad_norm": max_grad_norm, "normalize_advantage": normalize_advantage, "use_rms_prop": use_rms_prop,
        })


class MaskablePPOAgent(SB3Agent):
    """sb3-contrib MaskablePPO with NLPO-style masks (Ramamurthy et al. 2022): each token is sampled among the
    top-p (and/or top-k) tokens of the frozen reference π_ref at that state (of the policy itself when
    ``kl_coef=0``, since the env then has no reference). EOS is always allowed.

    Args: as :class:`SB3PPO`, plus ``mask_top_p`` (default 0.9, RL4LMs' value) and ``mask_top_k``.
    """

    name = "maskable-ppo"
    algorithm = MaskablePPO
    policy_class = TextGenMaskablePolicy

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        n_steps: int | None = None,
        batch_size: int | None = None,
        n_epochs: int = 4,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        ent_coef: float = 0.0,
        vf_coef: float = 0.1,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        normalize_advantage: bool = True,
        mask_top_p: float | None = 0.9,
        mask_top_k: int | None = None,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_sb3_arguments(n_steps, gamma, gae_lambda, ent_coef, vf_coef, max_grad_norm, normalize_advantage)
        check_sb3_ppo_arguments(batch_size, n_epochs, clip_range, target_kl)
        check_number("mask_top_p", mask_top_p, low=0.0, high=1.0, low_open=True, none_ok=True)
        if mask_top_k is not None:
            check_int("mask_top_k", mask_top_k, 1)
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        self.mask_top_p, self.mask_top_k = mask_top_p, mask_top_k
        self._setup_sb3(n_steps, {
            "batch_size": batch_size,
            "n_epochs": n_epochs, "gamma": gamma, "gae_lambda": gae_lambda, "clip_range": clip_range,
            "ent_coef": ent_coef, "vf_coef": vf_coef, "max_grad_norm": max_grad_norm, "target_kl": target_kl,
            "normalize_advantage": normalize_advantage,
        }, mask_top_k=mask_top_k, mask_top_p=mask_top_p)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "mask_top_p": self.mask_top_p, "mask_top_k": self.mask_top_k}


__all__ = ["SB3A2C", "SB3PPO", "MaskablePPOAgent", "SB3Agent"]

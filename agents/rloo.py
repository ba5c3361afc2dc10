"""RLOO: REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"), on TextGen-v0.

``shared/rlhf-notes.md``, "REINFORCE" with the leave-one-out baseline. The env samples K completions of
every prompt (``group_size`` K ≥ 2, in K consecutive rows); each completion is one action of a bandit whose
reward is the env's episode return R(x, y) = r_φ(x, y) − β·Σ_t KL_t (InstructGPT eq. 2). No critic:
the other K − 1 samples of the same prompt are the baseline (Ahmadian et al. 2024, eq. 7):

    A_i = R_i − 1/(K−1) · Σ_{j≠i} R_j
    ∇_θ J ≈ (1/N) Σ_i A_i · ∇_θ log π_θ(y_i|x),    log π_θ(y|x) = Σ_t log π_θ(y_t|x, y_<t)

The loss is written with a sequence-level ratio ρ_i = π_θ(y_i|x) / π_old(y_i|x) and PPO's clip
(Schulman et al. 2017, eq. 7), as TRL's RLOO trainer does:

    loss = (1/N) Σ_i max(−A_i·ρ_i, −A_i·clip(ρ_i, 1−ε, 1+ε))

With the default single epoch and single minibatch, ρ_i = 1 at the step, so its gradient is exactly
−(1/N) Σ_i A_i ∇ log π_θ(y_i|x): plain RLOO. ``n_epochs`` > 1 or ``num_minibatches`` > 1 reuse the batch,
and the clip keeps those later steps close to π_old.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from textenv.agents.base import Agent
from textenv.agents.gradient_step import check_finite, gradient_step
from textenv.rollout import collect_rollout, masked_mean, score_rollout
from textenv.validation import InputError, check_choice, check_int, check_number
from textenv.vector_env import TextGenVectorEnv


def leave_one_out_advantages(returns: np.ndarray, group_size: int) -> np.ndarray:
    """A_i = R_i − mean_{j≠i} R_j within each group of ``group_size`` consecutive rows: ``(B,) -> (B,)``."""
    groups = returns.reshape(-1, group_size)
    baseline = (groups.sum(axis=1, keepdims=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


class RLOO(Agent):
    """REINFORCE with a leave-one-out baseline over K samples per prompt; no value function.

    Args:
        env: a ``TextGenVectorEnv`` with ``autoreset_mode="disabled"`` and ``group_size`` K ≥ 2.
        learning_rate: Adam α.
        n_epochs: passes over each rollout (1: on-policy RLOO).
        num_minibatches: minibatches (of episodes) per epoch; at most ``env.num_envs``.
        clip_range: ε of the sequence-level ratio clip (only matters after the first step on a batch).
        normalize_advantages: divide A by its batch standard deviation (a positive scale: the direction of
            the gradient is unchanged, the step size no longer depends on the reward's units).
        max_grad_norm: gradient-norm clip (``None``: no clipping).
        seed, tensorboard_log, verbose: see :class:`~textenv.agents.base.Agent`.
    """

    name = "rloo"
    default_group_size = 4  # K samples per prompt when the CLI builds the env

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        n_epochs: int = 1,
        num_minibatches: int = 1,
        clip_range: float = 0.2,
        normalize_advantages: bool = True,
        max_grad_norm: float | None = 1.0,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_int("n_epochs", n_epochs, 1)
        check_int("num_minibatches", num_minibatches, 1)
        check_number("clip_range", clip_range, low=0.0, low_open=True)
        check_choice("normalize_advantages", normalize_advantages, (True, False))
        check_number("max_grad_norm", max_grad_norm, low=0.0, low_open=True, none_ok=True)
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        env = self.env  # the TextGenVectorEnv itself, also when a Gymnasium wrapper around it was passed
        if env.autoreset_mode != "disabled":
            raise InputError("env: RLOO plays synchronised episodes; build the env with autoreset_mode='disabled'")
        if env.group_size < 2:
            raise InputError(
                f"env.group_size={env.group_size}: RLOO needs K >= 2 samples per prompt for its leave-one-out "
                "baseline; build the env with group_size=K (e.g. 4) and num_envs a multiple of K"
            )
        if num_minibatches > env.num_envs:
            raise InputError(f"num_minibatches={num_minibatches} must be <= env.num_envs={env.num_envs} (episodes)")
        self.n_epochs = int(n_epochs)
        self.num_minibatches = int(num_minibatches)
        self.clip_range = float(clip_range)
        self.normalize_advantages = bool(normalize_advantages)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.learning_rate)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "n_epochs": self.n_epochs,
            "num_minibatches": self.num_minibatches,
            "clip_range": self.clip_range,
            "normalize_advantages": self.normalize_advantages,
            "max_grad_norm": self.max_grad_norm,
        }

    def train_iteration(self) -> dict[str, float]:
        rollout = collect_rollout(self.env, self.generator)
        mask = rollout.action_mask  # (B, T)
        check_finite(self, "returns", rollout.returns, self.max_grad_norm, rollout.rm_score)
        advantages = leave_one_out_advantages(rollout.returns, self.env.group_size)
        if self.normalize_advantages and advantages.std() > 0:
            advantages = advantages / (advantages.std() + 1e-8)
        check_finite(self, "advantages", advantages, self.max_grad_norm, rollout.rm_score)
        advantages_t = torch.as_tensor(advantages, dtype=torch.float32, device=mask.device)
        old_sequence_logprob = (rollout.logprobs * mask).sum(dim=1)  # log π_old(y|x), sampling time

        self.policy.train()
        stats: dict[str, list[float]] = {k: [] for k in ("loss", "entropy", "clip_fraction", "approx_kl")}
        for _ in range(self.n_epochs):
            order = torch.randperm(mask.shape[0], generator=self.generator, device=self.generator.device)
            for idx in order.to(mask.device).chunk(self.num_minibatches):
                scores = score_rollout(self.policy, rollout, idx)  # ONE forward per episode of the minibatch
                m = mask[idx]
                logprobs = scores.logprobs
                log_ratio = logprobs.sum(dim=1) - old_sequence_logprob[idx]
                ratio = log_ratio.exp()  # ρ_i = π_θ(y_i|x) / π_old(y_i|x)
                adv = advantages_t[idx]
                loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.clip_range, 1 + self.clip_range)).mean()
                gradient_step(self, loss, self.optimizer, {"policy": self.policy}, self.max_grad_norm, rollout.rm_score)
                with torch.no_grad():
                    token_log_ratio = logprobs - rollout.logprobs[idx] * m
                    stats["loss"].append(float(loss.detach()))
                    stats["entropy"].append(float(masked_mean(scores.entropy, m)))
                    stats["clip_fraction"].append(float(((ratio - 1).abs() > self.clip_range).float().mean()))
                    stats["approx_kl"].append(float(masked_mean(token_log_ratio.exp() - 1 - token_log_ratio, m)))
        self.policy.eval()

        if self.iterations % 10 == 0:
            self.log_samples(rollout.prompts, rollout.texts)
        return {
            **rollout.metrics(),
            **{f"train/{key}": float(np.mean(values)) for key, values in stats.items()},
        }

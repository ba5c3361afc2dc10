"""REINFORCE (Williams 1992) with a baseline, on TextGen-v0.

``shared/rlhf-notes.md``, "REINFORCE":
    ∇_θ J ≈ (1/N) Σ_i (R(x^i, y^i) − b^i) · ∇_θ log π_θ(y^i|x^i),   log π_θ(y|x) = Σ_t log π_θ(y_t|x, y_<t)
R is the env's episode return (RM score − β·KL, the KL-penalised reward of InstructGPT eq. 2). The
baseline b leaves the gradient unbiased and cuts its variance:
    "running": an exponential moving average of past returns;
    "batch":   the mean return of the current batch;
    "loo":     leave-one-out mean over the K samples of the same prompt (needs the env's group_size K ≥ 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from textenv.agents.base import Agent
from textenv.agents.gradient_step import check_finite, gradient_step
from textenv.rollout import collect_rollout, masked_mean, score_rollout
from textenv.validation import InputError, check_choice, check_number
from textenv.vector_env import TextGenVectorEnv

BASELINES = ("running", "batch", "loo", "none")


class Reinforce(Agent):
    """Monte-Carlo policy gradient on whole completions.

    Args:
        env: a ``TextGenVectorEnv`` with ``autoreset_mode="disabled"``; one rollout = ``env.num_envs`` episodes.
        learning_rate: Adam α.
        baseline: one of ``"running"``, ``"batch"``, ``"loo"``, ``"none"``.
        baseline_decay: EMA decay of the running baseline, in [0, 1).
        normalize_advantages: divide R − b by the batch standard deviation.
        max_grad_norm: gradient-norm clip (``None``: no clipping).
        temperature: sampling temperature; must be 1 to stay on-policy (kept for evaluation ablations).
    """

    name = "reinforce"

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        baseline: str = "running",
        baseline_decay: float = 0.9,
        normalize_advantages: bool = True,
        max_grad_norm: float | None = 1.0,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_choice("baseline", baseline, BASELINES)
        check_number("baseline_decay", baseline_decay, low=0.0, high=1.0, high_open=True)
        check_choice("normalize_advantages", normalize_advantages, (True, False))
        check_number("max_grad_norm", max_grad_norm, low=0.0, low_open=True, none_ok=True)
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        env = self.env  # the TextGenVectorEnv itself, also when a Gymnasium wrapper around it was passed
        if baseline == "loo" and env.group_size < 2:
            raise InputError("baseline='loo' needs K ≥ 2 samples per prompt: build the env with group_size >= 2")
        self.baseline = baseline
        self.baseline_decay = baseline_decay
        self.normalize_advantages = normalize_advantages
        self.max_grad_norm = max_grad_norm
        self.running_baseline: float | None = None
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=learning_rate)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "baseline": self.baseline,
            "baseline_decay": self.baseline_decay,
            "normalize_advantages": self.normalize_advantages,
            "max_grad_norm": self.max_grad_norm,
        }

    def _extra_state(self) -> dict[str, Any]:
        return {"running_baseline": self.running_baseline}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.running_baseline = state.get("running_baseline")

    def compute_baseline(self, returns: np.ndarray) -> np.ndarray:
        """b^i for every episode, shape ``(B,)`` (uses returns from before this batch for "running")."""
        if self.baseline == "none":
            return np.zeros_like(returns)
        if self.baseline == "batch":
            return np.full_like(returns, returns.mean())
        if self.baseline == "loo":
            k = self.env.group_size
            groups = returns.reshape(-1, k)
            return ((groups.sum(axis=1, keepdims=True) - groups) / (k - 1)).reshape(-1)
        previous = returns.mean() if self.running_baseline is None else self.running_baseline
        self.running_baseline = self.baseline_decay * previous + (1 - self.baseline_decay) * float(returns.mean())
        return np.full_like(returns, previous)

    def train_iteration(self) -> dict[str, float]:
        rollout = collect_rollout(self.env, self.generator)
        check_finite(self, "returns", rollout.returns, self.max_grad_norm, rollout.rm_score)
        advantages = rollout.returns - self.compute_baseline(rollout.returns)
        if self.normalize_advantages and len(advantages) > 1:
            advantages = advantages / (advantages.std() + 1e-8)
        check_finite(self, "advantages", advantages, self.max_grad_norm, rollout.rm_score)
        advantages_t = torch.as_tensor(advantages, dtype=torch.float32, device=self.env.device)

        self.policy.train()
        scores = score_rollout(self.policy, rollout)  # ONE forward per episode
        sequence_logprob = scores.logprobs.sum(dim=1)  # log π_θ(y|x) = Σ_t log π_θ(y_t|s_t)
        loss = -(advantages_t * sequence_logprob).mean()  # −(1/N) Σ_i (R_i − b_i) log π_θ(y^i|x^i)
        gradient_step(self, loss, self.optimizer, {"policy": self.policy}, self.max_grad_norm, rollout.rm_score)
        self.policy.eval()

        if self.iterations % 10 == 0:
            self.log_samples(rollout.prompts, rollout.texts)
        mean_entropy = masked_mean(scores.entropy, rollout.action_mask)
        return {
            **rollout.metrics(),
            "train/loss": float(loss.detach()),
            "train/entropy": float(mean_entropy),
        }

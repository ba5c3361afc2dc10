"""REINFORCE (Williams 1992) with a baseline, on TextGen-v0.

docs/rl-framing.md#reinforce:
    ∇_θ J ≈ (1/N) Σ_i (R(x^i, y^i) − b^i) · ∇_θ log π_θ(y^i|x^i),   log π_θ(y|x) = Σ_t log π_θ(y_t|x, y_<t)
R is the env's episode return (RM score − β·KL, the KL-penalised reward of InstructGPT eq. 2). The
baseline b leaves the gradient unbiased and cuts its variance:
    "running": an exponential moving average of past returns;
    "batch":   the mean return of the current batch;
    "loo":     leave-one-out mean over the K samples of the same prompt (needs the env's group_size K ≥ 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from textenv import distributed
from textenv.agents.base import Agent
from textenv.agents.config import NativeConfig
from textenv.agents.gradient_step import check_finite, gradient_step, micro_batches, share
from textenv.config import Choice, Flag, Number, option
from textenv.rollout import collect_rollout, masked_mean
from textenv.scoring import score_rollout
from textenv.validation import InputError

BASELINES = ("running", "batch", "loo", "none")


@dataclass(frozen=True)
class ReinforceConfig(NativeConfig):
    """REINFORCE's hyper-parameters (and those of :class:`~textenv.agents.config.AgentConfig`)."""

    baseline: str = option("running", "b: 'running' (EMA of past returns), 'batch' (batch mean), 'loo' "
                                      "(leave-one-out over the env's group_size >= 2 samples per prompt) or 'none'",
                           Choice(BASELINES))
    baseline_decay: float = option(0.9, "EMA decay of the running baseline, in [0, 1)",
                                   Number(low=0.0, high=1.0, high_open=True))
    normalize_advantages: bool = option(True, "divide R − b by the batch standard deviation", Flag())

    def check_env(self, env: Any) -> None:
        if self.baseline == "loo" and env.group_size < 2:
            raise InputError("baseline='loo' needs K ≥ 2 samples per prompt: build the env with group_size >= 2")


class Reinforce(Agent):
    """Monte-Carlo policy gradient on whole completions.

    The env must have ``autoreset_mode="disabled"``; one rollout = ``env.num_envs`` episodes. Hyper-parameters:
    :class:`ReinforceConfig`. The sampling temperature stays 1, so the rollouts are on-policy.
    """

    name = "reinforce"
    config_class = ReinforceConfig
    config: ReinforceConfig

    def __init__(self, env: Any, config: ReinforceConfig | None = None, **kwargs: Any) -> None:
        super().__init__(env, config, **kwargs)
        self.running_baseline: float | None = None
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.learning_rate)

    def _extra_state(self) -> dict[str, Any]:
        return {"running_baseline": self.running_baseline}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.running_baseline = state.get("running_baseline")

    def compute_baseline(self, returns: np.ndarray) -> np.ndarray:
        """b^i for every episode, shape ``(B,)`` (uses returns from before this batch for "running")."""
        baseline, decay = self.config.baseline, self.config.baseline_decay
        if baseline == "none":
            return np.zeros_like(returns)
        if baseline == "batch":
            return np.full_like(returns, returns.mean())
        if baseline == "loo":
            k = self.env.group_size
            groups = returns.reshape(-1, k)
            return ((groups.sum(axis=1, keepdims=True) - groups) / (k - 1)).reshape(-1)
        batch_mean = distributed.mean_float(float(returns.mean()))  # torchrun: the mean over all ranks' episodes
        previous = batch_mean if self.running_baseline is None else self.running_baseline
        self.running_baseline = decay * previous + (1 - decay) * batch_mean
        return np.full_like(returns, previous)

    def train_iteration(self) -> dict[str, float]:
        rollout = collect_rollout(self.env, self.generator, update_kl_controller=True)
        check_finite(self, "returns", rollout.returns, self.config.max_grad_norm, rollout.rm_score)
        advantages = rollout.returns - self.compute_baseline(rollout.returns)
        if self.config.normalize_advantages and len(advantages) > 1:
            advantages = advantages / (advantages.std() + 1e-8)
        check_finite(self, "advantages", advantages, self.config.max_grad_norm, rollout.rm_score)
        advantages_t = torch.as_tensor(advantages, dtype=torch.float32, device=self.env.device)

        self.policy.train()
        n = len(advantages_t)
        entropies: list[torch.Tensor] = []

        def part(rows: torch.Tensor) -> torch.Tensor:
            scores = score_rollout(self.policy, rollout, None if len(rows) == n else rows)  # ONE forward per episode
            entropies.append(scores.entropy)
            sequence_logprob = scores.logprobs.sum(dim=1)  # log π_θ(y|x) = Σ_t log π_θ(y_t|s_t)
            loss = -(advantages_t[rows] * sequence_logprob).mean()  # −(1/N) Σ_i (R_i − b_i) log π_θ(y^i|x^i)
            return share(loss, len(rows), n)

        rows = torch.arange(n, device=advantages_t.device)
        loss = gradient_step(self, [lambda r=r: part(r) for r in micro_batches(rows, self.config.micro_batch_size)],
                             self.optimizer, {"policy": self.policy}, self.config.max_grad_norm, rollout.rm_score)
        self.policy.eval()

        if self.iterations % 10 == 0:
            self.log_samples(rollout.prompts, rollout.texts)
        self.log_lens(rollout, advantage=advantages)  # A_i = R_i − b_i (normalised if asked)
        mean_entropy = masked_mean(torch.cat(entropies), rollout.action_mask)
        return {
            **rollout.metrics(),
            "train/loss": float(loss.detach()),
            "train/entropy": float(mean_entropy),
        }

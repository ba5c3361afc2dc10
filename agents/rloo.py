"""RLOO: REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"), on TextGen-v0.

REINFORCE with the leave-one-out baseline (docs/rl-framing.md#rloo). The env samples K completions of
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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from textenv.agents.base import Agent
from textenv.agents.config import (
    NativeConfig,
    check_minibatches,
    require_groups,
    require_synchronised_episodes,
)
from textenv.agents.gradient_step import check_finite, gradient_step, micro_batches, share
from textenv.config import Flag, Integer, Number, option
from textenv.rollout import Rollout, collect_rollout, masked_mean
from textenv.scoring import score_rollout


def leave_one_out_advantages(returns: np.ndarray, group_size: int) -> np.ndarray:
    """A_i = R_i − mean_{j≠i} R_j within each group of ``group_size`` consecutive rows: ``(B,) -> (B,)``."""
    groups = returns.reshape(-1, group_size)
    baseline = (groups.sum(axis=1, keepdims=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


@dataclass(frozen=True)
class RLOOConfig(NativeConfig):
    """RLOO's hyper-parameters (and those of :class:`~textenv.agents.config.AgentConfig`)."""

    n_epochs: int = option(1, "passes over each rollout (1: on-policy RLOO)", Integer(1))
    num_minibatches: int = option(1, "minibatches (of episodes) per epoch; at most env.num_envs", Integer(1))
    clip_range: float = option(0.2, "ε of the sequence-level ratio clip (only matters after the first step on a "
                                    "batch)", Number(low=0.0, low_open=True))
    normalize_advantages: bool = option(True, "divide A by its batch standard deviation (a positive scale: the "
                                              "gradient's direction is unchanged, its size no longer depends on the "
                                              "reward's units)", Flag())

    def check_env(self, env: Any) -> None:
        require_synchronised_episodes(env, "RLOO")
        require_groups(env, "RLOO", "needs K >= 2 samples per prompt for its leave-one-out baseline")
        check_minibatches(self.num_minibatches, env)


class RLOO(Agent):
    """REINFORCE with a leave-one-out baseline over K samples per prompt; no value function.

    The env must have ``autoreset_mode="disabled"`` and ``group_size`` K ≥ 2. Hyper-parameters: :class:`RLOOConfig`.
    """

    name = "rloo"
    config_class = RLOOConfig
    config: RLOOConfig
    default_group_size = 4  # K samples per prompt when the CLI builds the env

    def __init__(self, env: Any, config: RLOOConfig | None = None, **kwargs: Any) -> None:
        super().__init__(env, config, **kwargs)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.learning_rate)

    def train_iteration(self) -> dict[str, float]:
        c = self.config
        rollout = collect_rollout(self.env, self.generator, update_kl_controller=True)
        mask = rollout.action_mask  # (B, T)
        check_finite(self, "returns", rollout.returns, c.max_grad_norm, rollout.rm_score)
        advantages = leave_one_out_advantages(rollout.returns, self.env.group_size)
        if c.normalize_advantages and advantages.std() > 0:
            advantages = advantages / (advantages.std() + 1e-8)
        check_finite(self, "advantages", advantages, c.max_grad_norm, rollout.rm_score)
        advantages_t = torch.as_tensor(advantages, dtype=torch.float32, device=mask.device)
        old_sequence_logprob = (rollout.logprobs * mask).sum(dim=1)  # log π_old(y|x), sampling time

        self.policy.train()
        stats: dict[str, list[float]] = {k: [] for k in ("loss", "entropy", "clip_fraction", "approx_kl")}
        for _ in range(c.n_epochs):
            order = torch.randperm(mask.shape[0], generator=self.generator, device=self.generator.device)
            for idx in order.to(mask.device).chunk(c.num_minibatches):
                loss, logprobs, entropies, ratio = self._minibatch_step(rollout, advantages_t, old_sequence_logprob, idx)
                m = mask[idx]
                with torch.no_grad():
                    token_log_ratio = logprobs - rollout.logprobs[idx] * m
                    stats["loss"].append(float(loss.detach()))
                    stats["entropy"].append(float(masked_mean(entropies, m)))
                    stats["clip_fraction"].append(float(((ratio - 1).abs() > c.clip_range).float().mean()))
                    stats["approx_kl"].append(float(masked_mean(token_log_ratio.exp() - 1 - token_log_ratio, m)))
        self.policy.eval()

        if self.iterations % 10 == 0:
            self.log_samples(rollout.prompts, rollout.texts)
        self.log_lens(rollout, advantage=advantages)  # leave-one-out A_i
        return {
            **rollout.metrics(),
            **{f"train/{key}": float(np.mean(values)) for key, values in stats.items()},
        }

    def _minibatch_step(self, rollout: Rollout, advantages: torch.Tensor, old_sequence_logprob: torch.Tensor,
                        idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One guarded step on the clipped loss of the episodes ``idx`` (one forward per micro-batch of
        ``micro_batch_size`` episodes, gradients accumulated); returns the loss and, detached, log π_θ and the
        entropy ``(N, T)`` and the ratio ρ ``(N,)`` of the minibatch."""
        c = self.config
        outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # per micro-batch, detached

        def part(rows: torch.Tensor) -> torch.Tensor:
            scores = score_rollout(self.policy, rollout, rows)  # ONE forward per episode of the micro-batch
            log_ratio = scores.logprobs.sum(dim=1) - old_sequence_logprob[rows]
            ratio = log_ratio.exp()  # ρ_i = π_θ(y_i|x) / π_old(y_i|x)
            adv = advantages[rows]
            loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - c.clip_range, 1 + c.clip_range)).mean()
            outputs.append((scores.logprobs.detach(), scores.entropy.detach(), ratio.detach()))
            return share(loss, len(rows), len(idx))

        loss = gradient_step(self, [lambda r=r: part(r) for r in micro_batches(idx, c.micro_batch_size)],
                             self.optimizer, {"policy": self.policy}, c.max_grad_norm, rollout.rm_score)
        logprobs, entropies, ratio = (torch.cat(pieces) for pieces in zip(*outputs))
        return loss, logprobs, entropies, ratio

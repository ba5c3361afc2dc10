"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1), on TextGen-v0.

No critic: the env samples a group of G completions per prompt (``group_size`` G ≥ 2, consecutive rows)
and each completion's advantage is its reward standardised within the group (outcome supervision),
broadcast to all of its tokens:

    Â_{i,t} = (R_i − mean(R_1..R_G)) / (std(R_1..R_G) + eps)

The objective is PPO's clipped surrogate per token (Schulman et al. 2017, eq. 7), averaged over each
completion's tokens and then over the completions (DeepSeekMath eq. 3):

    J = (1/G) Σ_i (1/|y_i|) Σ_t [ min(ρ_{i,t}·Â_{i,t}, clip(ρ_{i,t}, 1−ε, 1+ε)·Â_{i,t}) − β·D_{i,t} ]
    ρ_{i,t} = π_θ(y_{i,t}|x, y_{i,<t}) / π_old(y_{i,t}|x, y_{i,<t})
    D_{i,t} = π_ref/π_θ − log(π_ref/π_θ) − 1      (the k3 estimator of KL(π_θ‖π_ref), DeepSeekMath eq. 4)

Where the KL is paid (no double counting):
- ``beta=0`` (default): R_i is the env's return r_φ − β_env·Σ_t KL_t (InstructGPT eq. 2), so the KL penalty
  is the env's, in the reward, as for every other textenv agent; the loss has no KL term.
- ``beta>0``: DeepSeekMath's form: R_i = r_φ(x, y_i) alone (the env's KL penalty is ignored) and β·D_{i,t}
  is added to the loss against π_ref (the env's reference, or a frozen copy of the policy taken when the
  agent is built if the env has none, i.e. ``kl_coef=0``).
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
from textenv.config import Integer, Number, option
from textenv.models.loading import frozen_copy
from textenv.rollout import Rollout, collect_rollout, masked_mean
from textenv.scoring import score_rollout


def group_normalized_advantages(rewards: np.ndarray, group_size: int, eps: float = 1e-4) -> np.ndarray:
    """(R_i − mean_group) / (std_group + eps) within groups of ``group_size`` consecutive rows: ``(B,) -> (B,)``.

    std is the sample standard deviation (ddof=1), as in TRL; a group of equal rewards gets advantage 0.
    """
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    return (centred / (groups.std(axis=1, ddof=1, keepdims=True) + eps)).reshape(-1)


@dataclass(frozen=True)
class GRPOConfig(NativeConfig):
    """GRPO's hyper-parameters (and those of :class:`~textenv.agents.config.AgentConfig`)."""

    n_epochs: int = option(1, "passes over each rollout (DeepSeekMath's μ; 1 is on-policy)", Integer(1))
    num_minibatches: int = option(1, "minibatches (of episodes) per epoch; at most env.num_envs", Integer(1))
    clip_range: float = option(0.2, "ε of the clipped surrogate", Number(low=0.0, low_open=True))
    beta: float = option(0.0, "weight of the k3 KL(π_θ‖π_ref) loss term (0: the env's KL-penalised reward is used "
                              "instead; see the module docstring)", Number(low=0.0))
    eps: float = option(1e-4, "added to the group standard deviation", Number(low=0.0, low_open=True))

    def check_env(self, env: Any) -> None:
        require_synchronised_episodes(env, "GRPO")
        require_groups(env, "GRPO", "normalises rewards within a group of K >= 2 completions per prompt")
        check_minibatches(self.num_minibatches, env)


class GRPO(Agent):
    """Group-relative advantages + per-token clipped surrogate; no value function.

    The env must have ``autoreset_mode="disabled"`` and ``group_size`` G ≥ 2. Hyper-parameters: :class:`GRPOConfig`.
    """

    name = "grpo"
    config_class = GRPOConfig
    config: GRPOConfig
    default_group_size = 4  # K samples per prompt when the CLI builds the env

    def __init__(self, env: Any, config: GRPOConfig | None = None, **kwargs: Any) -> None:
        super().__init__(env, config, **kwargs)
        self.reference = None
        if self.config.beta > 0:
            self.reference = self.env.reference if self.env.reference is not None else frozen_copy(self.policy)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.learning_rate)

    def train_iteration(self) -> dict[str, float]:
        c = self.config
        rollout = collect_rollout(self.env, self.generator, update_kl_controller=True)
        # R_i: the env's KL-penalised return, or r_φ alone when the KL is paid in the loss (beta > 0).
        rewards = rollout.rm_score if c.beta > 0 else rollout.returns
        check_finite(self, "rewards" if c.beta > 0 else "returns", rewards, c.max_grad_norm, rollout.rm_score)
        advantages = group_normalized_advantages(rewards, self.env.group_size, c.eps)
        check_finite(self, "advantages", advantages, c.max_grad_norm, rollout.rm_score)
        advantages_t = torch.as_tensor(advantages, dtype=torch.float32, device=rollout.action_mask.device)
        ref_logprobs = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logprobs = score_rollout(self.reference, rollout).logprobs

        self.policy.train()
        stats: dict[str, list[float]] = {k: [] for k in ("loss", "entropy", "clip_fraction", "approx_kl", "ref_kl")}
        for _ in range(c.n_epochs):
            order = torch.randperm(len(advantages_t), generator=self.generator, device=self.generator.device)
            for idx in order.to(advantages_t.device).chunk(c.num_minibatches):
                for key, value in self._minibatch_step(rollout, advantages_t, ref_logprobs, idx).items():
                    stats[key].append(value)
        self.policy.eval()

        if self.iterations % 10 == 0:
            self.log_samples(rollout.prompts, rollout.texts)
        self.log_lens(rollout, advantage=advantages)  # group-normalised Â_i, every token of completion i
        return {
            **rollout.metrics(),
            **{f"train/{key}": float(np.mean(values)) for key, values in stats.items() if values},
        }

    def _minibatch_step(self, rollout: Rollout, advantages: torch.Tensor, ref_logprobs: torch.Tensor | None,
                        idx: torch.Tensor) -> dict[str, float]:
        """ONE forward of the completions ``idx`` and one guarded step on DeepSeekMath eq. 3 (negated); returns the
        minibatch's statistics."""
        c = self.config
        outputs: list[tuple[torch.Tensor, ...]] = []  # per micro-batch, detached: entropy, ratio, log ratio, KL

        def part(rows: torch.Tensor) -> torch.Tensor:
            scores = score_rollout(self.policy, rollout, rows)  # ONE forward per episode of the micro-batch
            m = rollout.action_mask[rows]
            logprobs = scores.logprobs
            log_ratio = (logprobs - rollout.logprobs[rows]) * m  # log π_old(y_t|s_t) at sampling time
            ratio = log_ratio.exp()  # ρ_{i,t}
            adv = advantages[rows, None]  # Â_{i,t} = Â_i for every token t of completion i
            per_token = torch.max(-adv * ratio, -adv * ratio.clamp(1 - c.clip_range, 1 + c.clip_range))
            ref_kl = torch.zeros_like(per_token)
            if ref_logprobs is not None:  # + β·D_{i,t}, the k3 KL estimator (DeepSeekMath eq. 4)
                log_rho = ref_logprobs[rows] - logprobs
                ref_kl = torch.expm1(log_rho) - log_rho
                per_token = per_token + c.beta * ref_kl
            lengths = m.sum(dim=1).clamp(min=1)
            loss = ((per_token * m).sum(dim=1) / lengths).mean()  # (1/G) Σ_i (1/|y_i|) Σ_t
            outputs.append((scores.entropy.detach(), ratio.detach(), log_ratio.detach(), ref_kl.detach()))
            return share(loss, len(rows), len(idx))

        loss = gradient_step(self, [lambda r=r: part(r) for r in micro_batches(idx, c.micro_batch_size)],
                             self.optimizer, {"policy": self.policy}, c.max_grad_norm, rollout.rm_score)
        m = rollout.action_mask[idx]
        entropies, ratio, log_ratio, ref_kl = (torch.cat(pieces) for pieces in zip(*outputs))
        stats = {}
        with torch.no_grad():
            if ref_logprobs is not None:
                stats["ref_kl"] = float(masked_mean(ref_kl, m))
            stats["loss"] = float(loss)
            stats["entropy"] = float(masked_mean(entropies, m))
            stats["clip_fraction"] = float(masked_mean(((ratio - 1).abs() > c.clip_range).float(), m))
            stats["approx_kl"] = float(masked_mean(ratio - 1 - log_ratio, m))
        return stats

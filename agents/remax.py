"""ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning
Large Language Models"): REINFORCE whose baseline is the return of the policy's own greedy completion.

For every prompt x^i the agent samples y^i ~ π_θ(·|x^i) and also decodes the greedy ȳ^i (argmax token by token).
The greedy return is the baseline, so no critic and no extra samples per prompt are needed:

    ∇_θ J ≈ (1/N) Σ_i (R(x^i, y^i) − R(x^i, ȳ^i)) · ∇_θ log π_θ(y^i|x^i),   log π_θ(y|x) = Σ_t log π_θ(y_t|x, y_<t)

R is the env's KL-penalised return r_φ(x, y) − β·KL (InstructGPT eq. 2; docs/rl-framing.md#remax). ȳ depends only
on x and θ, not on y, so the estimator stays unbiased. The greedy rollout is a baseline, not experience: it
runs without gradients and with ``update_kl_controller=False``, so it never moves an adaptive β, and its tokens
count towards ``num_timesteps`` (the agent generated them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from textenv.agents.base import Agent
from textenv.agents.config import NativeConfig, require_synchronised_episodes
from textenv.agents.gradient_step import check_finite, gradient_step, micro_batches, share
from textenv.config import Flag, option
from textenv.rollout import collect_rollout, masked_mean
from textenv.scoring import score_rollout


@dataclass(frozen=True)
class ReMaxConfig(NativeConfig):
    """ReMax's hyper-parameters (and those of :class:`~textenv.agents.config.AgentConfig`)."""

    normalize_advantages: bool = option(False, "divide R(y) − R(ȳ) by its batch standard deviation", Flag())

    def check_env(self, env: Any) -> None:
        require_synchronised_episodes(env, "remax")


class ReMax(Agent):
    """REINFORCE with the greedy completion's return as the baseline (module docstring).

    One iteration = one sampled rollout of ``env.num_envs`` episodes + one greedy rollout on the same prompts
    + one gradient step. Hyper-parameters: :class:`ReMaxConfig`.
    """

    name = "remax"
    config_class = ReMaxConfig
    config: ReMaxConfig

    def __init__(self, env: Any, config: ReMaxConfig | None = None, **kwargs: Any) -> None:
        super().__init__(env, config, **kwargs)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.learning_rate)

    @torch.no_grad()
    def greedy_returns(self, prompts: list[str]) -> tuple[torch.Tensor, int]:
        """R(x, ȳ) of the greedy completion of each prompt, ``(B,)``, and the tokens that took."""
        greedy = collect_rollout(self.env, prompts=prompts, temperature=0.0, update_kl_controller=False)
        return torch.as_tensor(greedy.returns, dtype=torch.float32, device=self.env.device), greedy.num_tokens

    def train_iteration(self) -> dict[str, float]:
        rollout = collect_rollout(self.env, self.generator, update_kl_controller=True)
        check_finite(self, "returns", rollout.returns, self.config.max_grad_norm, rollout.rm_score)
        baseline, greedy_tokens = self.greedy_returns(rollout.prompts)
        returns = torch.as_tensor(rollout.returns, dtype=torch.float32, device=self.env.device)
        advantages = returns - baseline  # R(x, y) − R(x, ȳ)
        if self.config.normalize_advantages and len(advantages) > 1:
            advantages = advantages / (advantages.std() + 1e-8)
        check_finite(self, "advantages", advantages, self.config.max_grad_norm, rollout.rm_score)

        self.policy.train()
        n = len(advantages)
        entropies: list[torch.Tensor] = []

        def part(rows: torch.Tensor) -> torch.Tensor:
            scores = score_rollout(self.policy, rollout, None if len(rows) == n else rows)  # one forward
            entropies.append(scores.entropy)
            sequence_logprob = scores.logprobs.sum(dim=1)  # log π_θ(y|x) = Σ_t log π_θ(y_t|s_t)
            loss = -(advantages[rows] * sequence_logprob).mean()  # −(1/N) Σ_i (R(y^i) − R(ȳ^i)) log π_θ(y^i|x^i)
            return share(loss, len(rows), n)

        rows = torch.arange(n, device=advantages.device)
        loss = gradient_step(self, [lambda r=r: part(r) for r in micro_batches(rows, self.config.micro_batch_size)],
                             self.optimizer, {"policy": self.policy}, self.config.max_grad_norm, rollout.rm_score)
        self.policy.eval()

        if self.iterations % 10 == 0:
            self.log_samples(rollout.prompts, rollout.texts)
        self.log_lens(rollout, advantage=advantages, greedy_return=baseline)  # A_i = R(y^i) − R(ȳ^i)
        metrics = rollout.metrics()
        metrics["num_tokens"] += greedy_tokens
        return {**metrics, "rollout/greedy_reward": float(baseline.mean()), "train/loss": float(loss.detach()),
                "train/entropy": float(masked_mean(torch.cat(entropies), rollout.action_mask))}

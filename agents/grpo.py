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

from typing import Any

import numpy as np
import torch

from textenv.agents.base import Agent
from textenv.agents.gradient_step import check_finite, gradient_step
from textenv.models.loading import frozen_copy
from textenv.rollout import collect_rollout, masked_mean, score_rollout
from textenv.validation import InputError, check_int, check_number
from textenv.vector_env import TextGenVectorEnv


def group_normalized_advantages(rewards: np.ndarray, group_size: int, eps: float = 1e-4) -> np.ndarray:
    """(R_i − mean_group) / (std_group + eps) within groups of ``group_size`` consecutive rows: ``(B,) -> (B,)``.

    std is the sample standard deviation (ddof=1), as in TRL; a group of equal rewards gets advantage 0.
    """
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    return (centred / (groups.std(axis=1, ddof=1, keepdims=True) + eps)).reshape(-1)


class GRPO(Agent):
    """Group-relative advantages + per-token clipped surrogate; no value function.

    Args:
        env: a ``TextGenVectorEnv`` with ``autoreset_mode="disabled"`` and ``group_size`` G ≥ 2.
        learning_rate: Adam α.
        n_epochs: passes over each rollout (DeepSeekMath's μ; 1 is on-policy).
        num_minibatches: minibatches (of episodes) per epoch; at most ``env.num_envs``.
        clip_range: ε of the clipped surrogate.
        beta: weight of the k3 KL(π_θ‖π_ref) loss term (0: the env's KL-penalised reward is used instead;
            see the module docstring).
        eps: added to the group standard deviation.
        max_grad_norm: gradient-norm clip (``None``: no clipping).
        seed, tensorboard_log, verbose: see :class:`~textenv.agents.base.Agent`.
    """

    name = "grpo"
    default_group_size = 4  # K samples per prompt when the CLI builds the env

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        n_epochs: int = 1,
        num_minibatches: int = 1,
        clip_range: float = 0.2,
        beta: float = 0.0,
        eps: float = 1e-4,
        max_grad_norm: float | None = 1.0,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_int("n_epochs", n_epochs, 1)
        check_int("num_minibatches", num_minibatches, 1)
        check_number("clip_range", clip_range, low=0.0, low_open=True)
        check_number("beta", beta, low=0.0)
        check_number("eps", eps, low=0.0, low_open=True)
        check_number("max_grad_norm", max_grad_norm, low=0.0, low_open=True, none_ok=True)
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        env = self.env  # the TextGenVectorEnv itself, also when a Gymnasium wrapper around it was passed
        if env.autoreset_mode != "disabled":
            raise InputError("env: GRPO plays synchronised episodes; build the env with autoreset_mode='disabled'")
        if env.group_size < 2:
            raise InputError(
                f"env.group_size={env.group_size}: GRPO normalises rewards within a group of G >= 2 completions "
                "per prompt; build the env with group_size=G (e.g. 4) and num_envs a multiple of G"
            )
        if num_minibatches > env.num_envs:
            raise InputError(f"num_minibatches={num_minibatches} must be <= env.num_envs={env.num_envs} (episodes)")
        self.n_epochs = int(n_epochs)
        self.num_minibatches = int(num_minibatches)
        self.clip_range = float(clip_range)
        self.beta = float(beta)
        self.eps = float(eps)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.reference = None
        if self.beta > 0:
            self.reference = env.reference if env.reference is not None else frozen_copy(self.policy)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.learning_rate)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "n_epochs": self.n_epochs,
            "num_minibatches": self.num_minibatches,
            "clip_range": self.clip_range,
            "beta": self.beta,
            "eps": self.eps,
            "max_grad_norm": self.max_grad_norm,
        }

    def train_iteration(self) -> dict[str, float]:
        rollout = collect_rollout(self.env, self.generator)
        mask = rollout.action_mask  # (B, T)
        # R_i: the env's KL-penalised return, or r_φ alone when the KL is paid in the loss (beta > 0).
        rewards = rollout.rm_score if self.beta > 0 else rollout.returns
        check_finite(self, "rewards" if self.beta > 0 else "returns", rewards, self.max_grad_norm, rollout.rm_score)
        advantages = group_normalized_advantages(rewards, self.env.group_size, self.eps)
        check_finite(self, "advantages", advantages, self.max_grad_norm, rollout.rm_score)
        advantages_t = torch.as_tensor(advantages, dtype=torch.float32, device=mask.device)
        old_logprobs = rollout.logprobs  # log π_old(y_t|s_t) at sampling time
        ref_logprobs = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logprobs = score_rollout(self.reference, rollout).logprobs

        self.policy.train()
        stats: dict[str, list[float]] = {k: [] for k in ("loss", "entropy", "clip_fraction", "approx_kl", "ref_kl")}
        for _ in range(self.n_epochs):
            order = torch.randperm(mask.shape[0], generator=self.generator, device=self.generator.device)
            for idx in order.to(mask.device).chunk(self.num_minibatches):
                scores = score_rollout(self.policy, rollout, idx)  # ONE forward per episode of the minibatch
                m = mask[idx]
                logprobs = scores.logprobs
                log_ratio = (logprobs - old_logprobs[idx]) * m
                ratio = log_ratio.exp()  # ρ_{i,t}
                adv = advantages_t[idx, None]  # Â_{i,t} = Â_i for every token t of completion i
                per_token = torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.clip_range, 1 + self.clip_range))
                if ref_logprobs is not None:  # + β·D_{i,t}, the k3 KL estimator (DeepSeekMath eq. 4)
                    log_rho = ref_logprobs[idx] - logprobs
                    ref_kl = torch.expm1(log_rho) - log_rho
                    per_token = per_token + self.beta * ref_kl
                    stats["ref_kl"].append(float(masked_mean(ref_kl.detach(), m)))
                lengths = m.sum(dim=1).clamp(min=1)
                loss = ((per_token * m).sum(dim=1) / lengths).mean()  # (1/G) Σ_i (1/|y_i|) Σ_t
                gradient_step(self, loss, self.optimizer, {"policy": self.policy}, self.max_grad_norm, rollout.rm_score)
                with torch.no_grad():
                    stats["loss"].append(float(loss.detach()))
                    stats["entropy"].append(float(masked_mean(scores.entropy, m)))
                    stats["clip_fraction"].append(float(masked_mean(((ratio - 1).abs() > self.clip_range).float(), m)))
                    stats["approx_kl"].append(float(masked_mean(ratio - 1 - log_ratio, m)))
        self.policy.eval()

        if self.iterations % 10 == 0:
            self.log_samples(rollout.prompts, rollout.texts)
        return {
            **rollout.metrics(),
            **{f"train/{key}": float(np.mean(values)) for key, values in stats.items() if values},
        }

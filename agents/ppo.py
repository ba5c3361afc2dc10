"""PPO for RLHF (Ziegler et al. 2019; InstructGPT, Ouyang et al. 2022), with the optional PPO-ptx term.

PPO (Schulman et al. 2017) and PPO-ptx (InstructGPT eq. 4); docs/rl-framing.md#ppo. One iteration:

1. Roll out B = ``env.num_envs`` episodes; keep the sampling-time log π_old(a_t|s_t) (no re-computation).
2. Per-token rewards. ``reward_shaping="per_token"`` (default) uses the "Per-token (dense) form used by PPO
   implementations": r_t = −β·KL_t at every generated token, plus r_φ(x, y) added at the last one, built from
   the rollout's ``kl`` and ``rm_score`` (whatever the env's ``kl_penalty``). Σ_t r_t equals the env's
   return R(x, y) = r_φ − β·Σ_t KL_t (InstructGPT eq. 2) either way; the dense form only tells the critic
   *where* the KL was paid. ``reward_shaping="env"`` uses the env's own step rewards unchanged (with
   ``kl_penalty="terminal"`` all of R arrives at the last step).
3. Values V(s_t) from a scalar head ``nn.Linear(hidden_size, 1)`` on the policy's own last hidden states (one
   trunk, no second model). V_old(s_t) reads the hidden states the env's cached forward computed while
   sampling (``Rollout.hidden_states``), so no extra forward runs before the epochs.
4. GAE (Schulman et al. 2016): δ_t = r_t + γ·V(s_{t+1}) − V(s_t), Â_t = Σ_l (γλ)^l δ_{t+l}; the value target
   is V_targ = Â_t + V_old(s_t); the state after the last token is terminal (V = 0). Â is whitened over the
   batch's tokens.
5. ``n_epochs`` passes over the episodes in ``num_minibatches`` shuffled minibatches; every minibatch runs ONE
   forward per episode that gives both log π_θ(a_t|s_t) (logits) and V_θ(s_t) (hidden states), then
       ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t)
       L_clip = E_t[ min(ρ_t·Â_t, clip(ρ_t, 1−ε, 1+ε)·Â_t) ]                 (Schulman et al. 2017, eq. 7)
       L_V = ½·E_t[ max((V_θ − V_targ)², (V_old + clip(V_θ − V_old, −ε_v, ε_v) − V_targ)²) ]  (value clip)
       loss = −L_clip + c_v·L_V − c_e·H[π_θ(·|s_t)] + γ_ptx·L_ptx
   with L_ptx = −E_{x~D_pretrain}[log π_θ(x)], the LM loss on a minibatch of pre-training text
   (InstructGPT eq. 4: objective = E[R] + γ·E_{x~D_pretrain}[log π_θ(x)]; γ_ptx = 0 is plain PPO).
   The gradient norm is clipped; with ``target_kl`` the epochs stop early once the approximate
   KL(π_old‖π_θ) ≈ E_t[(ρ_t − 1) − log ρ_t] of a minibatch exceeds 1.5·target_kl (as stable-baselines3).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from textenv import distributed
from textenv.agents.base import Agent
from textenv.agents.config import (
    LEARNING_RATE,
    NativeConfig,
    check_minibatches,
    require_synchronised_episodes,
)
from textenv.agents.gradient_step import accumulate_gradients, apply_gradients, check_finite, micro_batches, share
from textenv.agents.sft import read_utf8
from textenv.config import Choice, Flag, Integer, Number, option
from textenv.fast import model_fast
from textenv.logprobs import chosen_logprobs
from textenv.prompts import builtin_reviews
from textenv.rollout import Rollout, collect_rollout, masked_mean
from textenv.scoring import ActionScores, score_rollout
from textenv.validation import InputError

REWARD_SHAPINGS = ("per_token", "env")
#: Training statistics of one iteration, averaged over its minibatches (``train/<name>``).
STATISTICS = ("loss", "policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl", "ptx_loss")


def check_ptx_texts(name: str, value: Any) -> None:
    """Pre-training text is ``None``, a path or a sequence of strings (the strings are checked when read)."""
    if value is not None and not isinstance(value, (str, os.PathLike, Sequence)):
        raise InputError(f"{name} must be a list of strings or a path to a .txt file, got {type(value).__name__}")


@dataclass(frozen=True)
class PPOConfig(NativeConfig):
    """PPO's hyper-parameters (and those of :class:`~textenv.agents.config.AgentConfig`)."""

    learning_rate: float = option(1e-4, "Adam step size α of the policy", LEARNING_RATE)
    vf_learning_rate: float | None = option(
        None, "Adam step size of the value head (None: 10 × learning_rate; Adam moves each parameter by about α "
              "per step, so at the policy's α a zero-initialised head needs hundreds of iterations to reach the "
              "mean return)", Number(low=0.0, low_open=True, none_ok=True))
    n_epochs: int = option(2, "passes over each rollout", Integer(1))
    num_minibatches: int = option(2, "minibatches (of episodes) per epoch; at most env.num_envs", Integer(1))
    clip_range: float = option(0.2, "ε of the clipped surrogate", Number(low=0.0, low_open=True))
    clip_range_vf: float | None = option(0.2, "ε_v of value clipping around V_old (None: no value clipping)",
                                         Number(low=0.0, low_open=True, none_ok=True))
    gamma: float = option(1.0, "discount γ over tokens, in [0, 1]", Number(low=0.0, high=1.0))
    gae_lambda: float = option(0.95, "GAE λ, in [0, 1]", Number(low=0.0, high=1.0))
    vf_coef: float = option(0.1, "c_v, weight of the value loss", Number(low=0.0))
    ent_coef: float = option(0.0, "c_e, weight of the entropy bonus (the KL penalty usually suffices)", Number(low=0.0))
    target_kl: float | None = option(
        None, "stop the epochs once the old→new approximate KL of a minibatch exceeds 1.5·target_kl (nats per "
              "token; None: never stop early); not the env's target_kl, which adapts β",
        Number(low=0.0, low_open=True, none_ok=True))
    whiten_advantages: bool = option(True, "normalise Â to zero mean and unit variance over the batch's tokens",
                                     Flag())
    reward_shaping: str = option("per_token", "'per_token' (r_t = −β·KL_t, plus r_φ at the last token) or 'env' "
                                              "(the env's own step rewards)", Choice(REWARD_SHAPINGS))
    ptx_coef: float = option(0.0, "γ_ptx of PPO-ptx (InstructGPT eq. 4); 0 disables the pre-training term",
                             Number(low=0.0))
    ptx_texts: Sequence[str] | str | None = option(
        None, "pre-training text: a list of strings or a .txt path (one text per line); None with ptx_coef > 0: "
              "2048 reviews of the embedded model's corpus", check_ptx_texts)
    ptx_batch_size: int | None = option(None, "pre-training texts per optimizer step (None: the episodes per "
                                              "minibatch)", Integer(1, none_ok=True))

    def check_env(self, env: Any) -> None:
        require_synchronised_episodes(env, "PPO")
        check_minibatches(self.num_minibatches, env)


@dataclass
class Targets:
    """What the epochs regress on, all ``(B, T)`` and 0 past each episode's end: V_old(s_t), Â_t and V_targ."""

    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPO(Agent):
    """Proximal Policy Optimization with a value head on the policy's trunk (and optional PPO-ptx).

    The env must have ``autoreset_mode="disabled"``; one rollout = ``env.num_envs`` episodes. Hyper-parameters:
    :class:`PPOConfig`.
    """

    name = "ppo"
    config_class = PPOConfig
    config: PPOConfig

    def __init__(self, env: Any, config: PPOConfig | None = None, **kwargs: Any) -> None:
        super().__init__(env, config, **kwargs)
        c = self.config
        # Pre-training token ids (one list per text), only when the ptx term is on.
        self._ptx_ids = self._tokenize_ptx(load_ptx_texts(c.ptx_texts, c.seed)) if c.ptx_coef > 0 else []
        self.value_head = zero_value_head(self.policy, self.env.device)
        self.optimizer = torch.optim.Adam([
            {"params": list(self.policy.parameters()), "lr": c.learning_rate},
            {"params": list(self.value_head.parameters()), "lr": c.vf_learning_rate or 10 * c.learning_rate},
        ])

    # ------------------------------------------------------------------ Agent interface
    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"value_head": self.value_head}

    # ------------------------------------------------------------------ the pieces
    def policy_and_values(self, rollout: Rollout,
                          rows: torch.Tensor | None = None) -> tuple[ActionScores, torch.Tensor]:
        """ONE forward over prompt + completion of the episodes ``rows`` (default: all): log π_θ(a_t|s_t) and
        entropy (``ActionScores``, ``(N, T)``) and V(s_t) ``(N, T)`` from the same trunk's last hidden states.

        Column t is the state s_t = (x, y_<t) in which action a_t was taken (see ``rollout.score_actions``: the
        episodes are packed without padding and the LM head runs on taken actions only).
        """
        scores = score_rollout(self.policy, rollout, rows, entropy_grad=self.config.ent_coef > 0)
        return scores, self.value_head(scores.hidden.float()).squeeze(-1)

    def token_rewards(self, rollout: Rollout) -> torch.Tensor:
        """Per-token rewards r_t ``(B, T)`` (see ``reward_shaping``); Σ_t r_t is the env's return R(x, y)."""
        if self.config.reward_shaping == "env":
            return rollout.rewards * rollout.action_mask
        mask = rollout.action_mask
        rewards = -rollout.kl_coef * rollout.kl * mask  # r_t = −β·KL_t ...
        last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # index of each episode's final token
        rm_score = torch.as_tensor(rollout.rm_score, dtype=rewards.dtype, device=rewards.device)
        rewards[torch.arange(len(last), device=rewards.device), last] += rm_score  # ... + r_φ(x, y) at the end
        return rewards

    def pretraining_loss(self) -> torch.Tensor:
        """L_ptx = −mean log π_θ(x_i|x_<i) over the tokens of ``ptx_batch_size`` random pre-training texts."""
        batch_size = self.config.ptx_batch_size or max(self.env.num_envs // self.config.num_minibatches, 1)
        picks = torch.randint(len(self._ptx_ids), (batch_size,), generator=self.generator, device=self.generator.device)
        texts = [self._ptx_ids[int(i)] for i in picks]
        width = max(len(t) for t in texts)
        ids = torch.full((len(texts), width), self.env.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), width), dtype=torch.long)
        for row, tokens in enumerate(texts):  # right padding: positions are 0, 1, ... as in pre-training
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        ids, mask = ids.to(self.env.device), mask.to(self.env.device)
        logits = self.policy(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logprobs = chosen_logprobs(logits, ids[:, 1:], fast=model_fast(self.policy))
        return -masked_mean(logprobs, mask[:, 1:].float())

    def targets(self, rollout: Rollout) -> Targets:
        """V_old, GAE advantages (whitened if asked) and value targets of a rollout, all without gradient.

        V_old(s_t) reads the hidden states the env's cached forward already computed while sampling: no extra
        forward (the first minibatch checks that a full forward reproduces the rollout's log-probs).
        """
        c = self.config
        mask = rollout.action_mask
        rewards = self.token_rewards(rollout)
        check_finite(self, "per-token rewards", rewards, c.max_grad_norm, rollout.rm_score)
        with torch.no_grad():
            old_values = self.value_head(rollout.hidden_states).squeeze(-1) * mask
            advantages, returns = generalized_advantage_estimation(rewards, old_values, mask, c.gamma, c.gae_lambda)
            if c.whiten_advantages:
                advantages = whiten(advantages, mask)
        check_finite(self, "advantages", advantages, c.max_grad_norm, rollout.rm_score)
        return Targets(old_values, advantages, returns)

    def clipped_losses(self, ratio: torch.Tensor, values: torch.Tensor, targets: Targets, idx: torch.Tensor,
                       mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipped surrogate (Schulman et al. 2017, eq. 7, as a loss to minimise) and the value loss with
        clipping around V_old (Ziegler et al. 2019 / OpenAI baselines) over the minibatch ``idx``."""
        c = self.config
        adv, returns, old_values = targets.advantages[idx], targets.returns[idx], targets.old_values[idx]
        policy_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - c.clip_range, 1 + c.clip_range)), mask)
        value_error = (values - returns) ** 2
        if c.clip_range_vf is not None:
            step = (values - old_values).clamp(-c.clip_range_vf, c.clip_range_vf)
            clipped = old_values + step
            value_error = torch.max(value_error, (clipped - returns) ** 2)
        return policy_loss, 0.5 * masked_mean(value_error, mask)

    # ------------------------------------------------------------------ one iteration
    def train_iteration(self) -> dict[str, float]:
        rollout = collect_rollout(self.env, self.generator, update_kl_controller=True)
        targets = self.targets(rollout)
        self.policy.train()
        stats: dict[str, list[float]] = {key: [] for key in STATISTICS}
        epochs_run, logprob_mismatch = 0, float("nan")
        for _ in range(self.config.n_epochs):
            stopped, logprob_mismatch = self._epoch(rollout, targets, stats, logprob_mismatch)
            if stopped:
                break
            epochs_run += 1
        self.policy.eval()

        if self.iterations % 10 == 0:
            self.log_samples(rollout.prompts, rollout.texts)
        self.log_lens(rollout, advantage=targets.advantages, value=targets.old_values)  # per token: Â_t, V_old(s_t)
        metrics = {
            **rollout.metrics(),
            "train/explained_variance": explained_variance(targets.old_values, targets.returns, rollout.action_mask),
            "train/logprob_mismatch": logprob_mismatch,
            "train/epochs": float(epochs_run),
        }
        metrics.update({f"train/{key}": float(np.mean(values)) for key, values in stats.items() if values})
        if "train/loss" not in metrics:  # the very first minibatch already exceeded target_kl
            metrics.update({"train/loss": float("nan"), "train/entropy": float("nan")})
        return metrics

    def _epoch(self, rollout: Rollout, targets: Targets, stats: dict[str, list[float]],
               logprob_mismatch: float) -> tuple[bool, float]:
        """One pass over the episodes in ``num_minibatches`` shuffled minibatches, appending to ``stats``.

        Returns whether ``target_kl`` stopped it and the max |log π_θ − log π_old| of the first minibatch ever
        run (π_θ = π_old before the first step, so it must be ~0: the full forward reproduces the rollout)."""
        mask = rollout.action_mask
        order = torch.randperm(mask.shape[0], generator=self.generator, device=self.generator.device).to(mask.device)
        for idx in order.chunk(self.config.num_minibatches):
            step = self._minibatch_step(rollout, targets, idx, check_mismatch=math.isnan(logprob_mismatch))
            if step.mismatch is not None:
                logprob_mismatch = step.mismatch
            if step.stats is None:
                return True, logprob_mismatch
            for key, value in step.stats.items():
                stats[key].append(value)
        return False, logprob_mismatch

    def _minibatch_step(self, rollout: Rollout, targets: Targets, idx: torch.Tensor, check_mismatch: bool) -> _Step:
        """ONE forward of the episodes ``idx`` (one per micro-batch of ``micro_batch_size`` episodes, gradients
        accumulated) and one guarded optimizer step on −L_clip + c_v·L_V − c_e·H + γ_ptx·L_ptx, unless the
        approximate KL already exceeds 1.5·target_kl (checked before the backward when the minibatch is one
        forward, else after the accumulation, before the step)."""
        c = self.config
        m = rollout.action_mask[idx]
        tokens = float(m.sum())
        sums = dict.fromkeys(("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"), 0.0)
        stats: dict[str, float] = {}
        mismatches: list[float] = []
        parts = micro_batches(idx, c.micro_batch_size)

        def exceeds_target_kl(approx_kl: float) -> bool:
            if c.target_kl is None:
                return False
            sums["approx_kl"] = approx_kl = distributed.mean_float(approx_kl)  # torchrun: every rank stops alike
            return approx_kl > 1.5 * c.target_kl

        def part(rows: torch.Tensor, first: bool) -> torch.Tensor | None:
            mb = rollout.action_mask[rows]
            old_logprobs = rollout.logprobs[rows]  # log π_old(a_t|s_t) at sampling time
            scores, values = self.policy_and_values(rollout, rows)
            logprobs = scores.logprobs
            if check_mismatch:
                mismatches.append(float(((logprobs.detach() - old_logprobs).abs() * mb).max()))
            log_ratio = (logprobs - old_logprobs) * mb
            ratio = log_ratio.exp()  # ρ_t = π_θ / π_old
            weight = float(mb.sum())
            with torch.no_grad():
                approx_kl = float(share(masked_mean((ratio - 1) - log_ratio, mb), weight, tokens))  # k3 of KL(π_old‖π_θ)
                clip_fraction = float(share(masked_mean(((ratio - 1).abs() > c.clip_range).float(), mb), weight, tokens))
            sums["approx_kl"] += approx_kl
            sums["clip_fraction"] += clip_fraction
            if len(parts) == 1 and exceeds_target_kl(approx_kl):
                return None
            policy_loss, value_loss = self.clipped_losses(ratio, values, targets, rows, mb)
            # H[π_θ(·|s_t)] over the whole vocabulary; kept out of the graph when it has no weight in the loss.
            mean_entropy = masked_mean(scores.entropy, mb)
            loss = share(policy_loss + c.vf_coef * value_loss - c.ent_coef * mean_entropy, weight, tokens)
            for key, value in (("policy_loss", policy_loss), ("value_loss", value_loss), ("entropy", mean_entropy)):
                sums[key] += float(share(value.detach(), weight, tokens))
            if first and c.ptx_coef > 0:  # PPO-ptx, InstructGPT eq. 4: + γ·E_pretrain[log π_θ(x)] in the objective
                ptx_loss = self.pretraining_loss()
                loss = loss + c.ptx_coef * ptx_loss
                stats["ptx_loss"] = float(ptx_loss.detach())
            return loss

        modules = {"policy": self.policy, "value_head": self.value_head}
        loss = accumulate_gradients(self, [lambda r=r, i=i: part(r, i == 0) for i, r in enumerate(parts)],
                                    self.optimizer, c.max_grad_norm, rollout.rm_score)
        mismatch = max(mismatches) if mismatches else None
        if loss is None or (len(parts) > 1 and exceeds_target_kl(sums["approx_kl"])):
            self.optimizer.zero_grad(set_to_none=True)  # the accumulated gradients of a minibatch not stepped
            return _Step(None, mismatch)
        apply_gradients(self, self.optimizer, modules, c.max_grad_norm, rollout.rm_score)
        stats.update({**sums, "loss": float(loss)})
        return _Step(stats, mismatch)

    def _tokenize_ptx(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text followed by EOS, cut to the model's context length."""
        tokenizer = self.env.tokenizer
        limit = getattr(self.policy.config, "n_positions", None) or getattr(
            self.policy.config, "max_position_embeddings", None) or 1024
        ids = [(t + [tokenizer.eos_token_id])[:limit] for t in tokenizer(texts, add_special_tokens=True)["input_ids"]]
        ids = [t for t in ids if len(t) >= 2]
        if not ids:
            raise InputError("ptx_texts: every text is empty after tokenisation; give non-empty pre-training text")
        return ids


@dataclass
class _Step:
    """What one minibatch step returns: its statistics (``None``: stopped by ``target_kl`` before stepping) and
    the max |log π_θ − log π_old| over its tokens (``None`` when not asked)."""

    stats: dict[str, float] | None
    mismatch: float | None


def zero_value_head(policy: nn.Module, device: torch.device | str) -> nn.Linear:
    """V(s_t) = w·h_t + b on the policy's last hidden state h_t (one shared trunk, no second model), with w = 0 and
    b = 0: V ≡ 0 at the start, so the first advantages are the returns."""
    config = policy.config
    hidden_size = getattr(config, "hidden_size", None) or policy.get_output_embeddings().in_features
    head = nn.Linear(hidden_size, 1).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


# ---------------------------------------------------------------------- estimators
def generalized_advantage_estimation(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(γ, λ) (Schulman et al. 2016, eq. 16) over ``(B, T)`` per-token rewards and values.

    δ_t = r_t + γ·V(s_{t+1}) − V(s_t), with V = 0 after an episode's last token (the episode ends there,
    at EOS or the length limit); Â_t = δ_t + γλ·Â_{t+1}. Returns ``(advantages, value_targets)``, both
    ``(B, T)`` and 0 where ``mask`` is 0; value_targets = Â + V.
    """
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(mask[:, t])
        next_value = values[:, t + 1] * next_mask if t + 1 < T else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_mask * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the entries where ``mask`` is 1; 0 elsewhere."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(targets − predictions) / Var(targets) over masked entries (1 = perfect critic, ≤ 0 = useless)."""
    keep = mask.bool()
    y, p = targets[keep], predictions[keep]
    var_y = float(y.var()) if y.numel() > 1 else 0.0
    return float("nan") if var_y == 0 else 1.0 - float((y - p).var()) / var_y


def load_ptx_texts(source: Sequence[str] | str | Path | None, seed: int | None = 0, n: int = 2048) -> list[str]:
    """Pre-training text for PPO-ptx: a list, a ``.txt`` file (one text per line) or, for ``None``, ``n``
    reviews of the embedded model's corpus (:func:`textenv.prompts.builtin_reviews`)."""
    if source is None:
        return builtin_reviews(n, seed=seed or 0)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"ptx_texts={str(source)!r} is not an existing .txt file (one text per line)")
        texts = [line for line in read_utf8(path, "ptx_texts").splitlines() if line.strip()]
    else:
        texts = list(source)
        if not all(isinstance(t, str) for t in texts):
            raise InputError("ptx_texts must be a list of strings or a path to a .txt file")
    if not texts:
        raise InputError("ptx_texts is empty; give at least one pre-training text")
    return texts

"""PPO for RLHF (Ziegler et al. 2019; InstructGPT, Ouyang et al. 2022), with the optional PPO-ptx term.

``shared/rlhf-notes.md``, "PPO (Schulman et al. 2017)" and "PPO-ptx (InstructGPT eq. 4)". One iteration:

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from textenv.agents.base import Agent
from textenv.agents.gradient_step import check_finite, gradient_step
from textenv.agents.sft import read_utf8
from textenv.logprobs import chosen_logprobs
from textenv.prompts import builtin_reviews
from textenv.rollout import ActionScores, Rollout, collect_rollout, masked_mean, score_rollout
from textenv.validation import InputError, check_choice, check_int, check_number
from textenv.vector_env import TextGenVectorEnv

REWARD_SHAPINGS = ("per_token", "env")


class PPO(Agent):
    """Proximal Policy Optimization with a value head on the policy's trunk (and optional PPO-ptx).

    Args:
        env: a ``TextGenVectorEnv`` with ``autoreset_mode="disabled"``; one rollout = ``env.num_envs`` episodes.
        learning_rate: Adam α for the policy.
        vf_learning_rate: Adam α for the value head (default: 10 × ``learning_rate``). Adam moves each
            parameter by about α per step, so at the policy's α a zero-initialised head would need hundreds of
            iterations just to reach the mean return.
        n_epochs: passes over each rollout.
        num_minibatches: minibatches (of episodes) per epoch; at most ``env.num_envs``.
        clip_range: ε of the clipped surrogate.
        clip_range_vf: ε_v of value clipping around V_old (``None``: no value clipping).
        gamma: discount γ over tokens, in [0, 1].
        gae_lambda: GAE λ, in [0, 1].
        vf_coef: c_v, weight of the value loss.
        ent_coef: c_e, weight of the entropy bonus (the KL penalty usually suffices, default 0).
        max_grad_norm: gradient-norm clip (``None``: no clipping).
        target_kl: stop the epochs once the old→new approximate KL of a minibatch exceeds 1.5·target_kl
            (nats per token; ``None``: never stop early). Not the env's ``target_kl`` (which adapts β).
        whiten_advantages: normalise Â to zero mean and unit variance over the batch's tokens.
        reward_shaping: ``"per_token"`` (r_t = −β·KL_t, plus r_φ at the last token) or ``"env"`` (the env's
            own step rewards).
        ptx_coef: γ_ptx of PPO-ptx (InstructGPT eq. 4); 0 disables the pre-training term.
        ptx_texts: pre-training text, a list of strings or a ``.txt`` path (one text per line). Default when
            ``ptx_coef > 0``: 2048 reviews of the embedded model's corpus (:func:`textenv.prompts.builtin_reviews`).
        ptx_batch_size: pre-training texts per optimizer step (default: the episodes per minibatch).
        seed, tensorboard_log, verbose: see :class:`~textenv.agents.base.Agent`.
    """

    name = "ppo"

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        vf_learning_rate: float | None = None,
        n_epochs: int = 2,
        num_minibatches: int = 2,
        clip_range: float = 0.2,
        clip_range_vf: float | None = 0.2,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        vf_coef: float = 0.1,
        ent_coef: float = 0.0,
        max_grad_norm: float | None = 1.0,
        target_kl: float | None = None,
        whiten_advantages: bool = True,
        reward_shaping: str = "per_token",
        ptx_coef: float = 0.0,
        ptx_texts: Sequence[str] | str | None = None,
        ptx_batch_size: int | None = None,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_number("vf_learning_rate", vf_learning_rate, low=0.0, low_open=True, none_ok=True)
        check_int("n_epochs", n_epochs, 1)
        check_int("num_minibatches", num_minibatches, 1)
        check_number("clip_range", clip_range, low=0.0, low_open=True)
        check_number("clip_range_vf", clip_range_vf, low=0.0, low_open=True, none_ok=True)
        check_number("gamma", gamma, low=0.0, high=1.0)
        check_number("gae_lambda", gae_lambda, low=0.0, high=1.0)
        check_number("vf_coef", vf_coef, low=0.0)
        check_number("ent_coef", ent_coef, low=0.0)
        check_number("max_grad_norm", max_grad_norm, low=0.0, low_open=True, none_ok=True)
        check_number("target_kl", target_kl, low=0.0, low_open=True, none_ok=True)
        check_choice("whiten_advantages", whiten_advantages, (True, False))
        check_choice("reward_shaping", reward_shaping, REWARD_SHAPINGS)
        check_number("ptx_coef", ptx_coef, low=0.0)
        if ptx_batch_size is not None:
            check_int("ptx_batch_size", ptx_batch_size, 1)
        if ptx_texts is not None and not isinstance(ptx_texts, (str, os.PathLike, Sequence)):
            raise InputError(f"ptx_texts must be a list of strings or a path to a .txt file, got "
                             f"{type(ptx_texts).__name__}")
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        env = self.env  # the TextGenVectorEnv itself, also when a Gymnasium wrapper around it was passed
        if env.autoreset_mode != "disabled":
            raise InputError("env: PPO plays synchronised episodes; build the env with autoreset_mode='disabled'")
        if num_minibatches > env.num_envs:
            raise InputError(f"num_minibatches={num_minibatches} must be <= env.num_envs={env.num_envs} (episodes)")
        self.vf_learning_rate = None if vf_learning_rate is None else float(vf_learning_rate)
        self.n_epochs = int(n_epochs)
        self.num_minibatches = int(num_minibatches)
        self.clip_range = float(clip_range)
        self.clip_range_vf = None if clip_range_vf is None else float(clip_range_vf)
        self.gamma = float(gamma)
        self.gae_lambda = float(gae_lambda)
        self.vf_coef = float(vf_coef)
        self.ent_coef = float(ent_coef)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.target_kl = None if target_kl is None else float(target_kl)
        self.whiten_advantages = bool(whiten_advantages)
        self.reward_shaping = reward_shaping
        self.ptx_coef = float(ptx_coef)
        if isinstance(ptx_texts, (str, os.PathLike)):
            ptx_texts = str(ptx_texts)  # a path: saved as given in agent.json
        self.ptx_texts = ptx_texts if ptx_texts is None or isinstance(ptx_texts, str) else list(ptx_texts)
        self.ptx_batch_size = ptx_batch_size
        # Pre-training token ids (one list per text), only when the ptx term is on.
        self._ptx_ids = self._tokenize_ptx(load_ptx_texts(ptx_texts, seed)) if self.ptx_coef > 0 else []

        # V(s_t) = w·h_t + b on the policy's last hidden state h_t: one shared trunk, no second model.
        config = self.policy.config
        hidden_size = getattr(config, "hidden_size", None) or self.policy.get_output_embeddings().in_features
        self.value_head = nn.Linear(hidden_size, 1).to(env.device)
        nn.init.zeros_(self.value_head.weight)  # V ≡ 0 at the start: the first advantages are the returns
        nn.init.zeros_(self.value_head.bias)
        self.optimizer = torch.optim.Adam([
            {"params": list(self.policy.parameters()), "lr": self.learning_rate},
            {"params": list(self.value_head.parameters()), "lr": self.vf_learning_rate or 10 * self.learning_rate},
        ])

    # ------------------------------------------------------------------ Agent interface
    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "vf_learning_rate": self.vf_learning_rate,
            "n_epochs": self.n_epochs,
            "num_minibatches": self.num_minibatches,
            "clip_range": self.clip_range,
            "clip_range_vf": self.clip_range_vf,
            "gamma": self.gamma,
            "gae_lambda": self.gae_lambda,
            "vf_coef": self.vf_coef,
            "ent_coef": self.ent_coef,
            "max_grad_norm": self.max_grad_norm,
            "target_kl": self.target_kl,
            "whiten_advantages": self.whiten_advantages,
            "reward_shaping": self.reward_shaping,
            "ptx_coef": self.ptx_coef,
            "ptx_texts": self.ptx_texts,
            "ptx_batch_size": self.ptx_batch_size,
        }

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"value_head": self.value_head}

    # ------------------------------------------------------------------ the pieces
    def policy_and_values(self, rollout: Rollout, rows: torch.Tensor | None = None) -> tuple[ActionScores, torch.Tensor]:
        """ONE forward over prompt + completion of the episodes ``rows`` (default: all): log π_θ(a_t|s_t) and
        entropy (``ActionScores``, ``(N, T)``) and V(s_t) ``(N, T)`` from the same trunk's last hidden states.

        Column t is the state s_t = (x, y_<t) in which action a_t was taken (see ``rollout.score_actions``: the
        episodes are packed without padding and the LM head runs on taken actions only).
        """
        scores = score_rollout(self.policy, rollout, rows, entropy_grad=self.ent_coef > 0)
        return scores, self.value_head(scores.hidden.float()).squeeze(-1)

    def token_rewards(self, rollout: Rollout) -> torch.Tensor:
        """Per-token rewards r_t ``(B, T)`` (see ``reward_shaping``); Σ_t r_t is the env's return R(x, y)."""
        if self.reward_shaping == "env":
            return rollout.rewards * rollout.action_mask
        mask = rollout.action_mask
        rewards = -rollout.kl_coef * rollout.kl * mask  # r_t = −β·KL_t ...
        last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # index of each episode's final token
        rm_score = torch.as_tensor(rollout.rm_score, dtype=rewards.dtype, device=rewards.device)
        rewards[torch.arange(len(last), device=rewards.device), last] += rm_score  # ... + r_φ(x, y) at the end
        return rewards

    def pretraining_loss(self) -> torch.Tensor:
        """L_ptx = −mean log π_θ(x_i|x_<i) over the tokens of ``ptx_batch_size`` random pre-training texts."""
        batch_size = self.ptx_batch_size or max(self.env.num_envs // self.num_minibatches, 1)
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
        logprobs = chosen_logprobs(logits, ids[:, 1:])
        return -masked_mean(logprobs, mask[:, 1:].float())

    # ------------------------------------------------------------------ one iteration
    def train_iteration(self) -> dict[str, float]:
        rollout = collect_rollout(self.env, self.generator)
        mask = rollout.action_mask  # (B, T)
        old_logprobs = rollout.logprobs  # log π_old(a_t|s_t) at sampling time
        rewards = self.token_rewards(rollout)
        check_finite(self, "per-token rewards", rewards, self.max_grad_norm, rollout.rm_score)

        # V_old(s_t) from the hidden states the env's cached forward already computed while sampling: no
        # extra forward (the first minibatch below checks that a full forward reproduces the rollout).
        with torch.no_grad():
            old_values = self.value_head(rollout.hidden_states).squeeze(-1) * mask
            advantages, returns = generalized_advantage_estimation(
                rewards, old_values, mask, self.gamma, self.gae_lambda
            )
            if self.whiten_advantages:
                advantages = whiten(advantages, mask)
        check_finite(self, "advantages", advantages, self.max_grad_norm, rollout.rm_score)

        self.policy.train()
        stats: dict[str, list[float]] = {k: [] for k in (
            "loss", "policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl", "ptx_loss")}
        epochs_run, stop, logprob_mismatch = 0, False, float("nan")
        B = mask.shape[0]
        for _ in range(self.n_epochs):
            order = torch.randperm(B, generator=self.generator, device=self.generator.device).to(mask.device)
            for idx in order.chunk(self.num_minibatches):
                m = mask[idx]
                scores, values = self.policy_and_values(rollout, idx)
                logprobs = scores.logprobs
                if math.isnan(logprob_mismatch):  # π_θ = π_old before the first step: must equal the rollout
                    logprob_mismatch = float(((logprobs.detach() - old_logprobs[idx]).abs() * m).max())
                log_ratio = (logprobs - old_logprobs[idx]) * m
                ratio = log_ratio.exp()  # ρ_t = π_θ / π_old
                with torch.no_grad():
                    approx_kl = float(masked_mean((ratio - 1) - log_ratio, m))  # k3 estimate of KL(π_old‖π_θ)
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    stop = True
                    break
                adv = advantages[idx]
                # Clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.
                policy_loss = masked_mean(
                    torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.clip_range, 1 + self.clip_range)), m
                )
                # Value loss with clipping around V_old (Ziegler et al. 2019 / OpenAI baselines).
                value_error = (values - returns[idx]) ** 2
                if self.clip_range_vf is not None:
                    step = (values - old_values[idx]).clamp(-self.clip_range_vf, self.clip_range_vf)
                    clipped = old_values[idx] + step
                    value_error = torch.max(value_error, (clipped - returns[idx]) ** 2)
                value_loss = 0.5 * masked_mean(value_error, m)
                # H[π_θ(·|s_t)] over the whole vocabulary; kept out of the graph when it has no weight in the loss.
                mean_entropy = masked_mean(scores.entropy, m)
                loss = policy_loss + self.vf_coef * value_loss - self.ent_coef * mean_entropy
                if self.ptx_coef > 0:  # PPO-ptx, InstructGPT eq. 4: + γ·E_pretrain[log π_θ(x)] in the objective
                    ptx_loss = self.pretraining_loss()
                    loss = loss + self.ptx_coef * ptx_loss
                    stats["ptx_loss"].append(float(ptx_loss.detach()))

                gradient_step(self, loss, self.optimizer, {"policy": self.policy, "value_head": self.value_head},
                              self.max_grad_norm, rollout.rm_score)

                stats["loss"].append(float(loss.detach()))
                stats["policy_loss"].append(float(policy_loss.detach()))
                stats["value_loss"].append(float(value_loss.detach()))
                stats["entropy"].append(float(mean_entropy.detach()))
                stats["approx_kl"].append(approx_kl)
                with torch.no_grad():
                    stats["clip_fraction"].append(float(masked_mean(((ratio - 1).abs() > self.clip_range).float(), m)))
            if stop:
                break
            epochs_run += 1
        self.policy.eval()

        if self.iterations % 10 == 0:
            self.log_samples(rollout.prompts, rollout.texts)
        metrics = {
            **rollout.metrics(),
            "train/explained_variance": explained_variance(old_values, returns, mask),
            "train/logprob_mismatch": logprob_mismatch,
            "train/epochs": float(epochs_run),
        }
        for key, values in stats.items():
            if values:
                metrics[f"train/{key}"] = float(np.mean(values))
        if "train/loss" not in metrics:  # the very first minibatch already exceeded target_kl
            metrics.update({"train/loss": float("nan"), "train/entropy": float("nan")})
        return metrics

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

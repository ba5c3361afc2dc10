"""Offline preference optimisation: DPO and DiscoPOP / LRML, directly on preference pairs (no RM, no RL loop).

Rafailov et al. 2023 (DPO) and Chris Lu et al. 2024 (DiscoPOP); docs/rl-framing.md#dpo-and-lrml. For a prompt x
with preferred completion y_w and dispreferred y_l, the policy's implicit reward margin is

    ρ = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)],

with sequence log-probs summed over the completion tokens, and the loss is a function f(βρ):

* ``loss="sigmoid"`` — DPO (Rafailov et al. 2023, eq. 7): f(βρ) = −log σ(βρ);
* ``loss="lrml"``    — DiscoPOP / log-ratio modulated loss (Chris Lu et al. 2024, eq. 5 / appendix eq. 27):
      f(βρ) = (1 − σ(βρ/τ)) · log(1 + exp(−βρ)) + σ(βρ/τ) · exp(−βρ),   τ = 0.05,
  a blend of the logistic (DPO) and the exponential loss. It is non-convex: for τ = 0.05 it has a local
  minimum at βρ ≈ −0.12 and a local maximum at βρ ≈ +0.07, so its slope at ρ = 0 is *positive*
  (d/dρ f(βρ) at 0 = β[(1 − log 2)/(4τ) − 3/4] ≈ +0.78 β): the update direction −f' there is negative
  and lowers ρ (a "negative gradient at ρ = 0" is true of −f', not of f'). Since ρ = 0 for
  every pair while π_θ = π_ref, small steps slide into that dip (negative margins). In nats of ρ the dip
  spans about [−0.12/β, +0.07/β], so a small β widens it: on the embedded model with VADER-ranked pairs,
  LRML stalled at β = 0.1 (45 % of pairs with ρ > 0 after 150 steps) but learned as fast as DPO at β = 0.5.

The reference π_ref is the env's frozen ``reference`` (the model the env's KL is measured against), or,
when the env has none (``kl_coef=0``) or ``reference="initial_policy"``, a frozen copy of the policy taken
when the agent is built. Its log-probs are computed on the same padded batch as the policy's, so ρ is
exactly 0 before the first update.

Preference data: a JSONL file (or list of rows) in the :mod:`textenv.preferences` format; a ranking of K
completions counts as its C(K, 2) pairs (:func:`textenv.preferences.expand_pairs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from textenv.agents.base import Agent
from textenv.agents.config import LEARNING_RATE
from textenv.agents.gradient_step import gradient_step, share
from textenv.agents.sft import (
    MinibatchSampler,
    OfflineConfig,
    TokenBatch,
    collate,
    completion_logprobs,
    context_length,
    encode_pairs,
)
from textenv.config import Choice, Number, option
from textenv.fast import model_fast
from textenv.logprobs import entropy
from textenv.models.loading import frozen_copy
from textenv.preferences import PreferencePair, as_preference_rows, expand_pairs
from textenv.rollout import masked_mean
from textenv.validation import InputError

PreferenceSource = Any  # str | os.PathLike | Sequence[dict | PreferencePair | PreferenceRanking]
REFERENCES = ("env", "initial_policy")


# ---------------------------------------------------------------------------------------------- losses
def dpo_loss(rho: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): −log σ(βρ) = softplus(−βρ), elementwise (stable for any ρ)."""
    return F.softplus(-beta * rho)


def lrml_loss(rho: torch.Tensor, beta: float, tau: float = 0.05) -> torch.Tensor:
    """DiscoPOP / LRML (Lu et al. 2024, eq. 5 / appendix eq. 27), elementwise, with x = βρ:

        f(x) = (1 − σ(x/τ)) · log(1 + e^{−x}) + σ(x/τ) · e^{−x}.

    Computed stably as σ(−x/τ)·softplus(−x) + exp(log σ(x/τ) − x): the exponential term never overflows,
    because where e^{−x} is huge (x ≪ 0) its weight σ(x/τ) is e^{x/τ}-small and the exponent x(1/τ − 1)
    stays ≤ 0 (τ < 1).
    """
    if not tau > 0:
        raise ValueError(f"tau={tau!r} must be > 0")
    x = beta * rho
    return torch.sigmoid(-x / tau) * F.softplus(-x) + torch.exp(F.logsigmoid(x / tau) - x)


LOSSES = ("sigmoid", "lrml")


# ---------------------------------------------------------------------------------------------- data
def load_pairs(source: PreferenceSource) -> list[PreferencePair]:
    """Every comparison in ``source`` as a pair (rankings expanded to C(K, 2) pairs, grouped by prompt)."""
    if source is None:
        raise InputError(
            "preferences=None: pass a preference JSONL file ({'prompt','chosen','rejected'} or "
            "{'prompt','ranked'} lines, e.g. written by `textenv collect`) or a list of such rows"
        )
    return [pair for group in expand_pairs(as_preference_rows(source)) for pair in group.as_pairs()]


# ---------------------------------------------------------------------------------------------- agent
@dataclass(frozen=True)
class LRMLConfig(OfflineConfig):
    """The hyper-parameters of DPO-style preference optimisation with a fixed loss (LRML's)."""

    learning_rate: float = option(5e-5, "Adam step size α", LEARNING_RATE)
    preferences: str | Sequence[Any] | None = option(
        None, "a preference JSONL path or a list of rows ({'prompt','chosen','rejected'} or {'prompt','ranked'}), "
              "e.g. written by `textenv collect`")
    beta: float = option(0.1, "β, the strength of the implicit KL regularisation (larger: stay closer to π_ref)",
                         Number(low=0, low_open=True))
    tau: float = option(0.05, "LRML's modulation temperature τ (ignored by the 'sigmoid' loss)",
                        Number(low=0, low_open=True))
    reference: str = option("env", "'env' (the env's frozen reference, or a copy of the initial policy if it has "
                                   "none) or 'initial_policy' (always a frozen copy of the policy as built)",
                            Choice(REFERENCES))


@dataclass(frozen=True)
class DPOConfig(LRMLConfig):
    """DPO's hyper-parameters: :class:`LRMLConfig`'s plus the choice of loss."""

    loss: str = option("sigmoid", "'sigmoid' (DPO, −log σ(βρ)) or 'lrml' (DiscoPOP)", Choice(LOSSES))


class DPO(Agent):
    """Direct preference optimisation of the env's policy on a fixed preference dataset.

    One :meth:`train_iteration` is one Adam step on ``batch_size`` pairs: one policy forward (with grad) and
    one reference forward (no grad) over the 2·``batch_size`` sequences (chosen rows, then rejected rows).
    ``num_tokens`` is the number of completion tokens scored (chosen + rejected). The env's ``policy``,
    ``reference``, ``tokenizer`` and ``device`` are used. Hyper-parameters: :class:`DPOConfig`.
    """

    name = "dpo"
    config_class: type[LRMLConfig] = DPOConfig
    config: LRMLConfig

    def __init__(self, env: Any, config: LRMLConfig | None = None, **kwargs: Any) -> None:
        super().__init__(env, config, **kwargs)
        c = self.config
        pairs = load_pairs(c.preferences)
        limit = c.max_length or context_length(self.policy)
        prompts = [p.prompt for p in pairs]
        self.chosen = encode_pairs(self.env.tokenizer, prompts, [p.chosen for p in pairs], limit, c.append_eos)
        self.rejected = encode_pairs(self.env.tokenizer, prompts, [p.rejected for p in pairs], limit, c.append_eos)
        use_env = c.reference == "env" and self.env.reference is not None
        self.reference = self.env.reference if use_env else frozen_copy(self.policy)
        self.sampler = MinibatchSampler(len(pairs), c.batch_size, self.generator)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.learning_rate)

    @property
    def loss_name(self) -> str:
        """``"sigmoid"`` (DPO) or ``"lrml"``."""
        return self.config.loss

    def _extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def _check_extra_state(self, state: dict[str, Any]) -> None:
        if "sampler" in state:
            self.sampler.check_state_dict(state["sampler"], "preference pairs")

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])

    def preference_loss(self, rho: torch.Tensor) -> torch.Tensor:
        """f(βρ) per pair, ``(N,) -> (N,)``: DPO's or LRML's (module docstring)."""
        if self.loss_name == "lrml":
            return lrml_loss(rho, self.config.beta, self.config.tau)
        return dpo_loss(rho, self.config.beta)

    def _margins(
        self, indices: list[int], grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TokenBatch, torch.Tensor]:
        """For the N pairs ``indices``: ρ, log π_θ/π_ref of y_w, the same of y_l (each ``(N,)``), the batch
        (N chosen rows then N rejected rows) and the policy's logits over it ``(2N, L − 1, V)``."""
        n = len(indices)
        batch = collate([self.chosen[i] for i in indices] + [self.rejected[i] for i in indices],
                        self.env.tokenizer.pad_token_id, self.env.device)
        with torch.set_grad_enabled(grad):
            logprobs, logits = completion_logprobs(self.policy, batch)
        with torch.no_grad():
            ref_logprobs, _ = completion_logprobs(self.reference, batch)
        logratio = logprobs.sum(dim=1) - ref_logprobs.sum(dim=1)  # log π_θ(y|x) − log π_ref(y|x), (2N,)
        chosen, rejected = logratio[:n], logratio[n:]
        return chosen - rejected, chosen, rejected, batch, logits

    def train_iteration(self) -> dict[str, float]:
        indices = self.sampler.next()
        size = self.config.micro_batch_size or len(indices)
        micro = [indices[i : i + size] for i in range(0, len(indices), size)]
        outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # ρ, chosen, rejected per micro-batch
        entropies: list[tuple[torch.Tensor, int]] = []  # mean entropy and completion tokens per micro-batch

        def part(chunk: list[int]) -> torch.Tensor:
            rho, chosen, rejected, batch, logits = self._margins(chunk, grad=True)
            with torch.no_grad():
                entropies.append((masked_mean(entropy(logits.detach(), fast=model_fast(self.policy)),
                                              batch.target_mask), batch.num_tokens))
            outputs.append((rho.detach(), chosen.detach(), rejected.detach()))
            return share(self.preference_loss(rho).mean(), len(chunk), len(indices))

        self.policy.train()
        loss = gradient_step(self, [lambda chunk=chunk: part(chunk) for chunk in micro], self.optimizer,
                             {"policy": self.policy}, self.config.max_grad_norm)
        self.policy.eval()
        rho, chosen, rejected = (torch.cat(pieces) for pieces in zip(*outputs))
        num_tokens = sum(tokens for _, tokens in entropies)
        mean_entropy = sum(float(share(value, tokens, num_tokens)) for value, tokens in entropies)
        return {
            "num_tokens": num_tokens,
            "train/loss": float(loss),
            "train/entropy": mean_entropy,
            "train/reward_margin": float((self.config.beta * rho).mean()),  # β·ρ, the implicit reward gap
            "train/pref_accuracy": float((rho > 0).float().mean()),
            "train/chosen_reward": float(self.config.beta * chosen.mean()),
            "train/rejected_reward": float(self.config.beta * rejected.mean()),
        }

    @torch.no_grad()
    def evaluate_preferences(self, batch_size: int = 32) -> dict[str, float]:
        """Loss, mean β·ρ and the fraction of pairs with ρ > 0 over the whole dataset (no update)."""
        was_training = self.policy.training
        self.policy.eval()
        rhos = []
        for start in range(0, len(self.chosen), batch_size):
            rho, *_ = self._margins(list(range(start, min(start + batch_size, len(self.chosen)))), grad=False)
            rhos.append(rho)
        self.policy.train(was_training)
        rho = torch.cat(rhos)
        return {
            "loss": float(self.preference_loss(rho).mean()),
            "reward_margin": float((self.config.beta * rho).mean()),
            "pref_accuracy": float((rho > 0).float().mean()),
        }


class LRML(DPO):
    """DPO with the DiscoPOP / LRML loss fixed; hyper-parameters: :class:`LRMLConfig` (see :class:`DPO`)."""

    name = "lrml"
    config_class = LRMLConfig

    @property
    def loss_name(self) -> str:
        return "lrml"

"""The KL penalty: per-token estimators and β controllers (docs/rl-framing.md#the-reward-reward-model-minus-kl-penalty).

R(x, y) = r_φ(x, y) − β · Σ_t KL_t,   with KL_t estimated at the sampled token y_t from
ρ_t = π_ref(y_t|s_t) / π_θ(y_t|s_t):
    k1 = −log ρ            (unbiased, can be negative; the InstructGPT / Ziegler form)
    k3 = (ρ − 1) − log ρ   (unbiased, always ≥ 0, lower variance)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from textenv.validation import InputError, check_int, check_number

KL_ESTIMATORS = ("k1", "k3")


def kl_per_token(logprob: torch.Tensor, ref_logprob: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate (nats), same shape as the inputs (log-probs of the sampled tokens)."""
    log_ratio = ref_logprob - logprob  # log ρ
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise InputError(f"kl_estimator={estimator!r} is not one of {list(KL_ESTIMATORS)}")


@dataclass
class FixedKLController:
    """Constant β."""

    value: float

    def update(self, mean_kl: float, n_steps: int) -> None:  # noqa: ARG002 - same interface as adaptive
        """No-op: a fixed coefficient never changes."""


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019) proportional controller on β.

    After each rollout: e = clip((KL − KL_target) / KL_target, −0.2, 0.2); β ← β · (1 + e · n_steps / horizon).
    ``mean_kl`` is the mean per-episode KL (nats) of the rollout; ``n_steps`` its number of env steps.
    """

    value: float
    target: float
    horizon: int = 10_000

    def __post_init__(self) -> None:
        check_number("kl_coef", self.value, low=0, low_open=True)
        check_number("target_kl", self.target, low=0, low_open=True)
        check_int("kl_horizon", self.horizon, minimum=1)

    def update(self, mean_kl: float, n_steps: int) -> None:
        error = min(max((mean_kl - self.target) / self.target, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(kl_coef: float, target_kl: float | None, horizon: int = 10_000):
    """Fixed β when ``target_kl`` is None, else the adaptive controller starting at ``kl_coef``."""
    check_number("kl_coef", kl_coef, low=0)
    check_number("target_kl", target_kl, low=0, low_open=True, none_ok=True)
    if target_kl is None:
        return FixedKLController(kl_coef)
    if kl_coef == 0:
        raise InputError("target_kl needs kl_coef > 0: an adaptive controller cannot scale β = 0; set kl_coef "
                         "(e.g. 0.05) or drop target_kl")
    return AdaptiveKLController(kl_coef, target_kl, horizon)

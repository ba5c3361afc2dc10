"""Agent hyper-parameters: :class:`AgentConfig`, the fields every agent takes, and the checks of a config against
the env it trains on.

Each agent declares its hyper-parameters once, as a frozen dataclass next to its algorithm (``PPOConfig`` in
``ppo.py``...), subclassing :class:`AgentConfig`; every field is a :func:`~textenv.config.option` (default,
one-line help, check). The agent names it as ``config_class`` and reads ``self.config.<name>``:

    @dataclass(frozen=True)
    class ReMaxConfig(AgentConfig):
        normalize_advantages: bool = option(True, "divide A by its batch standard deviation", Flag())

    class ReMax(Agent):
        name = "remax"
        config_class = ReMaxConfig

``ReMax(env, normalize_advantages=False)``, ``ReMax(env, ReMaxConfig(...))``, ``make_agent("remax", env, ...)``,
``textenv train --agent remax --help``, a YAML ``agent_kwargs:`` mapping and the ``agent.json`` of a checkpoint
all go through that one dataclass (:class:`~textenv.config.Config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textenv.config import Choice, Config, Flag, Integer, Number, Seed, option
from textenv.validation import InputError

#: Adam step sizes: finite and > 0, capped far above any useful value but below ~3e37, where Adam's float32
#: step overflows inside torch (a raw RuntimeError). Large values that diverge are caught by the guarded update.
LEARNING_RATE = Number(low=0, low_open=True, high=1e30)

#: Autocast dtypes of the update's forward. float16 comes with a loss scaler (torch.amp.GradScaler in the guarded
#: step), since its small gradients underflow; bfloat16 has float32's range and needs none.
AUTOCAST_DTYPES = ("bfloat16", "float16")

#: How the policy is spread over torchrun's ranks.
SHARDINGS = ("ddp", "fsdp")


@dataclass(frozen=True)
class AgentConfig(Config):
    """The hyper-parameters of every agent (saved in ``agent.json``, restored by ``Agent.load``)."""

    learning_rate: float = option(1e-4, "Adam step size α", LEARNING_RATE)
    seed: int | None = option(0, "seeds torch, NumPy, random, the agent's sampler and the env's prompt sampler "
                                 "(None: unseeded)", Seed(none_ok=True))
    max_grad_norm: float | None = option(1.0, "gradient-norm clip (None: no clipping)",
                                         Number(low=0, low_open=True, none_ok=True))

    def check_env(self, env: Any) -> None:
        """Raise :class:`InputError` when the env cannot run with these hyper-parameters (checked before the
        agent touches the env; subclasses add their rules)."""


@dataclass(frozen=True)
class NativeConfig(AgentConfig):
    """The memory options of the native agents' update (the guarded step of :mod:`textenv.agents.gradient_step`);
    SB3 agents run their own update and do not take them."""

    micro_batch_size: int | None = option(
        None, "episodes (or examples / preference pairs) per forward/backward of the update: a (mini)batch larger "
              "than memory runs as accumulated micro-batches with the same gradient and one optimizer step "
              "(None: the whole (mini)batch at once)", Integer(1, none_ok=True))
    gradient_checkpointing: bool = option(
        False, "recompute each transformer block's activations in the update's backward instead of keeping them "
               "(less memory, ~30% more update compute; same result); rollouts (eval mode, KV cache) are unaffected",
        Flag())
    autocast_dtype: str | None = option(
        None, "run the update's forward under torch.autocast in this dtype ('bfloat16', or 'float16' with a loss "
              "scaler; bfloat16 where the GPU has it), the weights, gradients and Adam state staying in their dtype "
              "(float32 master weights: the env's default); None: no autocast",
        Choice((*AUTOCAST_DTYPES, None)))
    sharding: str = option(
        "ddp", "under torchrun: 'ddp' (every rank holds the whole model; gradients averaged) or 'fsdp' (FSDP2: the "
               "parameters, gradients and Adam state sharded over ranks per transformer block, gathered for the "
               "rollout; checkpoints gather the whole state to rank 0; not with LoRA)", Choice(SHARDINGS))
    lens_every: int = option(10, "every N iterations write the per-token lens to TensorBoard (lens/* tags: a few "
                                 "episodes token by token, histograms; docs/lens.md); the on-policy agents (reinforce, "
                                 "remax, ppo, rloo, grpo) write it; 0: off", Integer(0))


# ---------------------------------------------------------------------------------------------- env rules
def require_synchronised_episodes(env: Any, agent: str) -> None:
    """Native on-policy agents play whole episodes in lock-step: ``autoreset_mode="disabled"``."""
    if env.autoreset_mode != "disabled":
        raise InputError(f"env: {agent} plays synchronised episodes; build the env with autoreset_mode='disabled'")


def check_minibatches(num_minibatches: int, env: Any) -> None:
    """Minibatches are sets of episodes: at most ``env.num_envs`` of them."""
    if num_minibatches > env.num_envs:
        raise InputError(f"num_minibatches={num_minibatches} must be <= env.num_envs={env.num_envs} (episodes)")


def require_groups(env: Any, agent: str, reason: str) -> None:
    """Group-based agents compare K >= 2 completions of each prompt (``env.group_size``, K consecutive rows);
    ``reason`` says what the group is for."""
    if env.group_size < 2:
        raise InputError(f"env.group_size={env.group_size}: {agent} {reason}; build the env with group_size=K "
                         "(e.g. 4) and num_envs a multiple of K")

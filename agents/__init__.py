"""RL agents that train a TextGen-v0 policy, and a registry so swapping algorithms is one name.

    agent = make_agent("reinforce", env, learning_rate=1e-4)
    agent.learn(total_timesteps=20_000)
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from textenv.agents.base import SCALARS, Agent
from textenv.agents.config import AgentConfig
from textenv.agents.dpo import DPO, LRML, DPOConfig, LRMLConfig
from textenv.agents.gradient_step import TrainingDivergedError
from textenv.agents.grpo import GRPO, GRPOConfig
from textenv.agents.ilql import ILQL, ILQLConfig
from textenv.agents.ppo import PPO, PPOConfig
from textenv.agents.reinforce import Reinforce, ReinforceConfig
from textenv.agents.remax import ReMax, ReMaxConfig
from textenv.agents.rloo import RLOO, RLOOConfig
from textenv.agents.sft import SFT, SFTConfig
from textenv.config import did_you_mean
from textenv.validation import InputError


class AgentRegistry(Mapping[str, "type[Agent]"]):
    """Agent name → class. Classes registered by path (``"module:Class"``) are imported on first use, so
    ``import textenv.agents`` does not import stable-baselines3 until an SB3 agent is asked for."""

    def __init__(self) -> None:
        self._entries: dict[str, type[Agent] | str] = {}

    def register(self, name: str, entry: type[Agent] | str) -> None:
        self._entries[name] = entry

    def __getitem__(self, name: str) -> type[Agent]:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


#: Every registered agent, by name (``sorted(AGENTS)`` lists the names without importing SB3).
AGENTS = AgentRegistry()


def register_agent(cls: type[Agent]) -> type[Agent]:
    """Add an :class:`Agent` subclass under its ``name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute `name` to be registered")
    AGENTS.register(cls.name, cls)
    return cls


def agent_class(name: str) -> type[Agent]:
    """The registered class for ``name``; a clear error lists the valid names."""
    if name not in AGENTS:
        raise InputError(f"agent {name!r} is not registered; choose one of {sorted(AGENTS)}"
                         + did_you_mean(name, AGENTS))
    return AGENTS[name]


def make_agent(name: str, env: Any, **hyperparameters: Any) -> Agent:
    """Build agent ``name`` on ``env``: ``agent_class(name)(env, **hyperparameters)``. The keyword arguments are
    fields of its ``config_class`` (an unknown one is refused with the valid ones), ``config=`` a whole config,
    or ``tensorboard_log`` / ``verbose``."""
    return agent_class(name)(env, **hyperparameters)


for _cls in (Reinforce, PPO, RLOO, GRPO, ReMax, SFT, DPO, LRML, ILQL):
    register_agent(_cls)
#: The SB3 agents, imported with stable-baselines3 when first used.
_SB3_AGENTS = {"sb3-ppo": "SB3PPO", "sb3-a2c": "SB3A2C", "maskable-ppo": "MaskablePPOAgent"}
for _name, _class_name in _SB3_AGENTS.items():
    AGENTS.register(_name, f"textenv.agents.sb3.agents:{_class_name}")


def __getattr__(name: str) -> Any:
    if name in _SB3_AGENTS.values():  # `from textenv.agents import SB3PPO` imports SB3 only then
        from textenv.agents.sb3 import agents as sb3_agents

        return getattr(sb3_agents, name)
    raise AttributeError(f"module 'textenv.agents' has no attribute {name!r}")


__all__ = ["AGENTS", "DPO", "GRPO", "LRML", "PPO", "RLOO", "ReMax", "ReMaxConfig", "SB3A2C", "SB3PPO", "SCALARS",
           "SFT", "Agent", "AgentConfig", "ILQL", "ILQLConfig",
           "DPOConfig", "GRPOConfig", "LRMLConfig", "MaskablePPOAgent", "PPOConfig", "RLOOConfig", "Reinforce",
           "ReinforceConfig", "SFTConfig", "TrainingDivergedError", "agent_class", "make_agent", "register_agent"]

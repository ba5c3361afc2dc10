"""The task suite: five tasks on the embedded review model, each a registered Gymnasium id.

A :class:`Task` is what a comparison of algorithms needs to train and score one task the same way every time:
the Gymnasium id, the gold scorer (a reward-model spec, reward_models/tasks.py), the training and held-out
prompts, and the completion length. ``import textenv`` registers every id, so::

    import gymnasium as gym
    import textenv

    env = gym.make("TextGenLength-v0")                        # one episode at a time
    envs = gym.make_vec("TextGenLength-v0", num_envs=32)      # the native batched env
    task = textenv.TASKS["length"]
    envs = TextGenVectorEnv(**{**task.env_kwargs(), "num_envs": 32, "autoreset_mode": "disabled"})
    evaluate_policy(policy, prompts=task.held_out_prompts(), gold=task.gold, max_new_tokens=task.max_new_tokens)

All tasks run offline (no download) and pull in different directions: the same completion cannot score well on
positive and negative, and the length, topic and avoid-word tasks ask for things sentiment does not. The
untrained and trained scores are in docs/tasks.md (measured by ``benchmarks/tasks.py``).

Stable names (a comparison script relies on them): :data:`TASKS`, :class:`Task` with its fields ``name``,
``env_id``, ``gold`` and ``max_new_tokens`` and its methods :meth:`Task.env_kwargs`, :meth:`Task.train_prompts`,
:meth:`Task.held_out_prompts`, :meth:`Task.make_gold`, and :func:`get_task`.

This module imports neither torch nor the reward models until a method needs them (``import textenv`` stays light).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textenv.config import did_you_mean
from textenv.validation import InputError


@dataclass(frozen=True)
class Task:
    """One task of the suite.

    Attributes:
        name: short name, the key in :data:`TASKS` (``"positive"``).
        env_id: the registered Gymnasium id (``"TextGen-v0"``).
        description: what the task rewards, one sentence.
        gold: the gold scorer as a reward-model spec (a registered name such as ``"vader"`` or a family form such
            as ``"target-length:10"``): accepted wherever a reward model is (``make_reward_model``,
            ``evaluate_policy(gold=...)``, the env's ``reward_model=``, ``textenv train --reward-model``). The env
            of the task trains on this same scorer.
        max_new_tokens: the completion length limit T (tokens) of training and evaluation.
        prompts: the prompt source (:func:`textenv.prompts.load_prompts`); ``"builtin"`` means the built-in review
            openings, split into :attr:`train_split` (trained on) and :attr:`held_out_split` (scored only).
        train_split: the built-in split trained on.
        held_out_split: the built-in split of the held-out evaluation.
    """

    name: str
    env_id: str
    description: str
    gold: str
    max_new_tokens: int = 32
    prompts: Any = "builtin"
    train_split: str = "train"
    held_out_split: str = "eval"

    def env_kwargs(self) -> dict[str, Any]:
        """The :class:`~textenv.vector_env.TextGenVectorEnv` keyword arguments that make this task's env (all JSON):
        ``reward_model``, ``prompts``, ``prompt_split`` and ``max_new_tokens``. Add the rest (``num_envs``,
        ``kl_coef``, ``model``...) yourself: ``TextGenVectorEnv(**{**task.env_kwargs(), "num_envs": 32})``."""
        return {"reward_model": self.gold, "prompts": self.prompts, "prompt_split": self.train_split,
                "max_new_tokens": self.max_new_tokens}

    def train_prompts(self) -> list[Any]:
        """The prompts the task trains on."""
        from textenv.prompts import load_prompts

        return load_prompts(self.prompts, self.train_split)

    def held_out_prompts(self) -> list[Any]:
        """The held-out prompts the task is scored on (never trained on)."""
        from textenv.prompts import load_prompts

        return load_prompts(self.prompts, self.held_out_split)

    def make_gold(self) -> Any:
        """The gold scorer as a :class:`~textenv.reward_models.RewardModel` (``make_reward_model(self.gold)``)."""
        from textenv.reward_models import make_reward_model

        return make_reward_model(self.gold)


#: Every task by name, ``TextGen-v0`` first. ``textenv.TASKS`` is this dict.
TASKS: dict[str, Task] = {task.name: task for task in (
    Task("positive", "TextGen-v0",
         "positive sentiment: the VADER compound score of the completion, in [-1, 1]", gold="vader"),
    Task("negative", "TextGenNegative-v0",
         "negative sentiment: minus the VADER compound score of the completion, in [-1, 1]", gold="vader-negative"),
    Task("length", "TextGenLength-v0",
         "exactly 10 words: 1 - |words - 10| / 10, clipped at 0 (the review must end, with EOS, at the right word)",
         gold="target-length:10"),
    Task("topic", "TextGenTopic-v0",
         "talk about sound and music (soundtrack, vocals, speakers, noisy...) whatever is reviewed: distinct "
         "topic words mentioned / 2, capped at 1", gold="topic-sound"),
    Task("avoid", "TextGenAvoid-v0",
         "never say 'the' yet stay varied: distinct/total words (scaled down under 10 words) - 0.5 per 'the', "
         "clipped to [-1, 1]", gold="avoid-word:the"),
)}


def get_task(name: str) -> Task:
    """The task called ``name`` (a key of :data:`TASKS`) or registered as ``name`` (its Gymnasium id); anything
    else raises :class:`InputError` listing the tasks, with the closest name."""
    if name in TASKS:
        return TASKS[name]
    by_id = {task.env_id: task for task in TASKS.values()}
    if name in by_id:
        return by_id[name]
    raise InputError(f"task {name!r} is not one of {sorted(TASKS)} (or their ids {sorted(by_id)})"
                     + did_you_mean(name, [*TASKS, *by_id]))


def register_tasks() -> None:
    """Register every task's Gymnasium id (``TextGen-v0`` is registered by ``textenv/__init__.py`` with the env's
    own defaults, which are its task's)."""
    from gymnasium.envs.registration import register, registry

    for task in TASKS.values():
        if task.env_id not in registry:
            register(id=task.env_id, entry_point="textenv.env:TextGenEnv",
                     vector_entry_point="textenv.vector_env:TextGenVectorEnv", kwargs=task.env_kwargs())

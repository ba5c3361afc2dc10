"""textenv: token generation as a Gymnasium environment, for RL on language-model policies (RLHF).

``import textenv`` registers ``TextGen-v0``: ``gym.make("TextGen-v0")`` is one episode at a time,
``gym.make_vec("TextGen-v0", num_envs=B)`` the native batched env (the fast path). It also registers the
other tasks of the suite, ``textenv.TASKS`` (:mod:`textenv.tasks`, docs/tasks.md), each its own id. Importing
the package does not import torch; the model helpers below load on first use.

``gym.make_vec(..., vectorization_mode="sync" | "async")`` also work (one model per sub-env; an async worker
forked after torch ran computes with one thread, as torch's DataLoader workers do, since torch's OpenMP pool
cannot survive a fork). Worker processes that import nothing of the parent (``spawn``/``forkserver``, SB3's
``SubprocVecEnv``) need the module-prefixed id ``"textenv:TextGen-v0"``, which imports textenv there.
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

from textenv.tasks import TASKS, Task, get_task, register_tasks

__version__ = "0.1.0"

if "TextGen-v0" not in registry:
    register(
        id="TextGen-v0",
        entry_point="textenv.env:TextGenEnv",
        vector_entry_point="textenv.vector_env:TextGenVectorEnv",
    )

register_tasks()  # TextGenNegative-v0, TextGenLength-v0, TextGenTopic-v0, TextGenAvoid-v0

_MODEL_HELPERS = ("DEFAULT_MODEL", "load_causal_lm", "load_tokenizer", "resolve_device")


def __getattr__(name: str) -> Any:
    if name in _MODEL_HELPERS:
        from textenv.models import loading as models

        return getattr(models, name)
    raise AttributeError(f"module 'textenv' has no attribute {name!r}")


__all__ = ["TASKS", "Task", "__version__", "get_task", *_MODEL_HELPERS]

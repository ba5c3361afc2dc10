"""textenv: token generation as a Gymnasium environment, for RL on language-model policies (RLHF).

``import textenv`` registers ``TextGen-v0``: ``gym.make("TextGen-v0")`` is one episode at a time,
``gym.make_vec("TextGen-v0", num_envs=B)`` the native batched env (the fast path).
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from textenv.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_device

__version__ = "0.1.0"

if "TextGen-v0" not in registry:
    register(
        id="TextGen-v0",
        entry_point="textenv.env:TextGenEnv",
        vector_entry_point="textenv.vector_env:TextGenVectorEnv",
    )

__all__ = ["DEFAULT_MODEL", "__version__", "load_causal_lm", "load_tokenizer", "resolve_device"]

"""TextGen-v0 as a single Gymnasium ``Env``: one row of :class:`~textenv.vector_env.TextGenVectorEnv`.

The batched env is the implementation (and the fast path); this class unbatches it so that
``gym.make("TextGen-v0")``, ``check_env`` and any single-env algorithm work unchanged. It uses only the vector
env's public API (``reset``, ``step``, ``render``, ``next_token_logits`` and its spaces and attributes).

``gym.make`` returns this env inside Gymnasium's wrappers (``OrderEnforcing``, ``PassiveEnvChecker``), and Gymnasium
1.x wrappers do not forward attributes: ``env.policy`` on what ``gym.make`` returns is an ``AttributeError``. Reach
the env's own attributes and methods with ``env.unwrapped`` (``env.unwrapped.policy``,
``env.unwrapped.next_token_logits()``) or Gymnasium's ``env.get_wrapper_attr("policy")``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv, check_reset_options


class TextGenEnv(gym.Env):
    """Generate one completion token by token; see :class:`TextGenVectorEnv` for every argument.

    Observation: ``{"input_ids": int64 (W,), "attention_mask": int64 (W,)}``, left-padded.
    Action: a token id in ``Discrete(vocab_size)``. Reward: 0 until the last step, then
    r_φ(x, y) − β·KL (or the dense per-token form). ``info`` on the last step carries ``text``,
    ``prompt``, ``rm_score``, ``episode_kl`` and ``kl_coef``.

    ``step()`` before ``reset()``, or after the episode ended (terminated or truncated), raises
    :class:`~textenv.validation.InputError` saying to call ``reset()``; so does an action that is not one int
    token id in ``[0, vocab_size)``.

    For a policy of your own (the models are reached through ``env.unwrapped`` when ``gym.make`` made the env):
    :attr:`policy` π_θ, :attr:`reference` π_ref, :attr:`tokenizer`, :meth:`next_token_logits`, and
    :func:`textenv.logprobs.observation_logprobs` (log π(a|s) of observations, left padding handled, with
    gradients). The KL penalty is computed with :attr:`policy`: an actor that is another network should be made the
    env's policy with :meth:`set_policy` (see docs/rl-framing.md, "Whose KL?").

    ``render_mode="ansi"`` / ``"human"`` and ``render_top_k``: see :meth:`render`.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if kwargs.get("group_size", 1) != 1:
            raise InputError(f"group_size={kwargs['group_size']!r} applies to the vector env (gym.make_vec); the "
                             "single env has one row")
        kwargs.pop("autoreset_mode", None)
        self.vector_env = TextGenVectorEnv(num_envs=1, autoreset_mode="disabled", render_mode=render_mode, **kwargs)
        self.render_mode = render_mode
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space
        self._started = False
        self._done = True

    @property
    def policy(self) -> torch.nn.Module:
        """The trainable policy model π_θ."""
        return self.vector_env.policy

    @property
    def reference(self) -> torch.nn.Module | None:
        """The frozen reference model π_ref of the KL penalty (``None`` when ``kl_coef=0``)."""
        return self.vector_env.reference

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The policy's tokenizer (decodes actions: token ids)."""
        return self.vector_env.tokenizer

    def set_policy(self, model: torch.nn.Module) -> None:
        """Make ``model`` the env's policy π_θ: the env then computes ``info["logprob"]``, the next-token logits and
        the KL penalty with it (see :meth:`TextGenVectorEnv.set_policy`)."""
        self.vector_env.set_policy(model)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Draw a prompt (``options={"prompt": str}`` forces one) and return the first observation."""
        super().reset(seed=seed)
        options = dict(check_reset_options(options, ("prompt",)))
        if "prompt" in options:
            if not isinstance(options["prompt"], str):
                raise InputError(f"options['prompt'] must be a prompt string, got {type(options['prompt']).__name__}")
            options["prompts"] = [options.pop("prompt")]
        if seed is not None:
            obs, info = self.vector_env.reset(seed=seed, options=options)
        else:
            obs, info = self.vector_env.reset(options=options)
        self._started, self._done = True, False
        return _row(obs), {"prompt": str(info["prompt"][0])}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Append the token ``action``; returns ``(obs, reward, terminated, truncated, info)`` of this one row."""
        if not self._started:
            raise InputError("step() before reset(): call env.reset() first")
        if self._done:
            raise InputError("the episode has ended (terminated or truncated): call env.reset() before step()")
        vocab = self.action_space.n
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)) and not (
            isinstance(action, np.ndarray) and action.shape in ((), (1,)) and action.dtype.kind in "iu"
        ):
            raise InputError(f"action must be one int token id in [0, {vocab}) (the action space), got {action!r}")
        token = int(action.reshape(-1)[0]) if isinstance(action, np.ndarray) else int(action)
        if not 0 <= token < vocab:
            raise InputError(f"action={token} is outside the action space: token ids are in [0, {vocab})")
        obs, rewards, terminated, truncated, info = self.vector_env.step(np.array([token]))
        self._done = bool(terminated[0] or truncated[0])
        row_info = {k: v[0] for k, v in info.items() if not k.startswith("_") and info.get(f"_{k}", [True])[0]}
        return _row(obs), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), row_info

    def render(self) -> str | None:
        """The state as text (:mod:`textenv.render`): the prompt, the tokens so far with visible boundaries, the last
        action with log π_θ and log π_ref, Σ KL so far, π_θ's top ``render_top_k`` next tokens with their π_θ and
        π_ref probabilities, and on the last step the completion, r_φ, Σ KL, β and R = r_φ − β·Σ KL.
        ``"ansi"`` returns the string; ``"human"`` prints it (also at every ``reset`` and ``step``) and returns
        ``None``."""
        return self.vector_env.render()

    def next_token_logits(self) -> torch.Tensor:
        """π_θ's next-token logits for the current state, shape ``(V,)`` float32, no grad (already computed by the
        env's cached forward: sample from ``softmax`` of them instead of running the policy again)."""
        return self.vector_env.next_token_logits()[0]


def _row(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value[0] for key, value in obs.items()}

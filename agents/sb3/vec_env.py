"""An SB3 ``VecEnv`` over the batched TextGen env (one row = one SB3 sub-environment); see the package docstring."""

from __future__ import annotations

import time
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from textenv.action_masks import top_k_mask, top_p_mask
from textenv.agents.sb3.policy import SharedLanguageModel, TextGenPolicyMixin
from textenv.validation import InputError, check_int, check_number
from textenv.vector_env import TextGenVectorEnv, unwrap_vector_env


class TextGenSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` view of a :class:`TextGenVectorEnv` (row i = sub-environment i).

    Args:
        env: a ``TextGenVectorEnv`` built with ``autoreset_mode="disabled"`` (this adapter resets finished
            rows itself, SB3-style), or a Gymnasium wrapper around one (the adapter drives ``env.unwrapped``).
            ``None``: build one from ``env_kwargs``.
        mask_top_k: :meth:`action_masks` allows the k most likely tokens of the mask model (``None``: off).
        mask_top_p: :meth:`action_masks` allows the top-p nucleus of the mask model (``None``: off). With
            both set a token must pass both.
        mask_allow_eos: EOS is always allowed by :meth:`action_masks`, so the policy can always end.
        **env_kwargs: ``TextGenVectorEnv`` arguments when ``env`` is ``None``.

    Step semantics (SB3 ``VecEnv`` API): ``step(actions)`` returns ``(obs, rewards float32 (B,), dones bool
    (B,), infos list of B dicts)``. Every info has ``"logprob"`` (this step, nats). A row that
    finished also has ``"terminal_observation"`` (its last obs), ``"episode": {"r", "l", "t"}`` (return,
    length in tokens, seconds since start; Monitor's format), ``"text"``, ``"prompt"``, ``"rm_score"``,
    ``"episode_kl"``, ``"kl_coef"``, ``"num_tokens"``, ``"truncated"``, and is already restarted: its obs
    is the new episode's prompt. ``"TimeLimit.truncated"`` is always False: at ``max_new_tokens`` the env
    has paid the complete return (the RM score), so SB3 must not bootstrap a value after it.
    """

    def __init__(
        self,
        env: TextGenVectorEnv | None = None,
        mask_top_k: int | None = None,
        mask_top_p: float | None = None,
        mask_allow_eos: bool = True,
        **env_kwargs: Any,
    ) -> None:
        if env is None:
            if env_kwargs.get("autoreset_mode", "disabled") != "disabled":
                raise InputError("TextGenSB3VecEnv resets finished rows itself: leave autoreset_mode unset")
            env = TextGenVectorEnv(**{**env_kwargs, "autoreset_mode": "disabled"})
        elif env_kwargs:
            raise InputError(f"pass either env or env keyword arguments, not both (got {sorted(env_kwargs)})")
        env = unwrap_vector_env(env)
        if env.autoreset_mode != "disabled":
            raise InputError(
                "TextGenSB3VecEnv resets finished rows in the same step (SB3 semantics): build the env with "
                "autoreset_mode='disabled'"
            )
        if env.group_size != 1:
            raise InputError("SB3 rows restart independently: build the env with group_size=1")
        if mask_top_k is not None:
            check_int("mask_top_k", mask_top_k, minimum=1)
        check_number("mask_top_p", mask_top_p, low=0, low_open=True, high=1, none_ok=True)
        if not isinstance(mask_allow_eos, bool):
            raise InputError(f"mask_allow_eos={mask_allow_eos!r} must be True or False")
        self.env = env
        self.mask_top_k = mask_top_k
        self.mask_top_p = mask_top_p
        self.mask_allow_eos = mask_allow_eos
        #: The TextGen policy that acts on this env (set when one is built from :meth:`policy_kwargs` or by
        #: :meth:`attach`); ``None`` means some other policy (e.g. SB3's ``MultiInputPolicy``) chooses tokens.
        self.linked_policy: TextGenPolicyMixin | None = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._start_time = time.time()
        self._checked_policy = False

    # ------------------------------------------------------------------ policy wiring
    def policy_kwargs(self, **extra: Any) -> dict[str, Any]:
        """``policy_kwargs`` for :class:`TextGenActorCriticPolicy` / :class:`TextGenMaskablePolicy`: the
        policy then wraps this env's LM (shared, trained in place). ``extra`` is merged in."""
        return {"lm": SharedLanguageModel(self), **extra}

    def attach(self, model: BaseAlgorithm) -> None:
        """Make this env generate with ``model``'s LM, e.g. after ``PPO.load(path, env=venv)``.

        The loaded policy's LM (with the saved weights) becomes ``env.policy``, so the env's per-token KL and
        cached logits use the weights being trained. The reference π_ref stays the env's. SB3 resets the env
        at the next ``learn()``.
        """
        policy = model.policy
        if not isinstance(policy, TextGenPolicyMixin):
            raise TypeError(f"attach() needs a model with a TextGen policy, got {type(policy).__name__}")
        self.env.set_policy(policy.lm)
        policy.venv = self
        self.linked_policy = policy
        model._last_obs = None  # type: ignore[assignment]  # new episodes, generated by the attached weights

    def refresh_cache(self) -> None:
        """Recompute the env's cached state (both KV caches, next-token logits) from every row's tokens with
        the current weights. The linked policy calls this when SB3 returns from an update to collecting, so
        episodes that span an update continue with the new π_θ (for sampling and for the env's KL)."""
        self.env.refresh_cache()

    # ------------------------------------------------------------------ checkpoints of episodes in progress
    def episode_state(self) -> dict[str, Any]:
        """The episodes in progress, for checkpoints of agents whose SB3 rollouts end mid-episode: ``"env"`` (the
        env's rows, :meth:`TextGenVectorEnv.episode_state`), ``"returns"`` float64 ``(B,)`` and ``"lengths"``
        int64 ``(B,)`` (each row's return and tokens so far, for the ``"episode"`` infos) and ``"reset_infos"``.
        SB3's own last observation is the algorithm's to save."""
        return {"env": self.env.episode_state(), "returns": self._returns.copy(), "lengths": self._lengths.copy(),
                "reset_infos": list(self.reset_infos)}

    def load_episode_state(self, state: dict[str, Any]) -> None:
        """Continue the episodes of :meth:`episode_state` (the env's caches are recomputed with its current
        weights). Other keys of ``state`` are ignored."""
        self.env.load_episode_state(state["env"])
        self._returns = np.array(state["returns"], dtype=np.float64)
        self._lengths = np.array(state["lengths"], dtype=np.int64)
        self.reset_infos = list(state["reset_infos"])

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> dict[str, np.ndarray]:
        """Start B new episodes. Uses the seed from :meth:`seed` and per-row ``{"prompt": str}`` options
        from ``set_options`` once, as SB3's VecEnvs do."""
        options: dict[str, Any] = {}
        row_options = [opts or {} for opts in self._options]
        unknown = sorted({key for opts in row_options for key in opts} - {"prompt"})
        if unknown:
            raise InputError(f"unsupported reset option(s) {unknown}; TextGenSB3VecEnv accepts {{'prompt': str}}")
        prompts = [opts.get("prompt") for opts in row_options]
        if any(p is not None for p in prompts):
            if any(p is None for p in prompts):
                raise InputError("set_options: give a 'prompt' for every row or for none")
            options["prompts"] = prompts
        seed = self._seeds[0]
        obs, info = self.env.reset(seed=seed, options=options or None)
        self.reset_infos = [{"prompt": info["prompt"][i]} for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        if not self._checked_policy:
            self._check_policy()
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        obs, rewards, terminated, truncated, info = self.env.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        self._returns += rewards
        self._lengths += 1
        infos: list[dict[str, Any]] = [
            {"logprob": float(info["logprob"][i])} for i in range(self.num_envs)
        ]
        done_rows = np.flatnonzero(dones)
        for i in done_rows:
            row = infos[i]
            row["terminal_observation"] = {key: value[i].copy() for key, value in obs.items()}
            row["TimeLimit.truncated"] = False  # the return is complete at the length limit: no bootstrap
            row["truncated"] = bool(truncated[i])
            row["episode"] = {
                "r": float(self._returns[i]),
                "l": int(self._lengths[i]),
                "t": round(time.time() - self._start_time, 6),
            }
            for key in ("prompt", "text", "rm_score", "episode_kl", "kl_coef", "num_tokens"):
                value = info[key][i]
                row[key] = value.item() if isinstance(value, np.generic) else value
        if done_rows.size:
            obs, reset_info = self.env.reset(options={"reset_mask": dones})
            for i in done_rows:
                self.reset_infos[i] = {"prompt": reset_info["prompt"][i]}
            self._returns[done_rows] = 0.0
            self._lengths[done_rows] = 0
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    def seed(self, seed: int | None = None) -> list[int | None]:
        """Seed the next :meth:`reset` (all rows share the batched env's one prompt sampler: ``seed`` is used
        once, as ``env.reset(seed=seed)``)."""
        return list(super().seed(seed))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The rows are one batched env, so attributes are shared: the same value for every index.
        ``action_masks`` resolves to this adapter's method (MaskablePPO checks for it)."""
        target = self if attr_name == "action_masks" else self.env
        value = getattr(target, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the batched env (shared by all rows, so ``indices`` must cover every row)."""
        if sorted(self._get_indices(indices)) != list(range(self.num_envs)):
            raise InputError(f"rows share the batched env: set_attr({attr_name!r}) must target all rows")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """``"action_masks"`` returns row i's mask ``(V,)`` for each index. Any other method is called once
        on the batched env and its result repeated for every index."""
        rows = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in rows]
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in rows]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """No Gymnasium wrappers; reports ``Monitor`` as present because the infos already carry Monitor's
        ``"episode"`` statistics (so ``evaluate_policy`` uses them)."""
        return [wrapper_class is Monitor for _ in self._get_indices(indices)]

    def render(self, mode: str | None = None) -> str | None:  # type: ignore[override]
        """``"ansi"`` text of every row (the env must have ``render_mode="ansi"``)."""
        return self.env.render()

    # ------------------------------------------------------------------ masks (sb3-contrib MaskablePPO)
    def action_masks(self) -> np.ndarray:
        """Bool ``(B, V)``: tokens allowed at the current state of every row (NLPO, Ramamurthy et al. 2022).

        The mask model is the frozen reference π_ref (``env.reference_next_token_logits()``); with ``kl_coef=0``
        the env loads no reference, so the policy's own current logits are used instead (a mask that moves with
        the policy). All tokens are allowed when neither ``mask_top_k`` nor ``mask_top_p`` is set.
        """
        logits = self.env.reference_next_token_logits()
        if logits is None:
            logits = self.env.next_token_logits()
        if logits is None:
            raise RuntimeError("call reset() before action_masks()")
        mask = torch.ones_like(logits, dtype=torch.bool)
        allow = [self.env.eos_token_id] if self.mask_allow_eos else None
        if self.mask_top_k is not None:
            mask &= top_k_mask(logits, self.mask_top_k, allow)
        if self.mask_top_p is not None:
            mask &= top_p_mask(logits, self.mask_top_p, allow)
        return mask.cpu().numpy()

    # ------------------------------------------------------------------ the generic-policy check
    def _check_policy(self) -> None:
        """On the first step, warn when no TextGen policy drives the env.

        SB3's generic ``MultiInputPolicy`` runs on this env (token ids reach its MLP as unnormalised
        floats, its action layer is 64 x V), but it is not the env's language model: it starts from
        uniform-ish random tokens, and the env's KL penalty, computed with ``env.policy``, which it does not
        train, stays at its initial value and does not constrain it.
        """
        self._checked_policy = True
        if self.linked_policy is not None:
            return
        vocab = int(self.action_space.n)  # type: ignore[attr-defined]
        warnings.warn(
            "no TextGen policy is attached to this env: the actions come from another policy (e.g. SB3's "
            f"MultiInputPolicy, an MLP on raw token ids with a 64 x {vocab} action layer). It does not use the "
            "language model, and the env's KL penalty is computed with env.policy, which it does not train. "
            "For RLHF use PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs()) "
            "(MaskablePPO: TextGenMaskablePolicy) from textenv.agents.sb3, or venv.attach(model) after "
            "PPO.load(path, env=venv). (Choosing tokens yourself from venv.env.next_token_logits()? Then "
            "ignore this.)",
            UserWarning,
            stacklevel=2,
        )

"""stable-baselines3 / sb3-contrib on TextGen-v0: a ``VecEnv`` adapter, a transformer policy, and agents.

Three pieces, usable separately (SB3 and sb3-contrib are used unmodified):

* :class:`TextGenSB3VecEnv` — an SB3 ``VecEnv`` over the batched :class:`~textenv.vector_env.TextGenVectorEnv`
  (one row = one SB3 sub-environment). SB3 semantics: a finished row is reset *in the same step*, the
  returned observation is the new episode's first one, and ``infos[i]["terminal_observation"]`` holds the
  last one. Infos carry Monitor-style ``"episode"`` dicts, so SB3's ``ep_info_buffer`` / logging work.
  ``action_masks()`` gives NLPO-style top-k / top-p masks of the reference model (sb3-contrib MaskablePPO).
* :class:`TextGenActorCriticPolicy` / :class:`TextGenMaskablePolicy` — SB3 policies whose actor *is* the
  env's causal LM (``TextGenVectorEnv.policy``: the same object the env computes its KL with) and whose critic is a
  linear value head on the LM's last hidden state. Token ids go straight from the Dict observation into the
  LM as integers (no float feature extractor). The action distribution is the LM's next-token softmax, so
  SB3's PPO clipped objective (Schulman et al. 2017; ``shared/rlhf-notes.md``, "PPO") is exactly the
  RLHF PPO of InstructGPT, with the env's KL-penalised reward (InstructGPT eq. 2).
* :class:`SB3PPO` (``"sb3-ppo"``), :class:`SB3A2C` (``"sb3-a2c"``), :class:`MaskablePPOAgent`
  (``"maskable-ppo"``) — :class:`~textenv.agents.base.Agent` subclasses: ``train_iteration()`` = one SB3
  rollout of ``n_steps`` per row + one SB3 update, reported with the shared scalar names.

Plain SB3 usage::

    venv = TextGenSB3VecEnv(num_envs=8, max_new_tokens=24)
    model = PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs(), n_steps=24, gamma=1.0)
    model.learn(10_000)
    model.save("ppo_textgen.zip")
    loaded = PPO.load("ppo_textgen.zip")                # predict() works at once
    resumed = PPO.load("ppo_textgen.zip", env=venv)
    venv.attach(resumed)                                # the env now generates with the loaded weights
    resumed.learn(10_000)
"""

from __future__ import annotations

import time
import warnings
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from textenv.action_masks import top_k_mask, top_p_mask
from textenv.agents.base import Agent
from textenv.agents.gradient_step import (
    WEIGHTS_DAMAGED,
    WEIGHTS_UNCHANGED,
    TrainingDivergedError,
    all_finite,
    diverged,
    first_nonfinite,
)
from textenv.lora import is_peft_model
from textenv.validation import InputError, check_choice, check_int, check_number
from textenv.vector_env import TextGenVectorEnv, disable_dropout


# ====================================================================== the VecEnv adapter
class TextGenSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` view of a :class:`TextGenVectorEnv` (row i = sub-environment i).

    Args:
        env: a ``TextGenVectorEnv`` built with ``autoreset_mode="disabled"`` (this adapter resets finished
            rows itself, SB3-style). ``None``: build one from ``env_kwargs``.
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
        if not isinstance(env, TextGenVectorEnv):
            raise InputError(
                f"env must be a TextGenVectorEnv (gym.make_vec('TextGen-v0', ..., autoreset_mode='disabled')), "
                f"got {type(env).__name__}"
            )
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
        disable_dropout(policy.lm)
        self.env.policy = policy.lm
        self.env.engine.policy = policy.lm
        policy.venv = self
        self.linked_policy = policy
        model._last_obs = None  # type: ignore[assignment]  # new episodes, generated by the attached weights

    def refresh_cache(self) -> None:
        """Recompute the env's cached state (both KV caches, next-token logits) from every row's tokens with
        the current weights. The linked policy calls this when SB3 returns from an update to collecting, so
        episodes that span an update continue with the new π_θ (for sampling and for the env's KL)."""
        self.env.engine.refresh()

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

        The mask model is the frozen reference π_ref (``env.engine.ref_logits``); with ``kl_coef=0`` the env
        loads no reference, so the policy's own current logits are used instead (a mask that moves with
        the policy). All tokens are allowed when neither ``mask_top_k`` nor ``mask_top_p`` is set.
        """
        engine = self.env.engine
        logits = engine.ref_logits if engine.ref_logits is not None else engine.policy_logits
        if logits is None:
            raise RuntimeError("call reset() before action_masks()")
        mask = torch.ones_like(logits, dtype=torch.bool)
        allow = [engine.eos_token_id] if self.mask_allow_eos else None
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


# ====================================================================== the transformer policy
class SharedLanguageModel:
    """``policy_kwargs["lm"]``: the env's causal LM by reference; pickles as its config only.

    SB3's ``model.save()`` pickles ``policy_kwargs`` (cloudpickle) besides the policy's ``state_dict``. The
    weights are in the state_dict already, so this handle pickles to its config: ``PPO.load()`` rebuilds
    the architecture with ``AutoModelForCausalLM.from_config`` and SB3's ``load_state_dict`` fills in the
    weights. Such a rebuilt policy is not linked to any env (see :meth:`TextGenSB3VecEnv.attach`).
    """

    def __init__(self, venv: TextGenSB3VecEnv | None = None, config: dict[str, Any] | None = None,
                 dtype: str = "float32", peft_config: dict[str, Any] | None = None) -> None:
        if venv is None and config is None:
            raise ValueError("SharedLanguageModel needs a TextGenSB3VecEnv or a model config dict")
        self.venv = venv
        if venv is not None:
            model = venv.env.policy
            config = model.config.to_dict()
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            if is_peft_model(model):  # LoRA (env lora=...): rebuild the same adapters around the base
                peft_config = model.peft_config["default"].to_dict()
        self.config = config
        self.dtype = dtype
        self.peft_config = peft_config

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedLanguageModel, (None, self.config, self.dtype, self.peft_config))

    def __repr__(self) -> str:
        source = "linked to an env" if self.venv is not None else "config only"
        return f"SharedLanguageModel({self.config.get('model_type')!r}, {source})"

    def build(self) -> PreTrainedModel:
        """The env's live model, or a new one with this config (random weights, to be loaded by SB3)."""
        if self.venv is not None:
            return self.venv.env.policy
        config = dict(self.config)
        config_obj = AutoConfig.for_model(config.pop("model_type"), **config)
        model = AutoModelForCausalLM.from_config(config_obj, dtype=getattr(torch, self.dtype))
        if self.peft_config is not None:
            from peft import get_peft_config, get_peft_model

            model = get_peft_model(model, get_peft_config(dict(self.peft_config)))
        disable_dropout(model)
        return model


class TextGenPolicyMixin:
    """Actor-critic on a causal LM, for SB3's ``ActorCriticPolicy`` and sb3-contrib's
    ``MaskableActorCriticPolicy`` (use :class:`TextGenActorCriticPolicy` / :class:`TextGenMaskablePolicy`).

    * actor π_θ(a|s): softmax of the LM's next-token logits at the last (most recent) position;
    * critic V(s): a linear head on the LM's last hidden state there (zero-initialised, so V starts at 0
      and the trunk only sees value gradients once the head has learned something);
    * input: ``obs["input_ids"]`` / ``obs["attention_mask"]`` ``(N, W)``, right-aligned as TextGen emits
      them, used as integer token ids. Columns that are padding in every row are dropped before the
      forward; position ids count real tokens only, exactly as the env's cached forward does, so the
      rollout log-probs match the env's ``info["logprob"]``.

    Cost: during rollouts SB3 calls the policy once per step for the batch. When the observation is the
    env's current state, the env's cached forward already holds the logits and (with
    ``GenerationEngine.policy_hidden``) the hidden state for the value head, so no forward runs; otherwise
    one forward over the window. In updates, samples that are prefixes of other samples share one forward
    (see :meth:`logits_and_values`), so use minibatches of whole rollouts (the agents' default
    ``batch_size=None``). After each update the env's cache is recomputed with the new weights.

    Keyword argument ``lm``: a :class:`SharedLanguageModel` (``venv.policy_kwargs()`` gives one).
    """

    lm: PreTrainedModel
    value_head: torch.nn.Linear

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule,
                 lm: SharedLanguageModel | None = None, **kwargs: Any) -> None:
        if not isinstance(lm, SharedLanguageModel):
            raise TypeError(
                "TextGen policies need policy_kwargs=venv.policy_kwargs() (a SharedLanguageModel under 'lm'), "
                f"got lm={lm!r}"
            )
        if not isinstance(action_space, spaces.Discrete):
            raise TypeError(f"TextGen policies act on Discrete(vocab_size) token actions, got {action_space}")
        keys = set(observation_space.spaces) if isinstance(observation_space, spaces.Dict) else set()
        if not {"input_ids", "attention_mask"} <= keys:
            raise TypeError(
                f"TextGen policies read Dict(input_ids, attention_mask) observations, got {observation_space}"
            )
        self._lm_spec = lm
        self.venv = lm.venv
        self._weights_changed = False  # trained since the env's cache was last recomputed
        self._linear_head: bool | None = None  # logits = output_embeddings(last hidden state)? (checked once)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)  # type: ignore[call-arg]
        if self.venv is not None:
            self.venv.linked_policy = self

    def _build(self, lr_schedule: Schedule) -> None:
        """Called by SB3's ``__init__``: the LM, the value head and the optimizer (no MLP extractor)."""
        self.lm = self._lm_spec.build()
        vocab = self.lm.get_output_embeddings().out_features
        self.num_actions = int(self.action_space.n)  # type: ignore[attr-defined]
        if vocab < self.num_actions:  # (a padded embedding matrix, vocab > num_actions, is fine: sliced off)
            raise ValueError(f"the LM has {vocab} output tokens but the action space has {self.num_actions}")
        hidden = self.lm.get_output_embeddings().in_features
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.value_head.to(next(self.lm.parameters()).device)
        self.optimizer = self.optimizer_class(  # type: ignore[attr-defined]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs  # type: ignore[attr-defined]
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data["lm"] = SharedLanguageModel(None, self._lm_spec.config, self._lm_spec.dtype, self._lm_spec.peft_config)
        return data

    # ------------------------------------------------------------------ the network
    def logits_and_values(self, obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits ``(N, V)`` float32 and values ``(N, 1)`` for a batch of observations.

        Samples whose tokens are a prefix of another sample's tokens (earlier steps of the same episode,
        which SB3 stores as separate observations) are read off that longer sample's forward: with causal
        attention the hidden state at a prefix's last position is the same. A PPO minibatch holding whole
        episodes then costs one forward per episode, as in the native agents, instead of one per token.
        Used when it at least halves the forwards; otherwise one forward per sample.
        """
        ids, mask = _token_inputs(obs)
        carriers, slot, offset = _shared_prefixes(ids, mask)
        if 2 * len(carriers) > ids.shape[0]:
            logits, hidden = self._forward_last(ids, mask, keep=1)
            return logits, self._values(hidden[:, -1])
        keep = int(offset.max()) + 1
        last_logits, hidden = self._forward_last(ids[carriers], mask[carriers], keep)  # (C, V), (C, K, H)
        selected = hidden[slot, keep - 1 - offset]  # a sample `offset` tokens shorter ends that far back
        head = self.lm.get_output_embeddings()
        if self._linear_head is None:  # is logits = head(last hidden state)? (not with e.g. logit soft-capping)
            with torch.no_grad():
                recomputed = head(hidden[:, -1]).float()[:, : self.num_actions]
                self._linear_head = bool(torch.allclose(recomputed, last_logits, rtol=1e-4, atol=1e-4))
        if self._linear_head:
            logits = head(selected).float()[:, : self.num_actions]
        else:  # let the model compute logits at every kept position
            positions = _positions(mask[carriers])
            out = self.lm(input_ids=ids[carriers], attention_mask=mask[carriers], position_ids=positions,
                          use_cache=False, logits_to_keep=keep)
            logits = out.logits[:, :, : self.num_actions].float()[slot, keep - 1 - offset]
        return logits, self._values(selected)

    def _forward_last(self, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """LM forward on right-aligned rows: logits at the last position ``(N, V)`` and last-layer hidden
        states at the last ``keep`` positions ``(N, keep, H)``."""
        first = int(mask.any(dim=0).int().argmax())  # drop the columns that are padding in every row
        ids, mask = ids[:, first:], mask[:, first:]
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False,
                      output_hidden_states=True, logits_to_keep=1)
        return out.logits[:, -1, : self.num_actions].float(), out.hidden_states[-1][:, -keep:]

    def _values(self, hidden: torch.Tensor) -> torch.Tensor:
        """V(s) ``(N, 1)`` from last-layer hidden states ``(N, H)``."""
        return self.value_head(hidden.to(self.value_head.weight.dtype))

    def _distribution(self, logits: torch.Tensor, action_masks: np.ndarray | torch.Tensor | None):
        distribution = self.action_dist.proba_distribution(action_logits=logits)  # type: ignore[attr-defined]
        if action_masks is not None:
            if not hasattr(distribution, "apply_masking"):
                raise TypeError("action masks need TextGenMaskablePolicy (sb3-contrib MaskablePPO)")
            distribution.apply_masking(action_masks)
        return distribution

    def _env_cached_outputs(self, obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Logits and values from the env's cached forward when ``obs`` is the env's current state.

        Needs the engine to keep π_θ's last hidden state (``GenerationEngine.policy_hidden``); the cache is
        recomputed after every update (:meth:`set_training_mode`), so this equals the full forward.
        """
        if self.venv is None or self._weights_changed or torch.is_grad_enabled():
            return None
        engine = self.venv.env.engine
        hidden = getattr(engine, "policy_hidden", None)
        if hidden is None or engine.policy is not self.lm or bool(engine.finished.any()):
            return None
        ids, mask = obs["input_ids"], obs["attention_mask"]  # type: ignore[index]
        if ids.dim() != 2 or ids.shape[0] != engine.batch_size:
            return None
        window_ids, window_mask = engine.window(ids.shape[1])
        if not (torch.equal(ids.long(), window_ids) and torch.equal(mask.long(), window_mask)):
            return None
        return engine.policy_logits[:, : self.num_actions], self._values(hidden)

    # ------------------------------------------------------------------ SB3's policy interface
    def set_training_mode(self, mode: bool) -> None:
        """SB3 enters training mode for each update and leaves it to collect. Leaving it after an update,
        the env's cached state is recomputed with the new weights (:meth:`TextGenSB3VecEnv.refresh_cache`)."""
        if mode:
            self._weights_changed = True
        elif self._weights_changed and self.venv is not None:
            self.venv.refresh_cache()
            self._weights_changed = False
        super().set_training_mode(mode)  # type: ignore[misc]

    def forward(self, obs: PyTorchObs, deterministic: bool = False,
                action_masks: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rollout step: actions ``(N,)``, values ``(N, 1)``, log π(a|s) ``(N,)``."""
        if self.venv is None:
            raise RuntimeError(
                "this TextGen policy was rebuilt from a saved config and is not linked to an env: the env would "
                "compute its KL penalty with different weights. Call venv.attach(model) after "
                "PPO.load(path, env=venv) before learn(); predict() works without it."
            )
        cached = self._env_cached_outputs(obs)
        logits, values = cached if cached is not None else self.logits_and_values(obs)
        distribution = self._distribution(logits, action_masks)
        actions = distribution.get_actions(deterministic=deterministic)
        return actions.reshape(-1), values, distribution.log_prob(actions)

    def evaluate_actions(self, obs: PyTorchObs, actions: torch.Tensor,
                         action_masks: np.ndarray | torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update step: values ``(N, 1)``, log π_θ(a|s) ``(N,)`` and entropy ``(N,)`` (nats)."""
        logits, values = self.logits_and_values(obs)
        distribution = self._distribution(logits, action_masks)
        return values, distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: PyTorchObs, action_masks: np.ndarray | None = None):
        """The next-token distribution (an SB3 ``CategoricalDistribution``; masked if masks are given)."""
        logits, _ = self.logits_and_values(obs)
        return self._distribution(logits, action_masks)

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        """V(s) ``(N, 1)``."""
        return self.logits_and_values(obs)[1]

    def _predict(self, observation: PyTorchObs, deterministic: bool = False,
                 action_masks: np.ndarray | None = None) -> torch.Tensor:
        return self.get_distribution(observation, action_masks).get_actions(deterministic=deterministic)


class TextGenActorCriticPolicy(TextGenPolicyMixin, ActorCriticPolicy):
    """:class:`TextGenPolicyMixin` for SB3's PPO and A2C."""


class TextGenMaskablePolicy(TextGenPolicyMixin, MaskableActorCriticPolicy):
    """:class:`TextGenPolicyMixin` for sb3-contrib's MaskablePPO (NLPO-style masks from the env)."""


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only (left padding does not shift them), as the env's engine."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def _shared_prefixes(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group right-aligned samples ``(N, W)`` by shared prefixes.

    Returns ``carriers`` (long ``(C,)``: the rows that are run through the model), and per sample ``slot``
    (long ``(N,)``: index into ``carriers`` of a row whose live tokens start with this sample's live tokens)
    and ``offset`` (long ``(N,)``: how many tokens that row is longer). Carriers are chosen longest first.
    """
    lengths = mask.sum(dim=1).tolist()
    rows = ids.cpu().numpy()
    width, shortest = rows.shape[1], min(lengths)
    owner: dict[bytes, tuple[int, int]] = {}  # live-token prefix -> (carrier slot, carrier length)
    carriers: list[int] = []
    slot, offset = [0] * len(lengths), [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda row: -lengths[row]):
        live = rows[i, width - lengths[i]:]
        hit = owner.get(live.tobytes())
        if hit is None:
            hit = (len(carriers), lengths[i])
            carriers.append(i)
            for end in range(shortest, lengths[i] + 1):
                owner.setdefault(live[:end].tobytes(), hit)
        slot[i], offset[i] = hit[0], hit[1] - lengths[i]
    return tuple(torch.tensor(values, dtype=torch.long, device=ids.device)  # type: ignore[return-value]
                 for values in (carriers, slot, offset))


def _token_inputs(obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` as long ``(N, W)``; checks the TextGen layout."""
    if not isinstance(obs, dict) or "input_ids" not in obs or "attention_mask" not in obs:
        raise TypeError("TextGen policies need Dict observations with 'input_ids' and 'attention_mask'")
    ids, mask = obs["input_ids"], obs["attention_mask"]
    if ids.is_floating_point():
        if not bool((ids == ids.round()).all()):
            raise ValueError("token ids arrived as non-integers: do not normalise TextGen observations "
                             "(e.g. with VecNormalize)")
        ids = ids.round()
    ids, mask = ids.long(), mask.long()
    if ids.dim() != 2 or ids.shape != mask.shape:
        raise ValueError(
            f"expected (N, W) input_ids and attention_mask, got {tuple(ids.shape)} and {tuple(mask.shape)}"
        )
    if not bool(mask[:, -1].all()):
        raise ValueError("observations must be right-aligned (left padding) with a real token in the last column")
    return ids, mask


# ====================================================================== agents
class _EpisodeStats(BaseCallback):
    """Collects the finished episodes' infos during one SB3 rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        self.episodes.extend(info for info in self.locals["infos"] if "episode" in info)
        return True


class _RefuseNonFiniteRollout(BaseCallback):
    """Stops SB3 before its update when the rollout's returns or advantages hold NaN or ±inf."""

    def __init__(self, agent: SB3Agent) -> None:
        super().__init__()
        self.agent = agent

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        for quantity in ("returns", "advantages"):
            bad = ~np.isfinite(getattr(buffer, quantity))
            if bad.any():
                raise diverged(self.agent, f"{int(bad.sum())} of {bad.size} {quantity} are non-finite",
                               max_grad_norm=self.model.max_grad_norm, rewards=buffer.rewards,
                               rewards_label="env rewards")


def check_sb3_arguments(
    n_steps: int | None, gamma: float, gae_lambda: float, ent_coef: float, vf_coef: float, max_grad_norm: float,
    normalize_advantage: bool,
) -> None:
    """The arguments every SB3 on-policy agent takes; :class:`InputError` naming the first bad one."""
    if n_steps is not None:
        check_int("n_steps", n_steps, 1)
    check_number("gamma", gamma, low=0.0, high=1.0)
    check_number("gae_lambda", gae_lambda, low=0.0, high=1.0)
    check_number("ent_coef", ent_coef, low=0.0)
    check_number("vf_coef", vf_coef, low=0.0)
    check_number("max_grad_norm", max_grad_norm, low=0.0, low_open=True)  # SB3 always clips: no None
    check_choice("normalize_advantage", normalize_advantage, (True, False))


def check_sb3_ppo_arguments(batch_size: int | None, n_epochs: int, clip_range: float, target_kl: float | None) -> None:
    """The arguments of the SB3 PPO agents besides :func:`check_sb3_arguments`'."""
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    check_int("n_epochs", n_epochs, 1)
    check_number("clip_range", clip_range, low=0.0, low_open=True)
    check_number("target_kl", target_kl, low=0.0, low_open=True, none_ok=True)


class SB3Agent(Agent):
    """Shared machinery: wraps an SB3 on-policy algorithm built on :class:`TextGenSB3VecEnv`.

    ``train_iteration()`` calls SB3's ``learn`` for exactly one rollout (``n_steps`` per row, i.e.
    ``n_steps * B`` tokens) followed by SB3's update. Episodes continue across iterations (SB3 keeps its
    last observation). The SB3 model is :attr:`model` (its policy's ``lm`` is ``env.policy``).
    Reported: the shared scalars (rollout ones averaged over the episodes that finished during the
    rollout, and absent when none did) plus SB3's own ``train/*`` values (``approx_kl``, ``value_loss``...).
    ``learning_rate`` is constant (SB3 schedules would restart every iteration).
    """

    algorithm: ClassVar[type[OnPolicyAlgorithm]]
    policy_class: ClassVar[type[ActorCriticPolicy] | type[MaskableActorCriticPolicy]] = TextGenActorCriticPolicy

    def _setup_sb3(self, n_steps: int | None, algorithm_kwargs: dict[str, Any],
                   mask_top_k: int | None = None, mask_top_p: float | None = None) -> None:
        self.n_steps = self.env.max_new_tokens if n_steps is None else n_steps
        self.algorithm_kwargs = algorithm_kwargs  # as given (saved by hyperparameters())
        rollout_size = self.n_steps * self.env.num_envs
        if "batch_size" in algorithm_kwargs:  # default: the whole rollout; at most the rollout; SB3 needs >= 2
            batch_size = algorithm_kwargs["batch_size"] or rollout_size
            algorithm_kwargs = {**algorithm_kwargs, "batch_size": max(2, min(batch_size, rollout_size))}
        self.venv = TextGenSB3VecEnv(self.env, mask_top_k=mask_top_k, mask_top_p=mask_top_p)
        self.model = self.algorithm(
            self.policy_class, self.venv, learning_rate=self.learning_rate, n_steps=self.n_steps,
            policy_kwargs=self.venv.policy_kwargs(), seed=self.seed, device=self.env.device, verbose=0,
            **algorithm_kwargs,
        )
        self.model.set_logger(Logger(folder=None, output_formats=[]))  # the Agent base logs to TensorBoard
        self.policy = self.model.policy.lm
        assert self.policy is self.env.policy
        self._guard_optimizer(self.model.policy.optimizer)

    def _guard_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """SB3 steps the optimizer itself: hooks refuse a non-finite gradient before every step (nothing is
        applied) and non-finite weights after it, with :class:`TrainingDivergedError`."""
        modules = {"policy": self.model.policy}

        def parameters() -> list[torch.Tensor]:
            return [p for group in optimizer.param_groups for p in group["params"]]

        def before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if not all_finite(p.grad for p in parameters() if p.grad is not None):
                # SB3 has clipped already, which spreads a NaN norm to every gradient: no parameter is named.
                raise self._diverged("the gradient is non-finite")

        def after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if not all_finite(parameters()):
                where = first_nonfinite(modules, gradients=False)
                raise self._diverged(f"the update made the weights non-finite (first: {where})", WEIGHTS_DAMAGED)

        optimizer.register_step_pre_hook(before_step)
        optimizer.register_step_post_hook(after_step)

    def _diverged(self, problem: str, weights: str = WEIGHTS_UNCHANGED) -> TrainingDivergedError:
        """:func:`~textenv.agents.gradient_step.diverged` with this SB3 rollout's rewards and clip norm."""
        return diverged(self, problem, weights, max_grad_norm=self.model.max_grad_norm,
                        rewards=self.model.rollout_buffer.rewards, rewards_label="env rewards")

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "n_steps": self.n_steps, **self.algorithm_kwargs}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.model.policy.optimizer}

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"value_head": self.model.policy.value_head}

    def _extra_state(self) -> dict[str, Any]:
        # SB3 rollouts cross episode boundaries, so a checkpoint holds the episodes in progress too: the env's
        # rows, SB3's last observation and episode-start flags, and the adapter's running returns/lengths.
        last_obs = self.model._last_obs
        return {
            "sb3_num_timesteps": self.model.num_timesteps,
            "sb3_n_updates": self.model._n_updates,
            "episodes": None if last_obs is None else {
                "env": self.env.episode_state(),
                "last_obs": {key: value.copy() for key, value in last_obs.items()},  # type: ignore[union-attr]
                "last_episode_starts": self.model._last_episode_starts.copy(),
                "returns": self.venv._returns.copy(),
                "lengths": self.venv._lengths.copy(),
                "reset_infos": list(self.venv.reset_infos),
            },
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.model.num_timesteps = state.get("sb3_num_timesteps", 0)
        self.model._n_updates = state.get("sb3_n_updates", 0)
        episodes = state.get("episodes")
        if episodes is None:  # saved before any rollout: the next learn() resets the env
            self.model._last_obs = None  # type: ignore[assignment]
            return
        self.env.load_episode_state(episodes["env"])  # recomputes the caches with the loaded weights
        self.model._last_obs = episodes["last_obs"]  # type: ignore[assignment]
        self.model._last_episode_starts = episodes["last_episode_starts"]
        self.venv._returns, self.venv._lengths = episodes["returns"], episodes["lengths"]
        self.venv.reset_infos = episodes["reset_infos"]

    def train_iteration(self) -> dict[str, float]:
        stats = _EpisodeStats()
        self.model.learn(total_timesteps=self.n_steps * self.env.num_envs,
                         callback=[stats, _RefuseNonFiniteRollout(self)], reset_num_timesteps=False,
                         progress_bar=False)
        sb3_values = dict(self.model.logger.name_to_value)
        for key, value in sb3_values.items():  # a backstop: a NaN loss has a NaN gradient, refused above
            if key.startswith("train/") and key.endswith("loss") and not np.isfinite(value):
                raise self._diverged(f"SB3 logged {key}={value}", WEIGHTS_DAMAGED)
        metrics: dict[str, float] = {"num_tokens": self.n_steps * self.env.num_envs,
                                     "rollout/kl_coef": self.env.kl_coef}
        episodes = stats.episodes
        if episodes:
            metrics["rollout/kl_coef"] = float(np.mean([e["kl_coef"] for e in episodes]))  # the β they paid
            metrics["rollout/reward"] = float(np.mean([e["episode"]["r"] for e in episodes]))
            metrics["rollout/rm_score"] = float(np.mean([e["rm_score"] for e in episodes]))
            metrics["rollout/kl"] = float(np.mean([e["episode_kl"] for e in episodes]))
            metrics["rollout/length"] = float(np.mean([e["episode"]["l"] for e in episodes]))
            if self.iterations % 10 == 0:
                self.log_samples([e["prompt"] for e in episodes], [e["text"] for e in episodes])
        if "train/entropy_loss" in sb3_values:
            metrics["train/entropy"] = -float(sb3_values["train/entropy_loss"])  # SB3 logs −mean entropy
        if "train/loss" not in sb3_values and "train/policy_loss" in sb3_values:  # A2C logs the parts only
            sb3_values["train/loss"] = (sb3_values["train/policy_loss"]
                                        + self.model.vf_coef * sb3_values["train/value_loss"]
                                        + self.model.ent_coef * sb3_values["train/entropy_loss"])
        for key, value in sb3_values.items():
            if key.startswith("train/") and key not in ("train/n_updates", "train/entropy_loss"):
                metrics[key] = float(value)
        return metrics


class SB3PPO(SB3Agent):
    """stable-baselines3 PPO with :class:`TextGenActorCriticPolicy` (the RLHF PPO of InstructGPT).

    Args:
        env: ``TextGenVectorEnv`` with ``autoreset_mode="disabled"`` and ``group_size=1``.
        learning_rate: Adam α (constant).
        n_steps: env steps per row per rollout (default ``max_new_tokens``: every row finishes ≥ 1 episode).
        batch_size: PPO minibatch size (default and maximum: the whole rollout, ``n_steps * B``). Whole
            rollouts let the policy run one forward per episode instead of one per token
            (:meth:`TextGenPolicyMixin.logits_and_values`); smaller minibatches cost up to T times more.
        n_epochs: passes over each rollout (= gradient steps per rollout with the default batch_size).
        gamma, gae_lambda: GAE(γ, λ); γ = 1 because the KL-penalised return is undiscounted.
        clip_range: ε of the clipped ratio.
        ent_coef, vf_coef: c_e and c_v of the PPO loss (``shared/rlhf-notes.md``, "PPO").
        max_grad_norm: gradient-norm clip.
        target_kl: SB3's early stop of the epochs when the approximate KL(π_old‖π_θ) exceeds it.
        normalize_advantage: standardise advantages per minibatch.
    """

    name = "sb3-ppo"
    algorithm = PPO

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        n_steps: int | None = None,
        batch_size: int | None = None,
        n_epochs: int = 4,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        ent_coef: float = 0.0,
        vf_coef: float = 0.1,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        normalize_advantage: bool = True,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_sb3_arguments(n_steps, gamma, gae_lambda, ent_coef, vf_coef, max_grad_norm, normalize_advantage)
        check_sb3_ppo_arguments(batch_size, n_epochs, clip_range, target_kl)
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        self._setup_sb3(n_steps, {
            "batch_size": batch_size,
            "n_epochs": n_epochs, "gamma": gamma, "gae_lambda": gae_lambda, "clip_range": clip_range,
            "ent_coef": ent_coef, "vf_coef": vf_coef, "max_grad_norm": max_grad_norm, "target_kl": target_kl,
            "normalize_advantage": normalize_advantage,
        })


class SB3A2C(SB3Agent):
    """stable-baselines3 A2C with :class:`TextGenActorCriticPolicy`: one gradient step per rollout.

    Args: as :class:`SB3PPO` (no epochs / minibatches / clipping); ``use_rms_prop=False`` (Adam) by default,
    which suits pretrained transformers better than SB3's RMSprop default.
    """

    name = "sb3-a2c"
    algorithm = A2C

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        n_steps: int | None = None,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        ent_coef: float = 0.0,
        vf_coef: float = 0.1,
        max_grad_norm: float = 0.5,
        normalize_advantage: bool = True,
        use_rms_prop: bool = False,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_sb3_arguments(n_steps, gamma, gae_lambda, ent_coef, vf_coef, max_grad_norm, normalize_advantage)
        check_choice("use_rms_prop", use_rms_prop, (True, False))
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        self._setup_sb3(n_steps, {
            "gamma": gamma, "gae_lambda": gae_lambda, "ent_coef": ent_coef, "vf_coef": vf_coef,
            "max_grad_norm": max_grad_norm, "normalize_advantage": normalize_advantage, "use_rms_prop": use_rms_prop,
        })


class MaskablePPOAgent(SB3Agent):
    """sb3-contrib MaskablePPO with NLPO-style masks (Ramamurthy et al. 2022): each token is sampled among the
    top-p (and/or top-k) tokens of the frozen reference π_ref at that state (of the policy itself when
    ``kl_coef=0``, since the env then has no reference). EOS is always allowed.

    Args: as :class:`SB3PPO`, plus ``mask_top_p`` (default 0.9, RL4LMs' value) and ``mask_top_k``.
    """

    name = "maskable-ppo"
    algorithm = MaskablePPO
    policy_class = TextGenMaskablePolicy

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        n_steps: int | None = None,
        batch_size: int | None = None,
        n_epochs: int = 4,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        ent_coef: float = 0.0,
        vf_coef: float = 0.1,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        normalize_advantage: bool = True,
        mask_top_p: float | None = 0.9,
        mask_top_k: int | None = None,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        check_sb3_arguments(n_steps, gamma, gae_lambda, ent_coef, vf_coef, max_grad_norm, normalize_advantage)
        check_sb3_ppo_arguments(batch_size, n_epochs, clip_range, target_kl)
        check_number("mask_top_p", mask_top_p, low=0.0, high=1.0, low_open=True, none_ok=True)
        if mask_top_k is not None:
            check_int("mask_top_k", mask_top_k, 1)
        super().__init__(env, learning_rate=learning_rate, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        self.mask_top_p, self.mask_top_k = mask_top_p, mask_top_k
        self._setup_sb3(n_steps, {
            "batch_size": batch_size,
            "n_epochs": n_epochs, "gamma": gamma, "gae_lambda": gae_lambda, "clip_range": clip_range,
            "ent_coef": ent_coef, "vf_coef": vf_coef, "max_grad_norm": max_grad_norm, "target_kl": target_kl,
            "normalize_advantage": normalize_advantage,
        }, mask_top_k=mask_top_k, mask_top_p=mask_top_p)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "mask_top_p": self.mask_top_p, "mask_top_k": self.mask_top_k}


__all__ = [
    "MaskablePPOAgent",
    "SB3A2C",
    "SB3Agent",
    "SB3PPO",
    "SharedLanguageModel",
    "TextGenActorCriticPolicy",
    "TextGenMaskablePolicy",
    "TextGenPolicyMixin",
    "TextGenSB3VecEnv",
]

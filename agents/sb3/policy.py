"""SB3 actor-critic policies whose actor is the env's causal LM and whose critic is a value head on its last
hidden state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from textenv.models.lora import is_peft_model
from textenv.models.setup import disable_dropout

if TYPE_CHECKING:
    from textenv.agents.sb3.vec_env import TextGenSB3VecEnv



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
    env's current state, the env's cached forward already holds the logits and the hidden state for the value
    head (``env.next_token_logits()``, ``env.next_token_hidden()``), so no forward runs; otherwise
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

        Reads the env's public :meth:`~TextGenVectorEnv.next_token_logits` and
        :meth:`~TextGenVectorEnv.next_token_hidden`; the cache is recomputed after every update
        (:meth:`set_training_mode`), so this equals the full forward.
        """
        if self.venv is None or self._weights_changed or torch.is_grad_enabled():
            return None
        env = self.venv.env
        hidden = env.next_token_hidden()
        if hidden is None or env.policy is not self.lm or bool(env.finished.any()):
            return None
        ids, mask = obs["input_ids"], obs["attention_mask"]  # type: ignore[index]
        env_ids, env_mask = env.observation_tensors()
        if ids.shape != env_ids.shape:
            return None
        if not (torch.equal(ids.long(), env_ids) and torch.equal(mask.long(), env_mask)):
            return None
        return env.next_token_logits()[:, : self.num_actions], self._values(hidden)

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

"""TextGen-v0 as a native batched Gymnasium ``VectorEnv`` (the fast path).

Each of the ``num_envs`` sub-environments is one row of a :class:`~textenv.engine.generation.GenerationEngine`:

* state s_t = prompt + tokens generated so far; observation = that sequence as token ids + mask;
* action a_t = one token id, ``Discrete(vocab_size)``;
* the episode terminates when the action is EOS and truncates after ``max_new_tokens`` actions;
* reward (``kl_penalty="terminal"``, InstructGPT eq. 2) on the last step:
  R = r_φ(x, y) − β · Σ_t KL_t, and 0 before it; with ``kl_penalty="dense"`` every step pays
  r_t = −β · KL_t and the last step adds r_φ(x, y). KL_t is the ``kl_estimator`` at the sampled token.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textenv.engine.generation import GenerationEngine
from textenv.fast import resolve_fast, set_model_fast
from textenv.kl import KL_ESTIMATORS, kl_per_token, make_kl_controller
from textenv.logprobs import OffPolicyActionMonitor
from textenv.models.loading import DEFAULT_MODEL, resolve_device
from textenv.models.lora import check_lora
from textenv.models.setup import check_model_sources, disable_dropout, episode_end_ids, load_models, resolve_dtype
from textenv.prompts import PROMPT_SPLITS, PromptSource, is_chat, load_prompts, render_chat
from textenv.render import Outcome, format_rows, print_rows, row_states
from textenv.reward_models import RewardModel, checked_scores, make_reward_model
from textenv.validation import InputError, check_choice, check_int, check_number

KL_PENALTIES = ("terminal", "dense")
AUTORESET_MODES = {"next_step": AutoresetMode.NEXT_STEP, "disabled": AutoresetMode.DISABLED}
RENDER_MODES = (None, "ansi", "human")
RESET_OPTIONS = ("prompts", "reset_mask")

_IMPORT_PID = os.getpid()


class RenderModeError(InputError, TypeError):
    """An unsupported ``render_mode``. Also a ``TypeError`` so that stable-baselines3's ``make_vec_env``, which
    asks for ``render_mode="rgb_array"`` and retries without it on a ``TypeError``, builds the env."""


def single_thread_after_fork() -> None:
    """In a process forked from one where torch already ran (``gym.make_vec(..., vectorization_mode="async")``
    with the default ``"fork"`` context builds one env in the parent first), torch's OpenMP thread pool is
    unusable: the first parallel op would hang forever. Such a process computes with one thread, as torch's own
    ``DataLoader`` workers do."""
    if os.getpid() != _IMPORT_PID:
        torch.set_num_threads(1)


class TextGenVectorEnv(VectorEnv):
    """B token-generation episodes advanced together, one cached forward per model per step.

    Args:
        num_envs: batch size B (rows).
        model: policy name or path for ``from_pretrained`` (default: the embedded tiny GPT-2), or a loaded
            ``PreTrainedModel`` that agents train. The env never updates its weights.
        tokenizer: name/path or tokenizer object; defaults to ``model``'s.
        reward_model: a registered name (``"vader"``), a :class:`RewardModel`, or ``fn(prompts, completions)``.
        prompts: ``"builtin"``, a list of strings, a ``.txt``/``.jsonl`` path, or a ``datasets.Dataset``. A prompt
            may also be a list of chat messages (``[{"role": "user", "content": ...}]``): it is rendered with the
            tokenizer's chat template (generation prompt added) and the rendered text is the prompt the reward
            model and ``info["prompt"]`` see.
        prompt_split: ``"train"`` or ``"eval"`` for the built-in prompts.
        max_new_tokens: episode length limit T.
        max_prompt_tokens: longest prompt allowed (tokens); default: the longest prompt in the set.
        kl_coef: β ≥ 0; β = 0 loads no reference model at all.
        target_kl: if set, β adapts (Ziegler et al. 2019) towards this per-episode KL (nats).
        kl_horizon: horizon of the adaptive controller (env steps).
        kl_estimator: ``"k1"`` (log π − log π_ref) or ``"k3"``.
        kl_penalty: ``"terminal"`` (all of R on the last step) or ``"dense"`` (per-token −β·KL_t).
        group_size: K; every reset draws B/K prompts and repeats each K times in consecutive rows
            (RLOO/GRPO). Needs ``autoreset_mode="disabled"`` when K > 1.
        autoreset_mode: ``"next_step"`` (Gymnasium default: a finished row restarts on the next step,
            ignoring that step's action) or ``"disabled"`` (finished rows ignore actions and pay 0 until
            ``reset()``; :attr:`finished` tells which rows are done); Gymnasium's ``AutoresetMode`` enum
            works too. Native agents use ``"disabled"``.
        reference: an explicit frozen reference model (default: a frozen copy of the policy).
        lora: ``True`` or ``peft.LoraConfig`` kwargs to train LoRA adapters; the reference is then the same
            model with adapters disabled (one copy of the weights in memory).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"``...
        dtype: the models' weight dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` (or a ``torch.dtype``).
            ``None`` (default): a model loaded by name loads in float32, also a checkpoint saved in bfloat16 (the
            optimizer needs float32 master weights: in pure bfloat16 most Adam updates round away); a loaded model
            keeps its dtype. Logits and log-probs are float32 whatever the weights.
        render_mode: ``None`` (nothing is computed for rendering), ``"ansi"`` (:meth:`render` returns the screen as
            a string) or ``"human"`` (the screen is printed after every ``reset`` and ``step``, in colour when stdout
            is a terminal; :meth:`render` prints it and returns ``None``). The screen shows, per row, the state and
            what the policy makes of it: see :mod:`textenv.render`.
        render_top_k: how many of π_θ's most likely next tokens the render lists (with their π_θ and π_ref
            probabilities); an integer >= 1.
        fast: textenv's CPU speed-ups (``True``) or the plain transformers path (``False``), for this env's
            forwards, log-probs and models, and the agents' update forward on them; ``None`` follows
            ``TEXTENV_FAST`` (on by default). Same numbers to float32 rounding; see :mod:`textenv.fast`.

    Every argument is checked before any model loads (numbers finite and in range, choices, types, the model
    name or directory, the device, the prompt file, the reward-model spec): a mistake raises one
    :class:`~textenv.validation.InputError` that names the argument. So do ``step()`` before ``reset()``,
    actions of the wrong dtype, shape or range, unknown ``reset`` options, and a reward model that returns
    anything but N finite floats.

    Observation space (per row): ``Dict(input_ids=Box(0, V-1, (W,), int64), attention_mask=Box(0, 1, (W,),
    int64))`` with W = ``max_prompt_tokens + max_new_tokens``. Tokens are right-aligned (left padding with
    the pad id and mask 0), so the last column is always the most recent token.

    ``info`` of :meth:`step`: ``"logprob"`` (B,) log π_θ(a_t|s_t) every step; with ``kl_penalty="dense"``
    also ``"kl"`` (B,) the KL_t paid this step. Rows that finish get ``"prompt"``, ``"text"``,
    ``"rm_score"``, ``"episode_kl"`` (Σ_t KL_t, nats), ``"kl_coef"`` (the β paid) and ``"num_tokens"``, each
    with its Gymnasium ``"_key"`` mask. With the terminal penalty the reference is fed lazily (when rows
    finish), so there is no per-step ``"kl"``; :meth:`token_kl` gives the per-token KL of the episodes.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 8,
        model: str | PreTrainedModel = DEFAULT_MODEL,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        reward_model: str | RewardModel | Any = "vader",
        prompts: PromptSource = "builtin",
        prompt_split: str = "train",
        max_new_tokens: int = 32,
        max_prompt_tokens: int | None = None,
        kl_coef: float = 0.05,
        target_kl: float | None = None,
        kl_horizon: int = 10_000,
        kl_estimator: str = "k1",
        kl_penalty: str = "terminal",
        group_size: int = 1,
        autoreset_mode: str = "next_step",
        reference: PreTrainedModel | None = None,
        lora: dict[str, Any] | bool | None = None,
        device: str | torch.device = "auto",
        render_mode: str | None = None,
        fast: bool | None = None,
        dtype: str | torch.dtype | None = None,
        render_top_k: int = 5,
    ) -> None:
        single_thread_after_fork()
        autoreset_mode = _autoreset_name(autoreset_mode)
        _check_arguments(
            num_envs=num_envs, model=model, tokenizer=tokenizer, prompt_split=prompt_split,
            max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, kl_coef=kl_coef, target_kl=target_kl,
            kl_horizon=kl_horizon, kl_estimator=kl_estimator, kl_penalty=kl_penalty, group_size=group_size,
            autoreset_mode=autoreset_mode, reference=reference, lora=lora, render_mode=render_mode,
            render_top_k=render_top_k,
        )
        dtype = resolve_dtype(dtype)
        #: JSON-serialisable constructor arguments, saved with checkpoints so runs can be rebuilt.
        self.spec_kwargs = _json_arguments(
            model=model, tokenizer=tokenizer, reward_model=reward_model, prompts=prompts, prompt_split=prompt_split,
            max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, kl_coef=kl_coef, target_kl=target_kl,
            kl_horizon=kl_horizon, kl_estimator=kl_estimator, kl_penalty=kl_penalty, group_size=group_size,
            num_envs=num_envs, lora=lora, **({} if dtype is None else {"dtype": str(dtype).removeprefix("torch.")}),
        )
        # Everything that can be checked without loading a model is checked first, so a mistake costs a second.
        self.device = resolve_device(device)
        #: The switch of :mod:`textenv.fast` for this env (its engine, models and the update forward on them).
        self.fast = resolve_fast(fast)
        check_model_sources(model, tokenizer)
        given_prompts = load_prompts(prompts, prompt_split, chat=True)
        self.reward_model = make_reward_model(reward_model)

        models = load_models(model, tokenizer, reference, kl_coef, lora, dtype, device=self.device, fast=self.fast)
        self.tokenizer, self.policy, self.reference = models.tokenizer, models.policy, models.reference
        self.kl_controller = make_kl_controller(kl_coef, target_kl, kl_horizon)

        self._chat_texts: set[str] = set()  # rendered chat prompts: tokenized without adding special tokens again
        self.prompts, self._prompt_ids = self._tokenize_prompts(given_prompts, max_prompt_tokens)
        self.max_prompt_tokens = max_prompt_tokens or max(len(p) for p in self._prompt_ids)
        self.max_new_tokens = max_new_tokens
        self._check_context_length()

        self.num_envs = num_envs
        self.group_size = group_size
        self.kl_estimator = kl_estimator
        self.kl_penalty = kl_penalty
        self.render_mode = render_mode
        self.render_top_k = render_top_k
        self.autoreset_mode = autoreset_mode
        self.metadata = {**self.metadata, "autoreset_mode": AUTORESET_MODES[autoreset_mode]}
        # With the terminal penalty only each episode's total KL is needed, so the reference is fed lazily: one
        # multi-token cached forward when rows finish, instead of one forward per step (same numbers).
        self.engine = GenerationEngine(self.policy, self.reference, self.tokenizer, max_new_tokens,
                                       lazy_reference=kl_penalty == "terminal", fast=self.fast,
                                       eos_token_ids=episode_end_ids(self.policy, self.tokenizer))
        self._make_spaces()
        self._init_bookkeeping()

    def _init_bookkeeping(self) -> None:
        """The state kept beside the engine: rows' prompts, pending restarts, β's window, the render's episode ends,
        the check of where the actions come from."""
        self._row_prompts: list[str] = [""] * self.num_envs
        self._needs_restart = np.zeros(self.num_envs, dtype=bool)
        self._kl_window: list[float] = []  # per-episode KL of finished episodes since the last β update
        self._kl_window_steps = 0
        self._kl_controller_paused = False  # see pause_kl_controller()
        self._started = False
        self._render_outcomes: list[Outcome | None] = [None] * self.num_envs  # each row's last episode end (render)
        self._off_policy_monitor = OffPolicyActionMonitor(self.single_action_space.n)

    def _make_spaces(self) -> None:
        """The Gymnasium spaces: one token id per row; observations of ``max_prompt_tokens + max_new_tokens``
        right-aligned token ids and their mask."""
        vocab_size = len(self.tokenizer)
        width = self.max_prompt_tokens + self.max_new_tokens
        self.single_action_space = spaces.Discrete(vocab_size)
        self.single_observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, vocab_size - 1, shape=(width,), dtype=np.int64),
                "attention_mask": spaces.Box(0, 1, shape=(width,), dtype=np.int64),
            }
        )
        self.action_space = spaces.MultiDiscrete(np.full(self.num_envs, vocab_size))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)

    # ------------------------------------------------------------------ Gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start episodes. ``options``: ``{"prompts": [...]}`` uses these prompts (one per row) instead of
        sampling; ``{"reset_mask": bool array (B,)}`` restarts only those rows."""
        super().reset(seed=seed)
        options = check_reset_options(options, RESET_OPTIONS)
        mask = options.get("reset_mask")
        if mask is not None and self._started:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype.kind not in "bi":
                raise InputError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), got "
                                 f"{mask.dtype} {mask.shape}")
            self._restart(mask.astype(bool), options.get("prompts"))
        else:
            mask = None
            self._start_all(options.get("prompts"))
        self._started = True
        if self.render_mode is not None:
            self._note_render_outcomes(np.ones(self.num_envs, dtype=bool) if mask is None else mask.astype(bool))
        return self.observation(), {"prompt": np.array(self._row_prompts, dtype=object)}

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every row by one token. ``actions``: int array ``(B,)`` or a long tensor."""
        if not self._started:
            raise InputError("step() before reset(): call env.reset() first")
        actions = self._check_actions(actions)
        restarting = self._needs_restart.copy()
        beta = self.kl_controller.value
        out = self.engine.advance(actions)

        rewards = np.zeros(self.num_envs, dtype=np.float64)
        info: dict[str, Any] = {"logprob": out.logprob.cpu().numpy()}
        self._off_policy_monitor.observe(info["logprob"], out.active)
        if self.kl_penalty == "dense":  # r_t = −β·KL_t every step, and the RM score at the end
            kl_t = torch.zeros_like(out.logprob)
            if out.ref_logprob is not None:
                kl_t = kl_per_token(out.logprob, out.ref_logprob, self.kl_estimator) * out.active
            info["kl"] = kl_t.cpu().numpy()
            rewards -= beta * info["kl"]

        terminated = out.terminated.cpu().numpy()
        truncated = out.truncated.cpu().numpy()
        done_rows = np.flatnonzero(terminated | truncated)
        if done_rows.size:
            rewards[done_rows] += self._finish(done_rows, beta, info)

        if self.autoreset_mode == "next_step":
            if restarting.any():
                self._restart(restarting, None)
                rewards[restarting] = 0.0
                terminated[restarting] = truncated[restarting] = False
            self._needs_restart = terminated | truncated
        if self.render_mode is not None:
            self._note_render_outcomes(restarting, info, terminated)
        return self.observation(), rewards, terminated, truncated, info

    def render(self) -> str | None:
        """The state of every row as text (:mod:`textenv.render`): the prompt, the tokens so far (boundaries
        ``·``, whitespace visible), the last action with log π_θ and log π_ref, Σ KL so far, π_θ's top
        ``render_top_k`` next tokens with their π_θ and π_ref probabilities, and on an episode's last step the
        completion, r_φ, Σ KL, β and R = r_φ − β·Σ KL. ``"ansi"`` returns it; ``"human"`` prints it (also after
        every ``reset`` and ``step``) and returns ``None``; ``None`` renders nothing."""
        if self.render_mode is None:
            return None
        if not self._started:
            screen = "(no episode yet: call reset())\n"
            return screen if self.render_mode == "ansi" else print(screen, end="")
        states = row_states(self, self.render_top_k, self._render_outcomes)
        if self.render_mode == "human":
            print_rows(states)
            return None
        return format_rows(states)

    def _note_render_outcomes(self, restarted: np.ndarray, info: dict[str, Any] | None = None,
                              terminated: np.ndarray | None = None) -> None:
        """Keep the end of each row's episode for the render (rows that restarted forget theirs), then print the
        screen in ``"human"`` mode. Runs only when a render mode is set."""
        for row in np.flatnonzero(restarted):
            self._render_outcomes[row] = None
        if info is not None and "rm_score" in info:
            for row in np.flatnonzero(info["_rm_score"]):
                self._render_outcomes[row] = Outcome(
                    text=str(info["text"][row]), rm_score=float(info["rm_score"][row]),
                    episode_kl=float(info["episode_kl"][row]), kl_coef=float(info["kl_coef"][row]),
                    terminated=bool(terminated[row]),
                )
        if self.render_mode == "human":
            self.render()

    def close(self, **kwargs: Any) -> None:
        """Nothing to release: the models are ordinary torch modules."""

    # ------------------------------------------------------------------ for agents: the public boundary
    # Agents, the SB3 adapter, the single env and the applications use only what follows (and the Gymnasium API
    # above). The generation engine (``self.engine``) and every ``_private`` attribute stay behind it.
    @property
    def policy(self) -> torch.nn.Module:
        """π_θ, the causal LM the env samples with and computes log π_θ and the KL with (agents train it in
        place). Assigning a model makes the env generate with it: see :meth:`set_policy`."""
        return self._policy

    @policy.setter
    def policy(self, model: torch.nn.Module) -> None:
        self._policy = model
        engine = getattr(self, "engine", None)  # None while the constructor sets up the models
        if engine is not None:
            set_model_fast(model, self.fast)  # the agents' update forward follows the env's switch
            engine.policy = model

    def set_policy(self, model: torch.nn.Module) -> None:
        """Generate with ``model`` from now on: it becomes :attr:`policy`, with dropout disabled (so rollout and
        update log-probs agree). The reference π_ref stays. Episodes in progress keep the cached state of the
        previous weights until :meth:`refresh_cache` or the next :meth:`reset`."""
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"set_policy(model) needs a causal LM (a torch.nn.Module), got {type(model).__name__}")
        disable_dropout(model)
        self.policy = model

    def refresh_cache(self) -> None:
        """Recompute the cached state of the episodes in progress (KV caches, next-token logits and hidden
        states, a lazy reference's logits) with the current weights of :attr:`policy`, in one prefill: call it
        after an update in the middle of episodes. Tokens and the log-probs recorded when they were sampled
        stay. Does nothing before :meth:`reset`."""
        self.engine.refresh()

    @property
    def finished(self) -> np.ndarray:
        """Bool ``(B,)``: rows whose episode has ended (and not restarted yet)."""
        return self.engine.finished.cpu().numpy()

    @property
    def row_prompts(self) -> list[str]:
        """The prompt of every row's current episode (B strings; a copy)."""
        return list(self._row_prompts)

    @property
    def eos_token_id(self) -> int:
        """The tokenizer's EOS id: its action ends an episode (``terminated``); see :attr:`eos_token_ids`."""
        return self.engine.eos_token_id

    @property
    def eos_token_ids(self) -> list[int]:
        """Every token id whose action ends an episode: the tokenizer's EOS first, then the other ids of the
        model's generation config's ``eos_token_id`` (e.g. a chat model's end-of-turn token)."""
        return [self.engine.eos_token_id] + [i for i in self.engine.eos_token_ids.tolist()
                                             if i != self.engine.eos_token_id]

    def observation(self) -> dict[str, np.ndarray]:
        """The current observation, as :meth:`reset` and :meth:`step` return it: ``"input_ids"`` and
        ``"attention_mask"``, int64 ``(B, W)``, right-aligned (see the class docstring)."""
        ids, mask = self.observation_tensors()
        return {"input_ids": ids.cpu().numpy(), "attention_mask": mask.cpu().numpy()}

    def observation_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`observation` as long tensors ``(B, W)`` on :attr:`device`: (token ids, attention mask)."""
        return self.engine.window(self.max_prompt_tokens + self.max_new_tokens)

    def episode_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's episode so far as the env lays it out: (token ids, attention mask), long ``(B, S)`` on
        :attr:`device` (copies). After a reset of all rows the prompts are left-padded to a common width P and
        column P + t holds the action of step t (the pad id, mask 0, once the row has finished), so
        S = P + steps since that reset. :meth:`token_kl` is aligned with these columns."""
        return self.engine.input_ids.clone(), self.engine.attention_mask.clone()

    def next_token_logits(self) -> torch.Tensor:
        """π_θ's next-token logits for the current states, ``(B, V)`` float32, no grad.

        Already computed by the env's cached forward: agents sample from these instead of running the
        policy a second time.
        """
        return self.engine.policy_logits

    def next_token_hidden(self) -> torch.Tensor | None:
        """π_θ's last-layer (final-norm) hidden state at the current states, ``(B, H)`` in the policy's dtype, no
        grad: the input of the LM head, which a value head on the trunk reads (PPO's V(s_t), the SB3 critic).
        From the same cached forward as :meth:`next_token_logits`; ``None`` before :meth:`reset`."""
        return self.engine.policy_hidden

    def reference_next_token_logits(self) -> torch.Tensor | None:
        """π_ref's next-token logits at the current states, ``(B, V)`` float32, no grad (e.g. for NLPO action
        masks); ``None`` without a reference (β = 0) or before :meth:`reset`. A lazy reference (the terminal KL
        penalty) first catches up, in one cached forward over the tokens it has not seen."""
        return self.engine.ref_logits

    def token_kl(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token KL estimates KL_t (nats) of the current episodes, ``(B, S)`` aligned with the columns of
        :meth:`episode_tokens`, or ``(R, S)`` for the long indices ``rows``; 0 at prompt and padding columns,
        and everywhere when β = 0.

        Feeds a lazy reference the tokens it has not seen yet (one cached forward, over ``rows`` only when
        they are few)."""
        engine = self.engine
        index = slice(None) if rows is None else rows
        if self.reference is None:
            return torch.zeros_like(engine.logprobs[index])
        engine.sync_reference(next_logits=False, rows=rows)
        kl = kl_per_token(engine.logprobs[index], engine.ref_logprobs[index], self.kl_estimator)
        return kl * engine.generated[index]

    def episode_logprobs(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The log-probabilities the env recorded for the episodes so far, aligned with the columns of
        :meth:`episode_tokens` (copies on :attr:`device`): ``(logprob, ref_logprob, actions)``, where ``logprob``
        ``(B, S)`` float32 is log π_θ(a_t|s_t) of each action when it was taken (``info["logprob"]``),
        ``ref_logprob`` ``(B, S)`` log π_ref of it (``None`` without a reference; a lazy reference first scores the
        tokens it has not seen) and ``actions`` ``(B, S)`` bool marks the columns that hold an action (0 in the
        two others elsewhere)."""
        engine = self.engine
        ref_logprob = None
        if self.reference is not None:
            engine.sync_reference(next_logits=False)
            ref_logprob = engine.ref_logprobs.clone()
        return engine.logprobs.clone(), ref_logprob, engine.generated.clone()

    # ------------------------------------------------------------------ the KL controller
    @property
    def kl_coef(self) -> float:
        """Current β (changes over time with the adaptive controller)."""
        return self.kl_controller.value

    def kl_controller_state(self) -> dict[str, Any]:
        """β and the adaptive controller's window, for checkpoints (JSON-serialisable):
        ``{"kl_coef": β, "window": [Σ_t KL_t (nats) of each episode finished since β last changed],
        "window_steps": their tokens}``. The adaptive controller (``target_kl``) updates β once the window holds
        ``num_envs`` episodes, then empties it. :meth:`load_kl_controller_state` restores it exactly."""
        return {"kl_coef": self.kl_controller.value, "window": list(self._kl_window),
                "window_steps": self._kl_window_steps}

    def load_kl_controller_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``, a :meth:`kl_controller_state` (β exactly as saved, and its window)."""
        if not isinstance(state, Mapping) or not {"kl_coef", "window", "window_steps"} <= set(state):
            raise InputError("load_kl_controller_state(state) needs the dict kl_controller_state() returns, with "
                             f"'kl_coef', 'window' and 'window_steps'; got {state!r:.80}")
        check_number("state['kl_coef']", state["kl_coef"], low=0)
        window = state["window"]
        if not isinstance(window, (list, tuple)) or not all(
            isinstance(kl, (int, float)) and not isinstance(kl, bool) for kl in window
        ):
            raise InputError(f"state['window'] must be a list of episode KLs (numbers), got {window!r:.80}")
        check_int("state['window_steps']", state["window_steps"], minimum=0)
        self.kl_controller.value = state["kl_coef"]
        self._kl_window, self._kl_window_steps = list(window), state["window_steps"]

    @contextmanager
    def pause_kl_controller(self) -> Iterator[None]:
        """``with env.pause_kl_controller(): ...``: episodes that finish inside the block leave the KL controller
        alone, so β and its window stay as they were (a rollout for evaluation or a baseline, e.g. a greedy
        completion, must not move the adaptive β). Their rewards still pay the current β. Nests; the previous
        setting comes back on exit, also after an exception."""
        paused, self._kl_controller_paused = self._kl_controller_paused, True
        try:
            yield
        finally:
            self._kl_controller_paused = paused

    # ------------------------------------------------------------------ checkpoints of episodes in progress
    def episode_state(self) -> dict[str, Any]:
        """The episodes in progress (engine rows, their prompts, pending restarts), for checkpoints of agents
        whose iterations end mid-episode (SB3). β and its window (:meth:`kl_controller_state`) and the prompt RNG
        (``np_random``) are saved by the agent."""
        return {"engine": self.engine.state_dict(), "row_prompts": list(self._row_prompts),
                "needs_restart": self._needs_restart.copy(), "started": self._started}

    def load_episode_state(self, state: dict[str, Any]) -> None:
        """Continue the episodes saved by :meth:`episode_state` (on an env built with the same arguments)."""
        if len(state["row_prompts"]) != self.num_envs:
            raise InputError(f"the saved episodes have {len(state['row_prompts'])} rows; this env has "
                             f"num_envs={self.num_envs}")
        self._row_prompts = list(state["row_prompts"])
        self._needs_restart = np.asarray(state["needs_restart"], dtype=bool).copy()
        self._started = bool(state["started"])
        if self._started:
            self.engine.load_state_dict(state["engine"])

    # ------------------------------------------------------------------ internals
    def _sample_prompts(self, n: int) -> list[int]:
        """Indices of ``n`` prompts; each distinct prompt is repeated ``group_size`` times."""
        distinct = self.np_random.integers(len(self.prompts), size=max(n // self.group_size, 1))
        return np.repeat(distinct, self.group_size)[:n].tolist()

    def _prompt_choice(self, n: int, given: Sequence[str] | None) -> tuple[list[str], list[list[int]]]:
        if given is None:
            idx = self._sample_prompts(n)
            return [self.prompts[i] for i in idx], [self._prompt_ids[i] for i in idx]
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
            raise InputError(f"options['prompts'] must be a list of {n} prompt strings (one per row), got "
                             f"{type(given).__name__}")
        given = load_prompts(list(given), chat=True)
        if len(given) != n:
            raise InputError(f"options['prompts'] has {len(given)} prompts for {n} rows; give one per row")
        return self._tokenize_prompts(given, self.max_prompt_tokens)

    def _start_all(self, given: Sequence[str] | None) -> None:
        texts, ids = self._prompt_choice(self.num_envs, given)
        self._row_prompts = texts
        self.engine.start(ids)
        self._needs_restart[:] = False

    def _restart(self, rows: np.ndarray, given: Sequence[str] | None) -> None:
        texts, ids = self._prompt_choice(int(rows.sum()), given)
        for row, text in zip(np.flatnonzero(rows), texts):
            self._row_prompts[row] = text
        self.engine.restart_rows(torch.as_tensor(rows), ids)
        self._needs_restart[rows] = False

    def _finish(self, rows: np.ndarray, beta: float, info: dict[str, Any]) -> np.ndarray:
        """Score finished rows with the reward model; returns their terminal rewards."""
        prompts = [self._row_prompts[r] for r in rows]
        completions = self.engine.completions(rows.tolist())
        scores = checked_scores(self.reward_model, prompts, completions)
        episode_kl = self.token_kl(torch.as_tensor(rows, device=self.device)).sum(dim=1).double().cpu().numpy()
        terminal = scores if self.kl_penalty == "dense" else scores - beta * episode_kl
        num_tokens = self.engine.num_generated[torch.as_tensor(rows, device=self.device)].cpu().numpy()
        for key, values in (
            ("prompt", prompts),
            ("text", completions),
            ("rm_score", scores),
            ("episode_kl", episode_kl),
            ("kl_coef", np.full(len(rows), beta)),
            ("num_tokens", num_tokens),
        ):
            array = np.zeros(self.num_envs, dtype=object if key in ("prompt", "text") else np.asarray(values).dtype)
            array[rows] = values
            info[key] = array
            info[f"_{key}"] = np.isin(np.arange(self.num_envs), rows)
        if not self._kl_controller_paused:
            self._record_episode_kl(episode_kl, int(num_tokens.sum()))
        return terminal

    def _record_episode_kl(self, episode_kl: np.ndarray, num_tokens: int) -> None:
        """Add finished episodes (their Σ_t KL_t and tokens) to β's window; once it holds ``num_envs`` episodes,
        update β with their mean KL and empty it."""
        self._kl_window.extend(episode_kl.tolist())
        self._kl_window_steps += num_tokens
        if len(self._kl_window) >= self.num_envs:
            self.kl_controller.update(float(np.mean(self._kl_window)), self._kl_window_steps)
            self._kl_window, self._kl_window_steps = [], 0

    def _check_actions(self, actions: Any) -> torch.Tensor:
        """``actions`` as a long tensor ``(B,)`` on the env's device, or :class:`InputError` (wrong dtype, shape
        or a token id outside ``[0, V)``)."""
        vocab = self.single_action_space.n

        def refuse(got: str) -> InputError:
            return InputError(f"actions must be an integer array of shape ({self.num_envs},) of token ids in "
                              f"[0, {vocab}), got {got}")

        if isinstance(actions, torch.Tensor):
            tensor = actions
            if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
                raise refuse(f"a {tensor.dtype} tensor")
        else:
            try:
                array = np.asarray(actions)
            except (ValueError, TypeError):  # ragged lists
                raise refuse(type(actions).__name__) from None
            if array.dtype.kind not in "iu":
                raise refuse(f"dtype {array.dtype}")
            tensor = torch.from_numpy(array.astype(np.int64, copy=False))
        if tuple(tensor.shape) != (self.num_envs,):
            raise refuse(f"shape {tuple(tensor.shape)}")
        outside = (tensor < 0) | (tensor >= vocab)
        if bool(outside.any()):
            bad = tensor[outside][:5].tolist()
            raise InputError(f"actions must be token ids in [0, {vocab}) (the action space), got {bad}")
        return tensor.to(self.device, torch.long)

    def _tokenize_prompts(self, prompts: Sequence[Any], limit: int | None) -> tuple[list[str], list[list[int]]]:
        """The prompts' texts (chat messages rendered with the chat template) and token ids."""
        texts = []
        for prompt in prompts:
            if is_chat(prompt):
                prompt = render_chat(prompt, self.tokenizer)
                self._chat_texts.add(prompt)
            texts.append(prompt)
        ids: list[list[int]] = [[] for _ in texts]
        for add_special_tokens in (True, False):  # a rendered chat prompt has its special tokens (BOS) already
            indices = [i for i, text in enumerate(texts) if (text in self._chat_texts) != add_special_tokens]
            if indices:
                encoded = self.tokenizer([texts[i] for i in indices], add_special_tokens=add_special_tokens)
                for i, tokens in zip(indices, encoded["input_ids"]):
                    ids[i] = tokens
        for prompt, tokens in zip(texts, ids):
            if not tokens:
                raise InputError(f"prompt {prompt!r} tokenizes to nothing; give a non-empty prompt")
            if limit is not None and len(tokens) > limit:
                raise InputError(
                    f"prompt {prompt[:60]!r} has {len(tokens)} tokens > max_prompt_tokens={limit}; "
                    "shorten it or raise max_prompt_tokens"
                )
        return texts, ids

    def _check_context_length(self) -> None:
        limit = getattr(self.policy.config, "max_position_embeddings", None) or getattr(
            self.policy.config, "n_positions", None
        )
        total = self.max_prompt_tokens + self.max_new_tokens
        if limit is not None and total > limit:
            raise InputError(
                f"max_prompt_tokens + max_new_tokens = {total} exceeds the model's context of {limit} tokens; "
                "lower max_new_tokens or max_prompt_tokens"
            )


def unwrap_vector_env(env: Any, argument: str = "env") -> TextGenVectorEnv:
    """The :class:`TextGenVectorEnv` that ``env`` is, or that a Gymnasium wrapper ``env`` wraps (``env.unwrapped``);
    :class:`InputError` naming ``argument`` otherwise. Agents drive the unwrapped env directly (through its public
    methods), so a wrapper's own ``reset``/``step`` logic does not run for them."""
    if isinstance(env, TextGenVectorEnv):
        return env
    inner = getattr(env, "unwrapped", None)
    if isinstance(inner, TextGenVectorEnv):
        return inner
    single = " (a single TextGen env has one row)" if type(inner).__name__ == "TextGenEnv" else ""
    raise InputError(f"{argument} must be a TextGenVectorEnv or a Gymnasium wrapper around one, e.g. "
                     f"gym.make_vec('TextGen-v0', num_envs=8, autoreset_mode='disabled'); got "
                     f"{type(env).__name__}{single}")


def _json_arguments(**arguments: Any) -> dict[str, Any]:
    """The constructor ``arguments`` that are JSON-serialisable (``None``, strings, numbers, dicts)."""
    serialisable = (str, int, float, dict)
    return {key: value for key, value in arguments.items() if value is None or isinstance(value, serialisable)}


def _autoreset_name(mode: Any) -> str:
    """``"next_step"`` / ``"disabled"`` from the string or Gymnasium's ``AutoresetMode`` enum."""
    if isinstance(mode, AutoresetMode):
        for name, value in AUTORESET_MODES.items():
            if mode == value:
                return name
        raise InputError(f"autoreset_mode={mode} is not supported by the native TextGen vector env; use "
                         "'next_step' or 'disabled' (or vectorization_mode='sync' with "
                         "vector_kwargs={'autoreset_mode': AutoresetMode.SAME_STEP})")
    return mode


def _check_arguments(
    *, num_envs: Any, model: Any, tokenizer: Any, prompt_split: Any, max_new_tokens: Any, max_prompt_tokens: Any,
    kl_coef: Any, target_kl: Any, kl_horizon: Any, kl_estimator: Any, kl_penalty: Any, group_size: Any,
    autoreset_mode: Any, reference: Any, lora: Any, render_mode: Any, render_top_k: Any,
) -> None:
    """Every constructor argument that can be checked without loading a model (:class:`InputError`)."""
    check_int("num_envs", num_envs, minimum=1)
    if not isinstance(model, (str, os.PathLike, torch.nn.Module)):
        raise InputError(f"model must be a name, a directory path or a loaded PreTrainedModel, got "
                         f"{type(model).__name__}")
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike, PreTrainedTokenizerBase)):
        raise InputError(f"tokenizer must be None, a name, a directory path or a tokenizer, got "
                         f"{type(tokenizer).__name__}")
    check_choice("prompt_split", prompt_split, PROMPT_SPLITS)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    if max_prompt_tokens is not None:
        check_int("max_prompt_tokens", max_prompt_tokens, minimum=1)
    check_number("kl_coef", kl_coef, low=0)
    check_number("target_kl", target_kl, low=0, low_open=True, none_ok=True)
    check_int("kl_horizon", kl_horizon, minimum=1)
    if target_kl is not None and kl_coef == 0:
        raise InputError("target_kl needs kl_coef > 0: an adaptive controller cannot scale β = 0; set kl_coef "
                         "(e.g. 0.05) or drop target_kl")
    check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    check_choice("kl_penalty", kl_penalty, KL_PENALTIES)
    check_int("group_size", group_size, minimum=1)
    check_choice("autoreset_mode", autoreset_mode, tuple(AUTORESET_MODES))
    if render_mode not in RENDER_MODES:
        raise RenderModeError(f"render_mode={render_mode!r} is not supported: TextGen-v0 renders text only; use "
                              "render_mode='ansi' (print(env.render())), 'human' (printed at every reset and step) "
                              "or None")
    check_int("render_top_k", render_top_k, minimum=1)
    if num_envs % group_size:
        raise InputError(f"num_envs={num_envs} must be a multiple of group_size={group_size}")
    if group_size > 1 and autoreset_mode != "disabled":
        raise InputError("group_size > 1 keeps groups of rows in step: pass autoreset_mode='disabled'")
    if reference is not None and not isinstance(reference, torch.nn.Module):
        raise InputError(f"reference must be None or a loaded causal LM (torch.nn.Module), got "
                         f"{type(reference).__name__}")
    check_lora(lora)
    if lora and reference is not None:
        raise InputError("lora=... uses the policy with adapters disabled as reference: drop reference=")


def check_reset_options(options: Any, allowed: Sequence[str]) -> dict[str, Any]:
    """``options`` of ``reset()`` as a dict with only ``allowed`` keys (:class:`InputError` otherwise)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InputError(f"reset(options=...) must be a dict with keys among {list(allowed)}, got "
                         f"{type(options).__name__}")
    unknown = sorted(map(str, set(options) - set(allowed)))
    if unknown:
        raise InputError(f"reset(options=...) has unknown key(s) {unknown}; allowed keys are {list(allowed)}")
    return options

"""``textenv play``: a human is the policy. Pick the next token, type text, or let the model sample, one env step
per token, then compare your completion's reward, KL and return with the policy's own sample for the same prompt.

Two parts:

* :class:`PlaySession`, the game without any user interface: one episode of a TextGen env (a
  :class:`~textenv.env.TextGenEnv`, or a :class:`~textenv.vector_env.TextGenVectorEnv` with ``num_envs=1``) and
  methods whose results are JSON-serialisable dicts (:meth:`~PlaySession.state`, :meth:`~PlaySession.choose`,
  :meth:`~PlaySession.choose_rank`, :meth:`~PlaySession.type_text`, :meth:`~PlaySession.sample`,
  :meth:`~PlaySession.undo`, :meth:`~PlaySession.result`...). The terminal game below and the Play page of
  ``textenv serve`` both drive it.
* the terminal front end (:func:`run`): reads one command per line (a TTY or a pipe: scriptable), draws the state
  (in colour with rich when stdout is a terminal), appends each finished episode to ``--output`` and the
  player's preference to ``--preferences`` (one JSON line per append, written atomically).

What the numbers mean (docs/play.md). At each state s_t the candidates are the policy's top-k next tokens with
π_θ(a|s_t) and π_ref(a|s_t). You are the policy now, so the KL term of the RLHF objective (InstructGPT eq. 2,
R = r_φ(x, y) − β·KL) measures *your* choices against the reference: a token you choose or type is chosen with
probability 1, so its k1 estimate is KL_t = log 1 − log π_ref(a_t|s_t) = −log π_ref(a_t|s_t), how surprising the
token is to the reference; a token you let the policy sample was drawn from π_θ, so KL_t = log π_θ(a_t|s_t) −
log π_ref(a_t|s_t), as the env itself computes. Σ_t KL_t is ``kl`` and ``return`` = r_φ − β·kl. The env's own
figures for the same tokens (TextGen-v0 always measures π_θ, whoever acted) are kept as ``env_kl`` and
``env_return``. Without a reference model (β = 0) π_θ stands in for π_ref.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import sys
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from textenv.apps.arguments import COUNT, NON_NEGATIVE, SEED, integer_at_least
from textenv.preferences import PreferencePair, load_preferences
from textenv.rollout import sample_actions
from textenv.validation import InputError, check_int, check_seed
from textenv.vector_env import TextGenVectorEnv

#: Where a token of the player's completion came from.
SOURCES = ("chosen", "typed", "sampled", "forced")
#: Largest ``top_k`` shown (the numbers a player types).
MAX_TOP_K = 50


# ---------------------------------------------------------------------------------------------- the game core
@dataclass
class PlayedToken:
    """One action of the episode: token ``id`` and its decoded ``text``, ``source`` (``"chosen"`` from the
    candidates or by id, ``"typed"`` as part of text, ``"sampled"`` from π_θ), ``logprob`` log π_θ(a_t|s_t) and
    ``ref_logprob`` log π_ref(a_t|s_t) (nats; ``None`` without a reference), ``kl`` the player's KL_t (nats; see
    the module docstring) and ``reward`` the env's reward for this step."""

    id: int
    text: str
    source: str
    logprob: float
    ref_logprob: float | None
    kl: float
    reward: float


#: Which session's episode each env currently holds: sessions sharing one env replay theirs when another moved it.
_HOLDER: weakref.WeakKeyDictionary[TextGenVectorEnv, tuple[str, int]] = weakref.WeakKeyDictionary()


def as_single_row_env(env: Any) -> TextGenVectorEnv:
    """The :class:`TextGenVectorEnv` with one row behind ``env``: a ``TextGenVectorEnv(num_envs=1)``, a
    :class:`~textenv.env.TextGenEnv` (``gym.make("TextGen-v0")``) or a Gymnasium wrapper around either;
    :class:`InputError` otherwise."""
    inner = env
    for _ in range(16):  # unwrap Gymnasium wrappers and the single env
        if isinstance(inner, TextGenVectorEnv):
            break
        inner = getattr(inner, "vector_env", None) or getattr(inner, "unwrapped", None)
        if inner is None:
            break
    if not isinstance(inner, TextGenVectorEnv):
        raise InputError(f"PlaySession(env) needs a TextGen env (gym.make('TextGen-v0') or TextGenVectorEnv("
                         f"num_envs=1)), got {type(env).__name__}")
    if inner.num_envs != 1:
        raise InputError(f"PlaySession(env) plays one episode: give a TextGenVectorEnv with num_envs=1, got "
                         f"num_envs={inner.num_envs}")
    return inner


class PlaySession:
    """One episode of a TextGen env in which a person chooses the actions.

    Args:
        env: ``gym.make("TextGen-v0", ...)``, a :class:`~textenv.env.TextGenEnv` or a ``TextGenVectorEnv`` with
            ``num_envs=1``. Its policy π_θ proposes the candidates and samples; its reference π_ref (when
            β > 0) measures the KL; its reward model scores the completion.
        prompt: the first episode's prompt; ``None`` lets the env draw one from its prompts (seeded by ``seed``).
        top_k: candidates shown at each state (1 ≤ k ≤ :data:`MAX_TOP_K`).
        seed: seeds the env's prompt draw, the tokens sampled for the player (:meth:`sample`) and the policy's
            own completion (:meth:`result`); two sessions with the same arguments and moves give the same numbers.

    Every method returns plain JSON-serialisable values (dicts of str, int, float, bool, None and lists). Moves
    while the episode is over, and bad arguments, raise :class:`InputError` with a one-line message for the
    player. The session holds its whole episode (prompt and tokens), so several sessions may share one env (one
    copy of the models): each call first makes the env hold this session's episode, replaying its tokens when
    another session moved the env. Calls are not thread-safe: serialise them (one lock per env). Finished
    episodes do not move the env's adaptive β (:meth:`TextGenVectorEnv.pause_kl_controller`).
    """

    def __init__(self, env: Any, prompt: str | None = None, top_k: int = 10, seed: int = 0) -> None:
        check_int("top_k", top_k, minimum=1)
        if top_k > MAX_TOP_K:
            raise InputError(f"top_k={top_k} is more candidates than a player can read; give 1 to {MAX_TOP_K}")
        check_seed("seed", seed)
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"prompt must be a string or None (the env draws one), got {type(prompt).__name__}")
        self.env = as_single_row_env(env)
        self.top_k = top_k
        self.seed = seed
        self._uid = uuid.uuid4().hex
        self._sampler = torch.Generator(device=self.env.device).manual_seed(seed)
        self._policy_sampler = torch.Generator(device=self.env.device).manual_seed(seed + 1)
        self._seeded = False
        self.episode = 0
        self.restart(prompt)

    # ------------------------------------------------------------------ the episode
    def restart(self, prompt: str | None = None) -> dict[str, Any]:
        """Start a new episode on ``prompt`` (``None``: the env draws one) and return its :meth:`state`."""
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"prompt must be a string or None (the env draws one), got {type(prompt).__name__}")
        seed = None if self._seeded else self.seed
        with self.env.pause_kl_controller():
            if prompt is None:
                _, info = self.env.reset(seed=seed)
            else:
                _, info = self.env.reset(seed=seed, options={"prompts": [prompt]})
        self._seeded = True
        self.prompt: str = str(info["prompt"][0])
        self.tokens: list[PlayedToken] = []
        self._final: dict[str, Any] | None = None
        self._policy: dict[str, Any] | None = None
        self.episode += 1
        self._claim_env()
        return self.state()

    @property
    def done(self) -> bool:
        """Whether the episode has ended (EOS chosen, or ``max_new_tokens`` reached)."""
        return self._final is not None

    def state(self) -> dict[str, Any]:
        """The state s_t as the player sees it.

        Returns a dict: ``prompt``; ``tokens``, the actions so far, each ``{"id", "text", "source", "logprob",
        "ref_logprob", "kl", "reward"}`` (:class:`PlayedToken`); ``completion``, their decoded text; ``candidates``,
        the policy's top-k next tokens, each ``{"rank" (1 = most likely), "id", "text", "prob" π_θ(a|s_t),
        "ref_prob" π_ref(a|s_t) or None, "eos"}`` (``[]`` once done); ``kl``, the running Σ_t KL_t of the player
        (nats); ``kl_coef`` β; ``has_reference``; ``step`` (tokens so far), ``max_new_tokens``, ``episode``
        (1, 2, ...), ``top_k`` and ``done``."""
        return {
            "prompt": self.prompt,
            "tokens": [asdict(token) for token in self.tokens],
            "completion": self._decode([token.id for token in self.tokens]),
            "candidates": [] if self.done else self.candidates(),
            "kl": self.kl,
            "kl_coef": float(self.env.kl_coef),
            "has_reference": self.env.reference is not None,
            "step": len(self.tokens),
            "max_new_tokens": self.env.max_new_tokens,
            "episode": self.episode,
            "top_k": self.top_k,
            "done": self.done,
        }

    @property
    def kl(self) -> float:
        """The player's running Σ_t KL_t (nats): see the module docstring."""
        return float(sum(token.kl for token in self.tokens))

    def candidates(self) -> list[dict[str, Any]]:
        """The policy's ``top_k`` next tokens at the current state, most likely first: ``{"rank", "id", "text",
        "prob", "ref_prob", "eos"}`` (probabilities under π_θ and π_ref; ``ref_prob`` ``None`` without a
        reference). ``[]`` once the episode is over."""
        if self.done:
            return []
        self._sync()
        probs = torch.softmax(self.env.next_token_logits()[0].float(), dim=-1)
        ref_logits = self.env.reference_next_token_logits()
        ref_probs = None if ref_logits is None else torch.softmax(ref_logits[0].float(), dim=-1)
        top = torch.topk(probs, min(self.top_k, probs.shape[0]))
        eos = set(self.env.eos_token_ids)
        return [
            {"rank": rank, "id": int(token), "text": self._decode([int(token)], keep_special=True),
             "prob": float(prob), "ref_prob": None if ref_probs is None else float(ref_probs[token]),
             "eos": int(token) in eos}
            for rank, (prob, token) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1)
        ]

    # ------------------------------------------------------------------ moves
    def choose(self, token_id: int) -> dict[str, Any]:
        """Take the action ``token_id`` (any id of the vocabulary, shown or not); returns the new :meth:`state`."""
        vocab = self.env.single_action_space.n
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)) or not 0 <= token_id < vocab:
            raise InputError(f"token_id must be a token id in [0, {vocab}), got {token_id!r}")
        self._act(int(token_id), "chosen")
        return self.state()

    def choose_rank(self, rank: int) -> dict[str, Any]:
        """Take the ``rank``-th candidate of :meth:`candidates` (1 = the policy's most likely token); returns the
        new :meth:`state`."""
        self._check_playing()
        shown = self.candidates()
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= len(shown):
            raise InputError(f"no candidate {rank!r}: choose 1 to {len(shown)}")
        self._act(shown[int(rank) - 1]["id"], "chosen")
        return self.state()

    def encode(self, text: str) -> list[int]:
        """The token ids :meth:`type_text` would force for ``text`` (the tokenizer's, no special tokens added)."""
        if not isinstance(text, str) or not text:
            raise InputError("the text to type is empty; type at least one character")
        ids = self.env.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InputError(f"{text!r} tokenizes to nothing; type other text")
        return [int(i) for i in ids]

    def type_text(self, text: str) -> dict[str, Any]:
        """Tokenise ``text`` (:meth:`encode`) and force its tokens, one env step per token; tokens past the end of
        the episode (``max_new_tokens``, or an EOS in the text) are dropped. Returns the new :meth:`state`.
        Note that most tokenizers mark a word boundary with a leading space: type ``" fun"``, not ``"fun"``."""
        self._check_playing()
        for token in self.encode(text):
            if self.done:
                break
            self._act(token, "typed")
        return self.state()

    def sample(self) -> dict[str, Any]:
        """Let the policy choose: sample one token from π_θ(·|s_t) (seeded); returns the new :meth:`state`."""
        self._check_playing()
        self._sync()
        token = int(sample_actions(self.env.next_token_logits(), self._sampler)[0])
        self._act(token, "sampled")
        return self.state()

    def end(self) -> dict[str, Any]:
        """Force the EOS token (end the completion here); returns the new :meth:`state`."""
        self._check_playing()
        self._act(self.env.eos_token_id, "chosen")
        return self.state()

    def undo(self) -> dict[str, Any]:
        """Remove the last token (also after the episode ended); the env replays the episode without it. Returns
        the new :meth:`state`; :class:`InputError` when there is no token to remove."""
        if not self.tokens:
            raise InputError("nothing to undo: no token has been played yet")
        self.tokens.pop()
        self._final = None
        self._replay()
        return self.state()

    # ------------------------------------------------------------------ the end
    def result(self) -> dict[str, Any]:
        """The finished episode and the policy's own completion of the same prompt (sampled once, seeded).

        Returns ``{"prompt", "completion", "tokens", "num_tokens", "terminated" (EOS, not the length limit),
        "rm_score" r_φ(x, y), "kl" Σ_t KL_t of the player (nats), "kl_coef" β, "return" r_φ − β·kl, "env_kl" and
        "env_return" (what TextGen-v0 paid: it measures π_θ whoever acted), "policy": {"completion", "tokens",
        "num_tokens", "rm_score", "kl", "return"}}``. :class:`InputError` while the episode is still going."""
        if not self.done:
            raise InputError("the episode is not over: choose, type or sample tokens until EOS or max_new_tokens")
        final = self._final
        beta = final["kl_coef"]
        return {
            "prompt": self.prompt,
            "completion": final["text"],
            "tokens": [asdict(token) for token in self.tokens],
            "num_tokens": len(self.tokens),
            "terminated": final["terminated"],
            "rm_score": final["rm_score"],
            "kl": self.kl,
            "kl_coef": beta,
            "return": final["rm_score"] - beta * self.kl,
            "env_kl": final["episode_kl"],
            "env_return": float(sum(token.reward for token in self.tokens)),
            "policy": self.policy_completion(),
        }

    def policy_completion(self) -> dict[str, Any]:
        """The policy's own completion of this episode's prompt, sampled from π_θ (seeded, once per episode):
        ``{"completion", "tokens" [{"id", "text"}], "num_tokens", "rm_score", "kl" (the env's Σ_t KL_t, nats),
        "return" (the env's R)}``."""
        if self._policy is None:
            self._policy = self._sample_policy_episode()
        return self._policy

    def record(self) -> dict[str, Any]:
        """The finished episode as one flat JSON object for ``--output``: ``prompt``, ``completion``, ``tokens``,
        ``rm_score``, ``kl``, ``kl_coef``, ``return``, ``env_kl``, ``env_return``, ``terminated``, and
        ``policy_completion``, ``policy_rm_score``, ``policy_kl``, ``policy_return``."""
        result = self.result()
        policy = result.pop("policy")
        return {**result, "policy_completion": policy["completion"], "policy_rm_score": policy["rm_score"],
                "policy_kl": policy["kl"], "policy_return": policy["return"]}

    def preference(self, prefer: str) -> PreferencePair | None:
        """The player's preference between their completion and the policy's as a row of the preference format
        ``train-rm`` reads (:mod:`textenv.preferences`): ``prefer`` is ``"player"`` or ``"policy"``. ``None`` when
        the two completions are the same text (nothing to compare)."""
        if prefer not in ("player", "policy"):
            raise InputError(f"prefer must be 'player' or 'policy', got {prefer!r}")
        result = self.result()
        player, policy = result["completion"], result["policy"]["completion"]
        if player == policy:
            return None
        chosen, rejected = (player, policy) if prefer == "player" else (policy, player)
        meta = {"source": "textenv play", "chosen_by": prefer, "player_rm_score": result["rm_score"],
                "policy_rm_score": result["policy"]["rm_score"]}
        return PreferencePair(self.prompt, chosen, rejected, meta)

    # ------------------------------------------------------------------ internals
    def _check_playing(self) -> None:
        if self.done:
            raise InputError("the episode is over: undo a token, or start a new episode")

    def _decode(self, ids: list[int], keep_special: bool = False) -> str:
        return self.env.tokenizer.decode(ids, skip_special_tokens=not keep_special)

    def _act(self, token: int, source: str) -> None:
        """One env step with ``token``, recording its log-probs and the player's KL_t."""
        self._check_playing()
        self._sync()
        logprob = float(torch.log_softmax(self.env.next_token_logits()[0].float(), dim=-1)[token])
        ref_logits = self.env.reference_next_token_logits()
        ref_logprob = None if ref_logits is None else float(torch.log_softmax(ref_logits[0].float(), dim=-1)[token])
        with self.env.pause_kl_controller():
            _, reward, terminated, truncated, info = self.env.step(np.array([token]))
        measured = logprob if ref_logprob is None else ref_logprob  # π_θ stands in for π_ref when there is none
        player_logprob = logprob if source == "sampled" else 0.0  # a chosen or typed token: probability 1
        self.tokens.append(PlayedToken(token, self._decode([token], keep_special=True), source, logprob, ref_logprob,
                                       player_logprob - measured, float(reward[0])))
        if terminated[0] or truncated[0]:
            self._final = {"text": str(info["text"][0]), "rm_score": float(info["rm_score"][0]),
                           "episode_kl": float(info["episode_kl"][0]), "kl_coef": float(info["kl_coef"][0]),
                           "terminated": bool(terminated[0])}
        self._claim_env()

    def _claim_env(self) -> None:
        _HOLDER[self.env] = (self._uid, len(self.tokens))

    def _sync(self) -> None:
        """Make the env hold this session's episode (replay it when another session or the policy's sample moved
        the env)."""
        if _HOLDER.get(self.env) != (self._uid, len(self.tokens)):
            self._replay()

    def _replay(self) -> None:
        """Reset the env to this episode's prompt and step its tokens again (no new sampling)."""
        with self.env.pause_kl_controller():
            self.env.reset(options={"prompts": [self.prompt]})
            for token in self.tokens:
                self.env.step(np.array([token.id]))
        self._claim_env()

    def _sample_policy_episode(self) -> dict[str, Any]:
        """Play this prompt with π_θ to the end (the env's sampler, seeded) and return its completion's figures."""
        env = self.env
        _HOLDER.pop(env, None)  # the env leaves this session's episode: the next move replays it
        ids, total = [], 0.0
        with env.pause_kl_controller():
            env.reset(options={"prompts": [self.prompt]})
            while True:
                token = int(sample_actions(env.next_token_logits(), self._policy_sampler)[0])
                _, reward, terminated, truncated, info = env.step(np.array([token]))
                ids.append(token)
                total += float(reward[0])
                if terminated[0] or truncated[0]:
                    break
        return {"completion": str(info["text"][0]),
                "tokens": [{"id": i, "text": self._decode([i], keep_special=True)} for i in ids],
                "num_tokens": len(ids), "rm_score": float(info["rm_score"][0]),
                "kl": float(info["episode_kl"][0]), "return": total}

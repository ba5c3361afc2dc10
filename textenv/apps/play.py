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
import contextlib
import fcntl
import json
import math
import os
import sys
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from textenv.apps.arguments import COUNT, NON_NEGATIVE, SEED, ArgumentType
from textenv.logprobs import OffPolicyActionsWarning
from textenv.preferences import PreferencePair, load_preferences
from textenv.rollout import sample_actions
from textenv.validation import InputError, check_int, check_seed
from textenv.vector_env import TextGenVectorEnv

#: Where a token of the player's completion came from.
SOURCES = ("chosen", "typed", "sampled")
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
    another session moved the env (do not step the env yourself while a session plays on it: the session would not
    notice). Calls are not thread-safe: serialise them (one lock per env). Finished
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
            for rank, (prob, token) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1)
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
        """Tokenise ``text`` on its own (:meth:`encode`; not re-tokenised together with the tokens before it) and
        force its tokens, one env step per token; tokens past the end of the episode (``max_new_tokens``, or an EOS
        in the text) are dropped. Returns the new :meth:`state`.
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
        if not math.isfinite(logprob) or (ref_logprob is not None and not math.isfinite(ref_logprob)):
            raise InputError(f"token {token} ({self._decode([token], keep_special=True)!r}) has probability 0 under "
                             "the policy or the reference: its KL would be infinite; choose another token")
        with self.env.pause_kl_controller(), _player_actions():
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
        with self.env.pause_kl_controller(), _player_actions():
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


@contextlib.contextmanager
def _player_actions() -> Iterator[None]:
    """Silence the env's :class:`~textenv.logprobs.OffPolicyActionsWarning` while it steps the player's tokens: the
    player is another actor than π_θ on purpose (the session measures the player's KL itself), and the warning's
    advice (``set_policy``) is for a program, not for a person in the middle of a game."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OffPolicyActionsWarning)
        yield


# ---------------------------------------------------------------------------------------------- JSONL appends
def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append ``row`` to ``path`` as one JSON line, atomically: the whole line goes out in one ``write`` under an
    exclusive ``flock`` (other textenv processes appending to the same file wait), then ``fsync``. A write that
    fails part-way (disk full) is cut back to the file's previous length, so the file never holds half a line;
    earlier lines are never rewritten. A file that does not end with a newline (a torn last line of another tool)
    gets one first, in the same write. The parent directory is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write to {path} ({written} of {len(line)} bytes)")
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)  # no half line: back to what the file held before this append
            raise
    finally:
        os.close(fd)


def check_jsonl_target(path: str, flag: str, validate: Callable[[Path], Any] | None = None) -> Path:
    """``path`` as a JSONL file ``textenv play`` may append to: not a directory; when it exists, every line a JSON
    object (``validate`` checks the file further, e.g. the preference format). :class:`InputError` naming
    ``flag`` otherwise; nothing is written."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{flag} {target} is a directory; give a .jsonl file to append to")
    if target.parent.exists() and not target.parent.is_dir():
        raise InputError(f"{flag} {target}: {target.parent} is a file, not a directory")
    if not target.is_file():
        return target
    if validate is not None:
        validate(target)
        return target
    for number, line in enumerate(target.read_bytes().splitlines(), start=1):
        try:
            ok = not line.strip() or isinstance(json.loads(line), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            raise InputError(f"{flag} {target}:{number} is not a JSON object line; textenv play appends JSON lines "
                             "and never writes into another kind of file: choose a new file")
    return target


# ---------------------------------------------------------------------------------------------- the terminal screen
HELP = """\
commands (one per line, then Enter):
  1-K        take candidate number N (1 = the policy's most likely next token)
  Enter      let the policy sample the next token from pi_theta (an empty line)
  TEXT       any other line is text to force: tokenised, one env step per token (start with a space
             for a new word: " fun" not "fun")
  "TEXT      a leading double quote forces TEXT exactly: " 2 stars, or "u for the letter u (a closing
             quote is dropped)
  t TEXT     the same: everything after "t " (t 42 forces "42", t  42 with two spaces forces " 42")
  #ID        take the token with id ID (any token of the vocabulary)
  e          end the completion here (force the EOS token)
  u          undo the last token (also once the episode is over)
  ?          this help
  q          quit (a finished episode is saved first; an unfinished one is not)
numbers: pi_theta = the policy's probability of each candidate, pi_ref = the reference model's;
KL = sum over your tokens of log p_you - log pi_ref (a token you pick: -log pi_ref, how surprising it is
to the model; a token the policy sampled: log pi_theta - log pi_ref); R = r_phi - beta * KL.
"""
END_HELP = """\
the episode is over:
  Enter      save it and go on (1 or 2 first to record which completion you prefer, with --preferences)
  1 / 2      you prefer your completion (1) or the policy's (2): saved to --preferences, then go on
  s          no preference: save the episode only
  u          undo your last token and keep playing
  q          save and quit
"""
SOURCE_STYLES = {"chosen": "bold green", "typed": "bold yellow", "sampled": "bold cyan"}


def visible(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``...): model text never moves the cursor or
    sends terminal escape sequences."""
    return "".join(repr(char)[1:-1] if char.isprintable() is False and char != " " else char for char in text)


def number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, and no ``-0.000`` for a rounding error below zero."""
    return f"{round(value, digits) + 0.0:.{digits}f}"


def sequence_text(prompt: str, tokens: list[dict[str, Any]], width: int = 60) -> Any:
    """The prompt (its last ``width`` characters), ``|``, then each token with its boundary ``|`` visible,
    coloured by who chose it (green chosen, yellow typed, cyan sampled)."""
    from rich.text import Text

    shown = visible(prompt)
    line = Text()
    line.append("…" + shown[-width:] if len(shown) > width else shown, style="dim")
    line.append(" |", style="dim")
    for token in tokens:
        line.append(visible(token["text"]), style=SOURCE_STYLES.get(token["source"], ""))
        line.append("|", style="dim")
    return line


def candidate_table(state: dict[str, Any]) -> list[Any]:
    """One line per candidate: its number, π_θ and π_ref (when there is a reference) in percent, the token."""
    from rich.text import Text

    has_reference = state["has_reference"]
    lines = [Text("    #    π_θ" + ("   π_ref" if has_reference else "") + "  next token", style="bold")]
    for candidate in state["candidates"]:
        line = Text(f"  {candidate['rank']:>3}  {candidate['prob']:6.1%}", style="")
        if has_reference:
            line.append(f"  {candidate['ref_prob']:6.1%}")
        line.append("  ")
        line.append(repr(candidate["text"]) if not candidate["eos"] else f"{visible(candidate['text'])} (end)",
                    style="bold" if candidate["rank"] == 1 else "")
        lines.append(line)
    return lines


def state_lines(state: dict[str, Any]) -> list[Any]:
    """The state screen: header (episode, step, β, Σ KL), the sequence so far, the last action's numbers and the
    candidates."""
    from rich.text import Text

    header = Text(f"── episode {state['episode']} · step {state['step']}/{state['max_new_tokens']} · β "
                  f"{state['kl_coef']:g} · your Σ KL {number(state['kl'])} nats", style="bold blue")
    lines = [header, sequence_text(state["prompt"], state["tokens"])]
    if state["tokens"]:
        last = state["tokens"][-1]
        ref = "" if last["ref_logprob"] is None else f"  log π_ref {number(last['ref_logprob'])}"
        lines.append(Text(f"last: {visible(repr(last['text']))} ({last['source']})  log π_θ "
                          f"{number(last['logprob'])}{ref}  KL_t {number(last['kl'])}", style="dim"))
    if not state["done"]:
        lines.extend(candidate_table(state))
    return lines


def result_lines(result: dict[str, Any]) -> list[Any]:
    """The end screen: your completion and the policy's, each with r_φ, KL and the return R = r_φ − β·KL."""
    from rich.text import Text

    beta, policy = result["kl_coef"], result["policy"]
    why = "EOS" if result["terminated"] else "max_new_tokens reached"
    lines = [Text(f"══ episode over ({why}, {result['num_tokens']} tokens)", style="bold blue")]
    for who, completion, score, kl, ret, style in (
        ("you   ", result["completion"], result["rm_score"], result["kl"], result["return"], "bold green"),
        ("policy", policy["completion"], policy["rm_score"], policy["kl"], policy["return"], "bold cyan"),
    ):
        line = Text()
        line.append(f"{who}: ", style=style)
        line.append(visible(result["prompt"]), style="dim")
        line.append(" |", style="dim")
        line.append(visible(completion))
        lines.append(line)
        lines.append(Text(f"        reward r_φ {number(score)}   KL {number(kl)} nats   return R = r_φ − β·KL = "
                          f"{number(score)} − {beta:g} × {number(kl)} = {number(ret)}"))
    winner = "you" if result["return"] > policy["return"] else "the policy" if result["return"] < policy[
        "return"] else "nobody"
    lines.append(Text(f"higher return: {winner}   (the env itself, which measures π_θ whoever acts, paid your "
                      f"tokens KL {number(result['env_kl'])}, R {number(result['env_return'])})", style="dim"))
    return lines


class Screen:
    """Where the game is drawn: a rich console on ``out`` (colour only when it is a terminal, no line wrapping)."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console

        self.console = Console(file=out, highlight=False, soft_wrap=True, emoji=False)

    def show(self, lines: list[Any] | str) -> None:
        """Print renderables (or a plain string, which is not parsed as markup)."""
        for line in [lines] if isinstance(lines, str) else lines:
            self.console.print(line, markup=False) if isinstance(line, str) else self.console.print(line)


class LineReader:
    """Commands one line at a time: ``input()`` with its line editing on a terminal; on a pipe or file each line is
    read and echoed after the prompt, so a scripted run's transcript shows its commands."""

    def __init__(self, stream: TextIO, screen: Screen) -> None:
        self.stream = stream
        self.screen = screen
        try:
            self.interactive = stream.isatty()
        except (AttributeError, ValueError):
            self.interactive = False

    def read(self, prompt: str) -> str | None:
        """The next line without its newline, or ``None`` at the end of input (Ctrl-D)."""
        if self.interactive and self.stream is sys.stdin:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = self.stream.readline()
        if not line:
            return None
        line = line.rstrip("\r\n")
        self.screen.show(f"{prompt}{line}")
        return line


# ---------------------------------------------------------------------------------------------- the game loop
def parse_move(line: str) -> tuple[str, Any]:
    """A command line of the game as ``(action, argument)``: ``("sample", None)`` (empty line), ``("rank", N)``,
    ``("id", ID)``, ``("type", TEXT)``, ``("undo" | "end" | "help" | "quit", None)``."""
    if line == "":
        return "sample", None
    if line.strip() in ("u", "e", "q", "?", "h", "help"):
        return {"u": "undo", "e": "end", "q": "quit"}.get(line.strip(), "help"), None
    if line.strip().isdigit():
        return "rank", int(line.strip())
    if line.startswith("#") and line[1:].strip().isdigit():
        return "id", int(line[1:].strip())
    if line.startswith('"'):
        text = line[1:]
        return "type", text[:-1] if len(text) > 1 and text.endswith('"') else text
    if line.startswith("t "):
        return "type", line[2:]
    return "type", line


def apply_move(session: PlaySession, action: str, argument: Any) -> None:
    """Make the move ``(action, argument)`` of :func:`parse_move` on ``session`` (not help or quit)."""
    moves: dict[str, Callable[[], Any]] = {
        "sample": session.sample, "rank": lambda: session.choose_rank(argument),
        "id": lambda: session.choose(argument), "type": lambda: session.type_text(argument),
        "undo": session.undo, "end": session.end,
    }
    moves[action]()


@dataclass
class EpisodeEnd:
    """How an episode left the screen: ``saved`` (finished and accepted), the player's ``prefer`` (``"player"``,
    ``"policy"`` or ``None``) and whether they ``quit``."""

    saved: bool
    prefer: str | None = None
    quit: bool = False


def play_episode(session: PlaySession, reader: LineReader, screen: Screen, ask_preference: bool) -> EpisodeEnd:
    """Play the session's episode with the commands of ``reader`` until the player accepts the finished episode
    (:class:`EpisodeEnd` ``saved``) or quits; a bad move prints one line and the game goes on."""
    screen.show(state_lines(session.state()))
    while True:
        if session.done:
            end = end_of_episode(session, reader, screen, ask_preference)
            if end is not None:
                return end
            screen.show(state_lines(session.state()))  # undone: back into the episode
            continue
        line = reader.read("move> ")
        if line is None:
            return EpisodeEnd(saved=False, quit=True)
        action, argument = parse_move(line)
        if action == "quit":
            screen.show("quit (this unfinished episode is not saved)")
            return EpisodeEnd(saved=False, quit=True)
        if action == "help":
            screen.show(HELP)
            continue
        try:
            apply_move(session, action, argument)
        except InputError as err:
            screen.show(f"{err} (? for help)")
            continue
        screen.show(state_lines(session.state()))


def end_of_episode(session: PlaySession, reader: LineReader, screen: Screen,
                   ask_preference: bool) -> EpisodeEnd | None:
    """The end screen: the result, then the player's answer. ``None`` when they undid a token (play goes on)."""
    result = session.result()
    screen.show(result_lines(result))
    comparable = result["completion"] != result["policy"]["completion"]
    if ask_preference and not comparable:
        screen.show("your completion is the policy's: nothing to prefer")
    asking = ask_preference and comparable
    prompt = "prefer 1 yours / 2 the policy's / s neither · u undo · q quit> " if asking else \
        "Enter next · u undo · q quit> "
    while True:
        line = reader.read(prompt)
        answer = "s" if line is None or line.strip() == "" else line.strip()
        if answer == "u":
            session.undo()
            return None
        if answer in ("?", "h", "help"):
            screen.show(END_HELP)
        elif answer == "q" or line is None:
            return EpisodeEnd(saved=True, quit=True)
        elif answer == "s":
            return EpisodeEnd(saved=True)
        elif asking and answer in ("1", "2"):
            return EpisodeEnd(saved=True, prefer="player" if answer == "1" else "policy")
        else:
            screen.show(f"{answer!r} does nothing here: " + ("1, 2, s, " if asking else "Enter, ") + "u or q (? help)")


def save_episode(session: PlaySession, end: EpisodeEnd, output: Path | None, preferences: Path | None,
                 screen: Screen) -> None:
    """Append the accepted episode to ``output`` and the player's preference (if any) to ``preferences``."""
    if output is not None:
        append_jsonl(output, session.record())
        screen.show(f"saved episode {session.episode} to {output}")
    if preferences is not None and end.prefer is not None:
        row = session.preference(end.prefer)
        if row is not None:
            append_jsonl(preferences, row.to_json())
            screen.show(f"saved your preference ({end.prefer}'s completion) to {preferences}")


def play_games(session: PlaySession, reader: LineReader, screen: Screen, episodes: int, prompt: str | None,
               output: Path | None, preferences: Path | None) -> int:
    """Play up to ``episodes`` episodes (a new prompt each time unless ``prompt``); returns how many were saved."""
    saved = 0
    for number in range(episodes):
        if number:
            session.restart(prompt)
        end = play_episode(session, reader, screen, ask_preference=preferences is not None)
        if end.saved:
            save_episode(session, end, output, preferences, screen)
            saved += 1
        if end.quit:
            break
    return saved


# ---------------------------------------------------------------------------------------------- command line
TOP_K = ArgumentType(int, lambda name, value: _check_top_k(value), f"an integer from 1 to {MAX_TOP_K}")


def _check_top_k(value: Any) -> None:
    check_int("top_k", value, minimum=1)
    if value > MAX_TOP_K:
        raise InputError(f"top_k={value} > {MAX_TOP_K}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``textenv play``."""
    parser.description = ("Be the policy: at each step pick one of the policy's top-k next tokens by number, type "
                          "text, press Enter to let the policy sample, u to undo; at the end compare your reward, "
                          "KL and return with the policy's own completion. Reads one command per line (also from "
                          "a pipe). ? shows the commands; docs/play.md explains the numbers.")
    parser.add_argument("--model", metavar="MODEL",
                        help="policy model name or directory (default: the embedded tiny GPT-2)")
    parser.add_argument("--checkpoint", metavar="RUN",
                        help="play against a trained policy: RUN/checkpoint (or the run directory RUN); its reward "
                             "model, base model, β and max_new_tokens are the defaults")
    parser.add_argument("--reference", metavar="MODEL",
                        help="with --checkpoint: the base model for KL (default: the checkpoint's)")
    parser.add_argument("--reward-model", dest="reward_model", metavar="SPEC",
                        help="reward model spec (default: vader, or the checkpoint's)")
    parser.add_argument("--prompt", metavar="TEXT",
                        help="the prompt of every episode (default: a held-out built-in prompt each episode)")
    parser.add_argument("--top-k", dest="top_k", type=TOP_K, default=10, metavar="K",
                        help="candidates shown at each step (default: %(default)s)")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=COUNT, metavar="N",
                        help="completion length limit in tokens (default: 16, or the checkpoint's)")
    parser.add_argument("--kl-coef", dest="kl_coef", type=NON_NEGATIVE, metavar="BETA",
                        help="β of R = r_φ − β·KL (default: 0.05, or the checkpoint's)")
    parser.add_argument("--episodes", type=COUNT, default=1, metavar="N",
                        help="episodes to play (default: %(default)s)")
    parser.add_argument("--seed", type=SEED, default=0,
                        help="seeds the prompt draw and the policy's samples (default: %(default)s)")
    parser.add_argument("--output", metavar="FILE", help="JSONL file to append one object per finished episode to")
    parser.add_argument("--preferences", metavar="FILE",
                        help="preference JSONL (the format train-rm reads) to append which completion you prefer, "
                             "yours or the policy's, to")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda... (default: %(default)s)")


def check_play_arguments(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """Every check that needs no model: the flags that exclude each other and the two output files (returned as
    paths, ``None`` when not given)."""
    if args.checkpoint is not None and args.model is not None:
        raise InputError("give --model (a base model) or --checkpoint (a trained policy), not both")
    if args.reference is not None and args.checkpoint is None:
        raise InputError("--reference applies to --checkpoint (the base model of a trained policy); with --model "
                         "the reference is a frozen copy of the model")
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("--prompt is empty; give the text the completion continues, e.g. --prompt 'the film was'")
    output = None if args.output is None else check_jsonl_target(args.output, "--output")
    preferences = None if args.preferences is None else check_jsonl_target(
        args.preferences, "--preferences", _check_preference_file)
    if output is not None and preferences is not None and output.resolve() == preferences.resolve():
        raise InputError("--output and --preferences are the same file; give two files (episodes and preference "
                         "pairs have different formats)")
    return output, preferences


def _check_preference_file(path: Path) -> None:
    """An existing ``--preferences`` file must already be in the preference format (``train-rm`` reads it)."""
    try:
        load_preferences(path)
    except InputError as err:
        raise InputError(f"--preferences: {err}") from None


def build_play_env(args: argparse.Namespace, max_prompt_tokens: int | None = None,
                   default_max_new_tokens: int = 16) -> TextGenVectorEnv:
    """The one-row env of the game (``textenv play`` and ``textenv serve``'s Play page): ``--model`` (or
    ``--checkpoint``'s policy with its base model, or ``--reference``, as π_ref and its training settings as
    defaults), ``--reward-model``, ``--prompt`` or the built-in held-out prompts, ``--max-new-tokens`` (else
    ``default_max_new_tokens``), ``--kl-coef`` (else 0.05; 0 loads no reference), ``--device``;
    ``max_prompt_tokens`` bounds the prompts a player may type (None: the env's default)."""
    from textenv.apps.evaluation import load_reward_model
    from textenv.models.loading import DEFAULT_MODEL, resolve_device

    device = resolve_device(args.device)
    models: dict[str, Any] = {"model": args.model or DEFAULT_MODEL}
    reward, max_new_tokens = args.reward_model or "vader", args.max_new_tokens or default_max_new_tokens
    kl_coef = args.kl_coef
    if args.checkpoint is not None:
        models, settings = checkpoint_models(args, device)
        reward, max_new_tokens = settings["gold"], settings["max_new_tokens"]
        kl_coef = kl_coef if kl_coef is not None else settings["kl_coef"]
    kl_coef = 0.05 if kl_coef is None else kl_coef
    if kl_coef == 0:
        models.pop("reference", None)  # β = 0: no reference model (π_θ stands in for π_ref in the game)
    prompt = getattr(args, "prompt", None)
    limit = {} if max_prompt_tokens is None else {"max_prompt_tokens": max_prompt_tokens}
    return TextGenVectorEnv(num_envs=1, **models, reward_model=load_reward_model(reward, device),
                            prompts=[prompt] if prompt is not None else "builtin", prompt_split="eval",
                            max_new_tokens=max_new_tokens, kl_coef=kl_coef, autoreset_mode="disabled", device=device,
                            **limit)


def checkpoint_models(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """The policy, tokenizer and reference of ``--checkpoint`` (checked against its manifest; the reference is
    ``--reference`` or ``--model`` if given, else the base model its ``agent.json`` names) and the settings
    ``textenv eval`` reads from it (flags override them)."""
    from textenv.agents.base import CHECKPOINT_KIND
    from textenv.apps.eval_checkpoint import eval_settings
    from textenv.apps.run_directory import resolve_checkpoint
    from textenv.checkpoint import verify_directory
    from textenv.models.loading import load_causal_lm, load_tokenizer

    checkpoint = resolve_checkpoint(args.checkpoint, "--checkpoint")
    verify_directory(checkpoint, CHECKPOINT_KIND)
    flags = argparse.Namespace(reward_model=args.reward_model, max_new_tokens=args.max_new_tokens,
                               reference=getattr(args, "reference", None) or args.model)
    settings = eval_settings(flags, checkpoint)
    reference = load_causal_lm(settings["reference"], device).eval().requires_grad_(False)
    models = {"model": _sampling_policy(checkpoint, load_causal_lm(checkpoint / "policy", device)),
              "tokenizer": load_tokenizer(checkpoint / "policy"), "reference": reference}
    return models, settings


def _sampling_policy(checkpoint: Path, lm: torch.nn.Module) -> torch.nn.Module:
    """What the checkpoint's agent samples with, as ``textenv eval`` plays it: the LM, or the module the agent's
    class builds around it (``sampling_policy``: ILQL's Q-weighted decoding)."""
    from textenv.agents import AGENTS
    from textenv.agents.base import read_checkpoint_meta

    name = read_checkpoint_meta(checkpoint).get("agent")
    build = getattr(AGENTS[name], "sampling_policy", None) if isinstance(name, str) and name in AGENTS else None
    return lm if build is None else build(checkpoint, lm).to(lm.device)


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """``textenv play``: check the flags and files, build the env, play ``--episodes`` episodes."""
    output, preferences = check_play_arguments(args)
    screen = Screen(stdout or sys.stdout)
    env = build_play_env(args)
    session = PlaySession(env, prompt=args.prompt, top_k=args.top_k, seed=args.seed)
    reader = LineReader(stdin or sys.stdin, screen)
    if reader.interactive:
        screen.show("you are the policy: a number picks a candidate, text is forced, Enter lets the policy sample, "
                    "u undoes, ? helps, q quits")
    saved = play_games(session, reader, screen, args.episodes, args.prompt, output, preferences)
    screen.show(f"{saved} episode(s) finished" + (f", appended to {output}" if output and saved else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m textenv.apps.play`` is ``textenv play``."""
    from textenv.apps.cli import main as cli_main

    return cli_main(["play", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

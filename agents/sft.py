"""Supervised fine-tuning (behaviour cloning) of the env's policy on demonstration text.

InstructGPT step 1 (and the pre-training term of PPO-ptx, InstructGPT eq. 4; docs/rl-framing.md#sft):
maximise the log-likelihood of demonstrations,

    loss(θ) = − (1 / N_tok) Σ_i Σ_t log π_θ(y_t^i | x^i, y_<t^i),

where the sum runs over the *completion* tokens y^i only; the prompt x^i is context, never a target. A
plain text (no prompt) is a completion of the empty prompt: it is preceded by the BOS token (EOS for
GPT-2) so that its first token is predicted too.

Data sources (``demonstrations=``):
    * ``None``: reviews of the embedded model's corpus, :func:`textenv.prompts.builtin_reviews`;
    * a ``.jsonl`` file of ``{"prompt", "completion"}`` rows, of ``{"text"}`` rows, or a *preference*
      file (``{"prompt", "chosen", "rejected"}`` / ``{"prompt", "ranked"}``, read by
      :mod:`textenv.preferences`), whose preferred completions are cloned;
    * a ``.txt`` file (one text per line);
    * a list of strings (plain texts), of ``(prompt, completion)`` pairs or of ``{"prompt", "completion"}``.

This module also holds the tokenisation and log-likelihood of (prompt, completion) pairs that the
offline preference agents (:mod:`textenv.agents.dpo`) share: :func:`encode_pairs`, :func:`collate`,
:func:`completion_logprobs`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textenv.agents.base import Agent
from textenv.agents.config import NativeConfig
from textenv.agents.gradient_step import gradient_step, share
from textenv.config import Flag, Integer, option
from textenv.fast import model_fast
from textenv.logprobs import chosen_logprobs, entropy
from textenv.preferences import PreferencePair, PreferenceRanking, as_preference_rows
from textenv.prompts import builtin_reviews
from textenv.rollout import masked_mean
from textenv.validation import InputError, decode_utf8

#: Anything :func:`load_demonstrations` accepts.
DemonstrationSource = Any  # None | str | os.PathLike | Sequence[str | tuple[str, str] | dict]


# ---------------------------------------------------------------------------------------------- data
def load_demonstrations(
    source: DemonstrationSource = None, num_default: int = 2000, seed: int = 0
) -> list[tuple[str, str]]:
    """Normalise a demonstration source to ``(prompt, completion)`` pairs (prompt ``""`` for plain texts).

    Args:
        source: see the module docstring.
        num_default: how many grammar reviews to sample when ``source`` is ``None``.
        seed: seed of that sample.
    """
    if source is None:
        pairs = [("", text) for text in builtin_reviews(num_default, seed)]
    elif isinstance(source, (str, os.PathLike)):
        pairs = _demonstrations_from_file(Path(source))
    elif isinstance(source, Sequence):
        if source and _is_preference(source[0]):
            pairs = _preferred_completions(source)
        else:
            pairs = [_demonstration(item, f"demonstrations[{i}]") for i, item in enumerate(source)]
    else:
        raise InputError(
            "demonstrations must be None, a .jsonl/.txt path or a list of texts / (prompt, completion) pairs, "
            f"got {type(source).__name__}"
        )
    if not pairs:
        raise InputError("demonstrations is empty: give at least one text or (prompt, completion) pair")
    return pairs


def _is_preference(item: Any) -> bool:
    return isinstance(item, (PreferencePair, PreferenceRanking)) or (
        isinstance(item, dict) and ("chosen" in item or "ranked" in item)
    )


def _preferred_completions(source: Any) -> list[tuple[str, str]]:
    """The preferred completion of every comparison (the best of a ranking), each (prompt, text) once."""
    pairs = [(r.prompt, r.chosen if isinstance(r, PreferencePair) else r.ranked[0]) for r in as_preference_rows(source)]
    return list(dict.fromkeys(pairs))


def _demonstration(item: Any, where: str) -> tuple[str, str]:
    if isinstance(item, str):
        pair = ("", item)
    elif isinstance(item, dict):
        if "completion" in item:
            pair = (item.get("prompt", ""), item["completion"])
        elif "text" in item:
            pair = ("", item["text"])
        else:
            raise InputError(f'{where}: an object needs a "completion" (and optional "prompt") or a "text" field')
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        pair = (item[0], item[1])
    else:
        raise InputError(f"{where}={item!r} is not a text, a (prompt, completion) pair or a dict")
    prompt, completion = pair
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise InputError(f"{where}: prompt and completion must be strings, got {pair!r}")
    if not completion.strip():
        raise InputError(f"{where}: the completion is empty; every demonstration needs text to clone")
    return prompt, completion


def _demonstrations_from_file(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise InputError(f"demonstrations={str(path)!r} is not an existing .jsonl or .txt file")
    lines = [(number, line) for number, line in enumerate(read_utf8(path, "demonstrations").splitlines(), 1)
             if line.strip()]
    if path.suffix != ".jsonl":
        return [("", line) for _, line in lines]
    rows = []
    for number, line in lines:
        try:
            rows.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not valid JSON ({err.msg})") from err
    if rows and _is_preference(rows[0][1]):
        return _preferred_completions(path)  # parsed and validated by textenv.preferences
    return [_demonstration(row, where) for where, row in rows]


def read_utf8(path: Path, argument: str) -> str:
    """The text of ``path``; a file that is not UTF-8 raises :class:`InputError` naming ``argument``, the file
    and the line."""
    try:
        return decode_utf8(path.read_bytes(), str(path))
    except InputError as err:
        raise InputError(f"{argument}: {err}") from None


# ---------------------------------------------------------------------------------------------- tokens
@dataclass
class EncodedPair:
    """Token ids of one (prompt, completion) pair; the model is trained/scored on ``completion`` only."""

    prompt: list[int]
    completion: list[int]


@dataclass
class TokenBatch:
    """B left-padded sequences ``prompt + completion`` (the env's layout).

    input_ids, attention_mask: ``(B, L)``. target_mask: ``(B, L − 1)`` float, 1 where ``input_ids[:, t + 1]``
    is a completion token (the targets of the log-likelihood).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_mask: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """Completion tokens in the batch (the targets)."""
        return int(self.target_mask.sum())


def context_length(model: PreTrainedModel) -> int | None:
    """The model's maximum sequence length (``n_positions`` / ``max_position_embeddings``), if it has one."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int | None = None,
    append_eos: bool = True,
) -> list[EncodedPair]:
    """Tokenise pairs as the env lays them out: prompt tokens (``add_special_tokens=True``), then the
    completion's tokens (plus EOS when ``append_eos``, so the policy learns where to stop).

    An empty prompt becomes the BOS token (EOS if there is none). A completion longer than
    ``max_length − len(prompt)`` is cut at the end; a prompt that leaves no room raises ``InputError``.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    pairs = []
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        p = list(p) or [start]
        c = list(c) + ([tokenizer.eos_token_id] if append_eos else [])
        if not c:
            raise InputError(f"completion {i} ({completions[i]!r}) tokenizes to nothing and append_eos=False")
        if max_length is not None:
            room = max_length - len(p)
            if room < 1:
                raise InputError(
                    f"prompt {i} ({prompts[i][:60]!r}) has {len(p)} tokens, leaving no room for a completion "
                    f"within max_length={max_length}; shorten it or raise max_length"
                )
            c = c[:room]
        pairs.append(EncodedPair(p, c))
    return pairs


def collate(pairs: Sequence[EncodedPair], pad_token_id: int, device: torch.device | str = "cpu") -> TokenBatch:
    """Left-pad ``prompt + completion`` sequences into one :class:`TokenBatch`."""
    width = max(len(p.prompt) + len(p.completion) for p in pairs)
    ids = torch.full((len(pairs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    targets = torch.zeros((len(pairs), width), dtype=torch.float32)
    for row, pair in enumerate(pairs):
        sequence = pair.prompt + pair.completion
        ids[row, width - len(sequence) :] = torch.tensor(sequence)
        mask[row, width - len(sequence) :] = 1
        targets[row, width - len(pair.completion) :] = 1.0
    return TokenBatch(ids.to(device), mask.to(device), targets[:, 1:].to(device))


def completion_logprobs(model: PreTrainedModel, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward; returns ``(logprobs, logits)``: log π(input_ids[:, t+1] | input_ids[:, ≤t]) masked to the
    completion tokens, ``(B, L − 1)`` nats, and the float logits predicting them, ``(B, L − 1, V)``.

    Position ids count unmasked tokens only, as in the env, so the numbers match rollout log-probs.
    """
    positions = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions).logits
    logits = logits[:, :-1].float()
    logprobs = chosen_logprobs(logits, batch.input_ids[:, 1:], fast=model_fast(model))
    return logprobs * batch.target_mask, logits


# ---------------------------------------------------------------------------------------------- agent
@dataclass(frozen=True)
class OfflineConfig(NativeConfig):
    """Hyper-parameters of the agents that train on a fixed dataset (SFT, DPO, LRML) besides
    :class:`~textenv.agents.config.AgentConfig`'s."""

    batch_size: int = option(16, "examples (demonstrations or preference pairs) per step", Integer(1))
    append_eos: bool = option(True, "end every completion with EOS (teaches the policy to stop, as the env's "
                                    "episodes do)", Flag())
    max_length: int | None = option(None, "longest prompt + completion in tokens (None: the model's context "
                                          "length)", Integer(2, none_ok=True))  # >= one prompt + one completion token


@dataclass(frozen=True)
class SFTConfig(OfflineConfig):
    """SFT's hyper-parameters."""

    demonstrations: str | Sequence[Any] | None = option(
        None, "a .jsonl/.txt path or a list of texts / (prompt, completion) pairs (None: reviews of the embedded "
              "model's corpus); see load_demonstrations")
    num_demonstrations: int = option(2000, "number of corpus reviews when demonstrations is None", Integer(1))


class SFT(Agent):
    """Behaviour cloning: minibatch gradient descent on the completion-token negative log-likelihood.

    One :meth:`train_iteration` is one Adam step on ``batch_size`` demonstrations (an epoch is a fresh
    permutation of the data, drawn from the agent's seeded generator, so resumes are exact); its
    ``num_tokens`` is the number of completion tokens trained on, so ``learn(total_timesteps)`` counts
    tokens like the RL agents. Only the env's ``policy``, ``tokenizer`` and ``device`` are used.
    Hyper-parameters: :class:`SFTConfig`.
    """

    name = "sft"
    config_class = SFTConfig
    config: SFTConfig

    def __init__(self, env: Any, config: SFTConfig | None = None, **kwargs: Any) -> None:
        super().__init__(env, config, **kwargs)
        c = self.config
        pairs = load_demonstrations(c.demonstrations, c.num_demonstrations, c.seed or 0)
        self.data = encode_pairs(
            self.env.tokenizer, [p for p, _ in pairs], [completion for _, completion in pairs],
            c.max_length or context_length(self.policy), c.append_eos,
        )
        self.sampler = MinibatchSampler(len(self.data), c.batch_size, self.generator)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.learning_rate)

    def _extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def _check_extra_state(self, state: dict[str, Any]) -> None:
        if "sampler" in state:
            self.sampler.check_state_dict(state["sampler"], "demonstrations")

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])

    def train_iteration(self) -> dict[str, float]:
        indices = self.sampler.next()
        micro = [indices] if self.config.micro_batch_size is None else [
            indices[i : i + self.config.micro_batch_size] for i in range(0, len(indices), self.config.micro_batch_size)]
        batches = [collate([self.data[i] for i in chunk], self.env.tokenizer.pad_token_id, self.env.device)
                   for chunk in micro]
        num_tokens = sum(batch.num_tokens for batch in batches)
        entropies: list[float] = []  # each micro-batch's mean entropy, weighted by its share of the tokens

        def part(batch: TokenBatch) -> torch.Tensor:
            logprobs, logits = completion_logprobs(self.policy, batch)
            loss = -masked_mean(logprobs, batch.target_mask)  # −(1/N_tok) Σ log π_θ(y_t | x, y_<t)
            with torch.no_grad():
                mean_entropy = masked_mean(entropy(logits.detach(), fast=model_fast(self.policy)), batch.target_mask)
            entropies.append(float(share(mean_entropy, batch.num_tokens, num_tokens)))
            return share(loss, batch.num_tokens, num_tokens)

        self.policy.train()
        loss = gradient_step(self, [lambda b=b: part(b) for b in batches], self.optimizer, {"policy": self.policy},
                             self.config.max_grad_norm)
        self.policy.eval()
        return {
            "num_tokens": num_tokens,
            "train/loss": float(loss),
            "train/entropy": sum(entropies),
            "train/epoch": float(self.sampler.epoch),
        }

    @torch.no_grad()
    def demonstration_loss(self, batch_size: int = 64) -> float:
        """Mean negative log-likelihood per completion token over all demonstrations (nats, no update)."""
        total, count = 0.0, 0.0
        for start in range(0, len(self.data), batch_size):
            batch = collate(self.data[start : start + batch_size], self.env.tokenizer.pad_token_id, self.env.device)
            logprobs, _ = completion_logprobs(self.policy, batch)
            total -= float(logprobs.sum())
            count += float(batch.target_mask.sum())
        return total / max(count, 1.0)


class MinibatchSampler:
    """Indices of successive minibatches: each epoch is a fresh permutation from ``generator``.

    The last minibatch of an epoch may be smaller than ``batch_size``. State (permutation, cursor, epoch)
    is checkpointed for exact resume.
    """

    def __init__(self, num_items: int, batch_size: int, generator: torch.Generator) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.generator = generator
        self.epoch = 0
        self.cursor = 0
        self.order = self._permutation()

    def _permutation(self) -> list[int]:
        return torch.randperm(self.num_items, generator=self.generator, device=self.generator.device).tolist()

    def next(self) -> list[int]:
        """The next ``≤ batch_size`` indices."""
        indices = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        if self.cursor >= self.num_items:
            self.epoch += 1
            self.cursor = 0
            self.order = self._permutation()
        return indices

    def state_dict(self) -> dict[str, Any]:
        return {"order": list(self.order), "cursor": self.cursor, "epoch": self.epoch}

    def check_state_dict(self, state: dict[str, Any], items: str = "items") -> None:
        """Refuse a saved state over another number of ``items`` (:class:`InputError`), before anything loads."""
        saved = len(state.get("order", ()))
        if saved != self.num_items:
            raise InputError(f"the checkpoint's minibatch order covers {saved} {items}, this agent has "
                             f"{self.num_items}: resume with the same {items} as the saved run")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)
        self.order, self.cursor, self.epoch = list(state["order"]), state["cursor"], state["epoch"]

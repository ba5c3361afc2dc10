"""Batched token-by-token generation with KV caches for the policy and the frozen reference.

The engine is the state machine under TextGen-v0. It holds B rows; each row is a prompt plus the tokens
generated so far (the RL state s_t = (x, y_<t)). After every change of state it has already computed the
policy's next-token logits for every row, with **one cached forward for the whole batch** (the prefix is
never recomputed). Agents sample from :attr:`policy_logits` instead of running the policy again.

The reference π_ref runs either every step (``lazy_reference=False``: one cached forward per step on its own
batched KV cache, fed the same columns; needed for per-token (dense) KL rewards and for reference-based action
masks) or **lazily**: when rows finish, ONE forward over just those episodes, packed without padding, scores
their generated tokens (no cache at all); :attr:`ref_logits`, when asked for, feeds the cache the columns it
has not seen in one multi-token cached forward. Both give the same numbers; lazy needs far fewer forwards
when only the episode's total KL is needed.

Layout: ``input_ids`` / ``attention_mask`` are ``(B, S)`` with every row ending at column S. A row is
``[left padding][prompt][generated tokens][padding appended after it finished]``; padding has mask 0.
Position ids count only unmasked tokens, so left padding does not shift positions. Per column the engine
also keeps ``generated`` (bool), ``logprobs`` (log π_θ of that token when it was sampled) and
``ref_logprobs`` (log π_ref of it, filled in by :meth:`sync_reference`).

The model calls live beside this module: :mod:`~textenv.engine.cache` (the cached step forward),
:mod:`~textenv.engine.prefill` (filling the caches from prompts) and :mod:`~textenv.engine.scoring` (the lazy
reference's one forward over finished episodes). With ``fast`` (the switch of :mod:`textenv.fast`) the prefill and
the reference's scoring run packed, and log-probs are computed in chunks; without, every forward is the plain one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StaticCache

from textenv.engine.cache import cached_forward, plain_static_layers
from textenv.engine.prefill import prefill_cache, prefill_rows
from textenv.engine.scoring import predicting_logits
from textenv.fast import model_fast, resolve_fast
from textenv.logprobs import chosen_logprobs
from textenv.validation import InputError


@dataclass
class StepOutput:
    """What one :meth:`GenerationEngine.advance` did; tensors of shape ``(B,)``.

    ``logprob`` / ``ref_logprob`` are log π(a_t|s_t) and log π_ref(a_t|s_t) in nats (0 for rows that were
    already finished). ``ref_logprob`` is ``None`` without a reference and with a lazy one (read
    :attr:`GenerationEngine.ref_logprobs` after :meth:`~GenerationEngine.sync_reference` instead).
    ``active`` marks the rows that took an action; ``terminated`` (EOS) and ``truncated`` (length limit)
    mark rows that finished now.
    """

    logprob: torch.Tensor
    ref_logprob: torch.Tensor | None
    active: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor


class GenerationEngine:
    """Batched generation state for a policy and an optional frozen reference model.

    Args:
        policy: the trainable causal LM π_θ (read, never modified here).
        reference: the frozen π_ref, or ``None`` when no KL penalty is needed (β = 0).
        tokenizer: decodes completions; its ``eos_token_id`` ends episodes, ``pad_token_id`` pads.
        max_new_tokens: episode length limit T (truncation).
        lazy_reference: run the reference only when its log-probs or logits are asked for (see
            :meth:`sync_reference`), instead of every step.
        fast: the switch of :mod:`textenv.fast` (packed prefill and reference scoring, chunked log-probs) or the
            plain transformers path; ``None`` follows what the models layer recorded for ``policy``, else
            ``TEXTENV_FAST``.
        eos_token_ids: every token id that ends an episode (the model's generation config may list several);
            default: the tokenizer's ``eos_token_id``.
    """

    def __init__(
        self,
        policy: PreTrainedModel,
        reference: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        lazy_reference: bool = False,
        fast: bool | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        self.policy = policy
        self.reference = reference
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.lazy_reference = lazy_reference
        self.fast = model_fast(policy) if fast is None else resolve_fast(fast)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.device = next(policy.parameters()).device
        ends = [self.eos_token_id] if eos_token_ids is None else [int(i) for i in eos_token_ids]
        #: long ``(E,)``: the token ids whose action terminates an episode.
        self.eos_token_ids = torch.tensor(sorted(set(ends)), dtype=torch.long, device=self.device)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.batch_size = 0
        empty_long = torch.empty(0, 0, dtype=torch.long, device=self.device)
        self.input_ids = empty_long
        self.attention_mask = empty_long
        self.generated = torch.empty(0, 0, dtype=torch.bool, device=self.device)  # (B, S) generated columns
        self.logprobs = torch.empty(0, 0, device=self.device)  # (B, S) log π_θ(token) at generated columns
        self.ref_logprobs = torch.empty(0, 0, device=self.device)  # (B, S) log π_ref(token), see sync_reference
        self.prompt_lengths = torch.empty(0, dtype=torch.long, device=self.device)
        self.num_generated = torch.empty(0, dtype=torch.long, device=self.device)
        self.finished = torch.empty(0, dtype=torch.bool, device=self.device)
        self.policy_logits: torch.Tensor | None = None  # (B, V) next-token logits of π_θ at the current state
        self.policy_hidden: torch.Tensor | None = None  # (B, H) π_θ's last-layer hidden state (value heads)
        self._policy_cache: StaticCache | None = None
        self._ref_cache: StaticCache | None = None
        self._ref_fed = 0  # columns [0, _ref_fed) are in the reference cache
        self._ref_next: torch.Tensor | None = None  # (B, V) reference logits predicting column _ref_fed
        self._ref_scored = torch.empty(0, dtype=torch.long, device=self.device)  # per row: columns < it scored
        self._first_new_column = 0  # columns before this were laid out by the last prefill
        self._policy_fed = 0  # columns [0, _policy_fed) are in the policy cache
        self._capacity = 0  # columns the caches hold
        self.num_prefills = 0  # full prefills so far (diagnostics: in-place restarts do not add to it)

    # ------------------------------------------------------------------ state changes
    def start(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Begin B new episodes from tokenised prompts (one prefill forward of the policy)."""
        self.batch_size = len(prompt_ids)
        sequences = [list(p) for p in prompt_ids]
        self.prompt_lengths = torch.tensor([len(p) for p in prompt_ids], device=self.device)
        self.num_generated = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        self.finished = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        self._prefill(sequences, [[0.0] * len(s) for s in sequences], [[0.0] * len(s) for s in sequences],
                      [0] * len(sequences))

    def restart_rows(self, rows: torch.Tensor, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Start new episodes in ``rows`` (bool ``(B,)``) while the other rows continue (Gymnasium autoreset).

        In place: each new prompt takes its row's last columns, the row's old tokens are masked out, and one
        prefill of just the restarting rows writes their KV entries into the caches; the continuing rows
        are not touched. (When a prompt is wider than the layout, every row is laid out again instead.)
        """
        rows = rows.to(self.device)
        if int(rows.sum()) != len(prompt_ids):
            raise ValueError(f"restart_rows got {len(prompt_ids)} prompts for {int(rows.sum())} rows")
        index = torch.nonzero(rows).squeeze(1)
        self.sync_reference(next_logits=False, rows=index)  # score the finished episodes' tokens before they go
        width, longest = self.input_ids.shape[1], max(len(p) for p in prompt_ids)
        self.prompt_lengths[rows] = torch.tensor([len(p) for p in prompt_ids], device=self.device)
        self.num_generated[rows] = 0
        self.finished[rows] = False
        if longest > width or self._policy_fed < width or not self._row_edits_ok():  # lay every row out anew
            self._relayout(dict(zip(index.tolist(), prompt_ids)))
            return
        ids = torch.full((len(prompt_ids), longest), self.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for i, prompt in enumerate(prompt_ids):
            ids[i, longest - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long, device=self.device)
            mask[i, longest - len(prompt) :] = 1
        for buffer in (self.input_ids, self.attention_mask, self.generated, self.logprobs, self.ref_logprobs):
            buffer[index] = 0
        self.input_ids[index] = self.pad_token_id
        self.input_ids[index, width - longest :] = ids
        self._ref_scored[index] = width  # nothing generated in these rows yet
        self.attention_mask[index, width - longest :] = mask
        logits, hidden = prefill_rows(self.policy, self._policy_cache, index, ids, mask, width, keep_hidden=True)
        self.policy_logits[index], self.policy_hidden[index] = logits, hidden
        if self.reference is not None and self._ref_fed > width - longest:  # prompt columns already passed
            ref_logits, _ = prefill_rows(self.reference, self._ref_cache, index, ids, mask, width, keep_hidden=False)
            if self._ref_fed == width and self._ref_next is not None:
                self._ref_next[index] = ref_logits

    def refresh(self) -> None:
        """Recompute the caches and next-token logits from every row's tokens with the current weights (one
        prefill), e.g. after an update in the middle of episodes. Tokens and recorded log-probs stay."""
        if self.batch_size:
            self._relayout()

    def advance(self, actions: torch.Tensor) -> StepOutput:
        """Append ``actions`` (long ``(B,)``) to the unfinished rows; finished rows ignore theirs.

        Computes log π (and, with an eager reference, log π_ref) of the actions from the stored logits,
        then runs one cached forward of the policy (and of an eager reference), skipped once every row has
        finished, so the next logits are ready.
        """
        if self.input_ids.shape[1] >= self._capacity:  # the caches are full (long autoreset runs): compact
            self._relayout()
        active = ~self.finished
        # Every row, then 0 for finished ones: cheaper than copying out the active rows' (B, V) logits.
        chosen = torch.where(active, actions, 0)
        logprob = torch.where(active, chosen_logprobs(self.policy_logits, chosen, self.fast), 0.0)

        tokens = torch.where(active, actions, torch.full_like(actions, self.pad_token_id))
        self.input_ids = torch.cat([self.input_ids, tokens[:, None]], dim=1)
        self.attention_mask = torch.cat([self.attention_mask, active.long()[:, None]], dim=1)
        self.generated = torch.cat([self.generated, active[:, None]], dim=1)
        self.logprobs = torch.cat([self.logprobs, logprob[:, None]], dim=1)
        self.ref_logprobs = torch.cat([self.ref_logprobs, torch.zeros_like(logprob)[:, None]], dim=1)
        self.num_generated += active.long()
        if len(self.eos_token_ids) == 1:
            terminated = active & (actions == self.eos_token_ids[0])
        else:
            terminated = active & torch.isin(actions, self.eos_token_ids)
        truncated = active & ~terminated & (self.num_generated >= self.max_new_tokens)
        self.finished = self.finished | terminated | truncated

        if not bool(self.finished.all()):
            positions = (self.attention_mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)
            column = torch.tensor([self.attention_mask.shape[1] - 1], device=self.device)
            logits, self.policy_hidden = cached_forward(
                self.policy, tokens[:, None], self.attention_mask, positions, self._policy_cache, column, 1,
                keep_hidden=True,
            )
            self.policy_logits = logits[:, -1]
            self._policy_fed = self.input_ids.shape[1]
        ref_logprob = None
        if self.reference is not None and not self.lazy_reference:
            self.sync_reference()
            ref_logprob = self.ref_logprobs[:, -1] * active
        return StepOutput(logprob, ref_logprob, active, terminated, truncated)

    # ------------------------------------------------------------------ checkpoints
    _STATE_KEYS = ("input_ids", "attention_mask", "generated", "logprobs", "ref_logprobs", "prompt_lengths",
                   "num_generated", "finished")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The rows' episodes in progress (tokens, per-column log-probs, counters) as CPU tensors; the KV
        caches are not saved: :meth:`load_state_dict` recomputes them with one prefill."""
        self.sync_reference(next_logits=False)  # score pending tokens now: a new cache cannot score them later
        return {key: getattr(self, key).detach().cpu().clone() for key in self._STATE_KEYS}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the episodes of :meth:`state_dict` (same weights give the same logits as a refresh)."""
        missing = sorted(set(self._STATE_KEYS) - set(state))
        if missing:
            raise InputError(f"the saved episode state is missing {missing} (a damaged checkpoint?); pass what "
                             "GenerationEngine.state_dict() returned")
        for key in self._STATE_KEYS:
            setattr(self, key, state[key].to(self.device))
        self.batch_size = int(self.input_ids.shape[0])
        self._ref_scored = torch.full((self.batch_size,), self.input_ids.shape[1], device=self.device)
        self.refresh()  # every recorded column is scored already

    # ------------------------------------------------------------------ the reference
    def sync_reference(self, next_logits: bool = True, rows: torch.Tensor | None = None) -> None:
        """Fill :attr:`ref_logprobs` for the generated tokens that have none yet.

        With ``next_logits`` (the eager reference every step, and :attr:`ref_logits`), the shared reference
        cache is fed the columns it has not seen, in one cached forward over all rows, and, while some row is
        unfinished, the last column too, so that ``ref_logits`` holds π_ref's next-token logits.

        Without (a lazy reference scoring finished episodes; ``rows``: long indices of the rows to score, default
        all), no cache is involved: ONE forward over just those rows' episodes (with ``fast``, packed without
        padding and the LM head on their unscored generated tokens only; see
        :func:`textenv.engine.scoring.predicting_logits`).
        """
        if self.reference is None:
            return
        width = self.input_ids.shape[1]
        if next_logits:
            self._feed_reference(width if not bool(self.finished.all()) else width - 1)
            self._ref_scored.fill_(width)
            return
        index = slice(None) if rows is None else rows
        unscored = self.generated[index] & (torch.arange(width, device=self.device) >= self._ref_scored[index, None])
        if bool(unscored.any()):
            with torch.no_grad():
                logits, _ = predicting_logits(
                    self.reference, self.input_ids[index], self.attention_mask[index], unscored, self.fast
                )
            targets = self.input_ids[index][unscored]
            scored = self.ref_logprobs[index]
            scored[unscored] = chosen_logprobs(logits, targets, self.fast)
            self.ref_logprobs[index] = scored
        self._ref_scored[index] = width

    def _feed_reference(self, end: int) -> None:
        """Run columns ``[_ref_fed, end)`` of every row through the reference's shared cache and score the
        generated tokens they predict."""
        start, width = self._ref_fed, self.input_ids.shape[1]
        if start < width and start >= self._first_new_column and self._ref_next is not None:
            self.ref_logprobs[:, start] = (
                chosen_logprobs(self._ref_next, self.input_ids[:, start], self.fast) * self.generated[:, start]
            )
        if end <= start:
            return
        first_needed = max(start, self._first_new_column - 1)  # logits before it would predict prompt tokens
        mask = self.attention_mask[:, :end]
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, start:end]
        logits = cached_forward(
            self.reference, self.input_ids[:, start:end], mask, positions, self._ref_cache,
            torch.arange(start, end, device=self.device), max(end - first_needed, 1), keep_hidden=False,
        )[0]  # (B, end - first_needed, V): logits[:, j] predicts column first_needed + 1 + j
        targets = self.input_ids[:, first_needed + 1 : end + 1]
        scored = targets.shape[1]
        if scored:
            columns = slice(first_needed + 1, first_needed + 1 + scored)
            logprobs = chosen_logprobs(logits[:, :scored], targets, self.fast)
            self.ref_logprobs[:, columns] = logprobs * self.generated[:, columns]  # 0 at prompt and padding
        self._ref_fed, self._ref_next = end, logits[:, -1]

    @property
    def ref_logits(self) -> torch.Tensor | None:
        """π_ref's next-token logits at the current state, ``(B, V)`` float32 (``None`` without a
        reference); a lazy reference catches up first."""
        if self.reference is None or self.batch_size == 0:
            return None
        self.sync_reference()
        return self._ref_next

    # ------------------------------------------------------------------ reading the state
    def generated_ids(self, row: int) -> list[int]:
        """Tokens generated in ``row`` so far (EOS included if it was sampled)."""
        n = int(self.num_generated[row])
        live = self.input_ids[row][self.attention_mask[row].bool()]
        return live[live.shape[0] - n :].tolist() if n else []

    def completions(self, rows: Sequence[int]) -> list[str]:
        """Decoded completions (special tokens such as EOS removed) of ``rows``."""
        return self.tokenizer.batch_decode([self.generated_ids(r) for r in rows], skip_special_tokens=True)

    def window(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The live tokens of every row, right-aligned in ``(B, width)``; left padding has mask 0."""
        order = torch.argsort(self.attention_mask, dim=1, stable=True)  # padding first, live tokens in order
        ids = self.input_ids.gather(1, order)
        mask = self.attention_mask.gather(1, order)
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, self.pad_token_id))
        missing = width - ids.shape[1]
        if missing > 0:
            ids = torch.nn.functional.pad(ids, (missing, 0), value=self.pad_token_id)
            mask = torch.nn.functional.pad(mask, (missing, 0), value=0)
        return ids[:, -width:], mask[:, -width:]

    # ------------------------------------------------------------------ internals
    def _relayout(self, new_prompts: dict[int, Sequence[int]] | None = None) -> None:
        """One prefill of every row's live tokens (a row in ``new_prompts`` gets that fresh prompt instead),
        dropping columns that only hold padding, with ``max_new_tokens`` spare columns for autoresets.
        Recorded log-probs carry over."""
        self.sync_reference(next_logits=False)
        new_prompts = new_prompts or {}
        sequences, logprobs, ref_logprobs, num_generated = [], [], [], []
        for row in range(self.batch_size):
            if row in new_prompts:
                prompt = list(new_prompts[row])
                sequences.append(prompt)
                logprobs.append([0.0] * len(prompt))
                ref_logprobs.append([0.0] * len(prompt))
                num_generated.append(0)
            else:
                live = self.attention_mask[row].bool()
                sequences.append(self.input_ids[row][live].tolist())
                logprobs.append(self.logprobs[row][live].tolist())
                ref_logprobs.append(self.ref_logprobs[row][live].tolist())
                num_generated.append(int(self.num_generated[row]))
        self._prefill(sequences, logprobs, ref_logprobs, num_generated, spare_columns=self.max_new_tokens)

    def _row_edits_ok(self) -> bool:
        """Whether the caches are plain full-length static layers, whose rows :func:`prefill_rows` may write
        (sliding-window or other layer kinds take the full-batch path)."""
        return plain_static_layers(self._policy_cache, self._ref_cache)

    def _prefill(
        self,
        sequences: list[list[int]],
        logprobs: list[list[float]],
        ref_logprobs: list[list[float]],
        num_generated: list[int],
        spare_columns: int = 0,
    ) -> None:
        """Lay the rows out right-aligned (the last ``num_generated[row]`` tokens of a row are generated
        ones) and prefill the policy cache; an eager reference is prefilled too, a lazy one on demand. The
        caches hold ``max_new_tokens + spare_columns`` more columns."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        generated = torch.zeros((len(sequences), width), dtype=torch.bool)
        logprob = torch.zeros((len(sequences), width))
        ref_logprob = torch.zeros((len(sequences), width))
        for row, seq in enumerate(sequences):
            if seq:
                ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
                logprob[row, width - len(seq) :] = torch.tensor(logprobs[row])
                ref_logprob[row, width - len(seq) :] = torch.tensor(ref_logprobs[row])
            if num_generated[row]:
                generated[row, width - num_generated[row] :] = True
        self.input_ids, self.attention_mask = ids.to(self.device), mask.to(self.device)
        self.generated, self.logprobs = generated.to(self.device), logprob.to(self.device)
        self.ref_logprobs = ref_logprob.to(self.device)
        # Preallocated caches: each step writes one column in place, so a step's cost does not grow with
        # the length generated so far (a growing cache would copy itself every step).
        self.num_prefills += 1
        self._capacity = width + self.max_new_tokens + spare_columns
        self._policy_cache = StaticCache(config=self.policy.config, max_cache_len=self._capacity)
        self.policy_logits, self.policy_hidden = prefill_cache(
            self.policy, self._policy_cache, self.input_ids, self.attention_mask, self.fast
        )
        self._policy_fed = width
        self._first_new_column, self._ref_fed, self._ref_next, self._ref_cache = width, 0, None, None
        self._ref_scored = torch.full((len(sequences),), width, device=self.device)  # carried-over columns
        if self.reference is not None:
            self._ref_cache = StaticCache(config=self.reference.config, max_cache_len=self._capacity)
            if not self.lazy_reference:
                self.sync_reference()


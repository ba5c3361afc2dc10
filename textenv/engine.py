"""Batched token-by-token generation with KV caches for the policy and the frozen reference.

The engine is the state machine under TextGen-v0. It holds B rows; each row is a prompt plus the tokens
generated so far (the RL state s_t = (x, y_<t)). After every change of state it has already computed the
next-token logits of both models for every row, with **one cached forward per model for the whole
batch** (the prefix is never recomputed). Agents sample from :attr:`policy_logits` instead of running
the policy again.

Layout: ``input_ids`` / ``attention_mask`` are ``(B, S)`` with every row ending at column S. A row is
``[left padding][prompt][generated tokens][padding appended after it finished]``; padding has mask 0.
Position ids count only unmasked tokens, so left padding does not shift positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StaticCache


@dataclass
class StepOutput:
    """What one :meth:`GenerationEngine.advance` did; tensors of shape ``(B,)``.

    ``logprob`` / ``ref_logprob`` are log π(a_t|s_t) and log π_ref(a_t|s_t) in nats (0 for rows that were
    already finished, and ``ref_logprob`` is ``None`` without a reference). ``active`` marks the rows that
    took an action; ``terminated`` (EOS) and ``truncated`` (length limit) mark rows that finished now.
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
    """

    def __init__(
        self,
        policy: PreTrainedModel,
        reference: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
    ) -> None:
        self.policy = policy
        self.reference = reference
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.device = next(policy.parameters()).device
        self.batch_size = 0
        self.input_ids = torch.empty(0, 0, dtype=torch.long, device=self.device)
        self.attention_mask = torch.empty(0, 0, dtype=torch.long, device=self.device)
        self.prompt_lengths = torch.empty(0, dtype=torch.long, device=self.device)
        self.num_generated = torch.empty(0, dtype=torch.long, device=self.device)
        self.finished = torch.empty(0, dtype=torch.bool, device=self.device)
        self.policy_logits: torch.Tensor | None = None  # (B, V) next-token logits of π_θ at the current state
        self.ref_logits: torch.Tensor | None = None  # (B, V) next-token logits of π_ref
        self._policy_cache: StaticCache | None = None
        self._ref_cache: StaticCache | None = None

    # ------------------------------------------------------------------ state changes
    def start(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Begin B new episodes from tokenised prompts (one prefill forward per model)."""
        self.batch_size = len(prompt_ids)
        self._prefill([list(p) for p in prompt_ids])
        self.prompt_lengths = torch.tensor([len(p) for p in prompt_ids], device=self.device)
        self.num_generated = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        self.finished = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)

    def restart_rows(self, rows: torch.Tensor, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Start new episodes in ``rows`` (bool ``(B,)``) while the other rows continue.

        The continuing rows keep their tokens; the caches are rebuilt with one prefill of the live tokens
        (which also drops columns that only held padding).
        """
        rows = rows.to(self.device)
        if int(rows.sum()) != len(prompt_ids):
            raise ValueError(f"restart_rows got {len(prompt_ids)} prompts for {int(rows.sum())} rows")
        new_prompts = iter(prompt_ids)
        sequences = []
        for row in range(self.batch_size):
            if rows[row]:
                sequences.append(list(next(new_prompts)))
            else:
                sequences.append(self.input_ids[row][self.attention_mask[row].bool()].tolist())
        self._prefill(sequences)
        lengths = torch.tensor([len(p) for p in prompt_ids], device=self.device)
        self.prompt_lengths[rows] = lengths
        self.num_generated[rows] = 0
        self.finished[rows] = False

    def advance(self, actions: torch.Tensor, run_forward: bool = True) -> StepOutput:
        """Append ``actions`` (long ``(B,)``) to the unfinished rows; finished rows ignore theirs.

        Computes log π and log π_ref of the actions from the stored logits, then runs one cached forward
        per model (skipped once every row has finished) so the next logits are ready. Pass
        ``run_forward=False`` when :meth:`restart_rows` follows at once: its prefill computes them.
        """
        active = ~self.finished
        logprob = torch.zeros(self.batch_size, device=self.device)
        logprob[active] = _token_logprobs(self.policy_logits[active], actions[active])
        ref_logprob = None
        if self.ref_logits is not None:
            ref_logprob = torch.zeros(self.batch_size, device=self.device)
            ref_logprob[active] = _token_logprobs(self.ref_logits[active], actions[active])

        tokens = torch.where(active, actions, torch.full_like(actions, self.pad_token_id))
        self.input_ids = torch.cat([self.input_ids, tokens[:, None]], dim=1)
        self.attention_mask = torch.cat([self.attention_mask, active.long()[:, None]], dim=1)
        self.num_generated += active.long()
        terminated = active & (actions == self.eos_token_id)
        truncated = active & ~terminated & (self.num_generated >= self.max_new_tokens)
        self.finished = self.finished | terminated | truncated

        if run_forward and not bool(self.finished.all()):
            positions = (self.attention_mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)
            column = torch.tensor([self.attention_mask.shape[1] - 1], device=self.device)
            self.policy_logits = _forward(
                self.policy, tokens[:, None], self.attention_mask, positions, self._policy_cache, column
            )
            if self.reference is not None:
                self.ref_logits = _forward(
                    self.reference, tokens[:, None], self.attention_mask, positions, self._ref_cache, column
                )
        return StepOutput(logprob, ref_logprob, active, terminated, truncated)

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
    def _prefill(self, sequences: list[list[int]]) -> None:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            if seq:
                ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
        self.input_ids, self.attention_mask = ids.to(self.device), mask.to(self.device)
        positions = (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        columns = torch.arange(width, device=self.device)
        # Preallocated caches: each step writes one column in place, so a step's cost does not grow with
        # the length generated so far (a growing cache would copy itself every step).
        capacity = width + self.max_new_tokens
        self._policy_cache = StaticCache(config=self.policy.config, max_cache_len=capacity)
        self.policy_logits = _forward(self.policy, self.input_ids, self.attention_mask, positions,
                                      self._policy_cache, columns)
        self.ref_logits, self._ref_cache = None, None
        if self.reference is not None:
            self._ref_cache = StaticCache(config=self.reference.config, max_cache_len=capacity)
            self.ref_logits = _forward(self.reference, self.input_ids, self.attention_mask, positions,
                                       self._ref_cache, columns)


@torch.no_grad()
def _forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: StaticCache,
    cache_position: torch.Tensor,
) -> torch.Tensor:
    """One cached forward writing ``cache`` at columns ``cache_position``; float32 last logits ``(B, V)``."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        cache_position=cache_position,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1].float()


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per row: ``(N, V), (N,) -> (N,)``."""
    return logits.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)

"""Collect one batch of synchronised episodes from a TextGen vector env.

Every on-policy agent does the same two things: (1) play B episodes to the end, sampling each action
from the logits the env already computed (no second policy forward), and (2) in the update, run **one
forward per episode** over prompt + completion to get log π_θ(y_t|s_t) with gradients (:mod:`textenv.scoring`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from textenv.validation import InputError, check_number
from textenv.vector_env import TextGenVectorEnv, unwrap_vector_env


@dataclass
class Rollout:
    """B finished episodes. T = longest completion in the batch; P = prompt width (left-padded).

    input_ids, attention_mask: ``(B, P + T)`` prompt + completion, as the env laid them out
    (:meth:`TextGenVectorEnv.episode_tokens`).
    action_mask: ``(B, T)`` float, 1 where step t was taken (the action ``input_ids[:, P + t]``).
    logprobs: ``(B, T)`` log π_θ(a_t|s_t) at sampling time (nats, no grad).
    kl: ``(B, T)`` per-token KL estimate paid by the env; rewards: ``(B, T)`` env rewards per step.
    rm_score, episode_kl, returns: ``(B,)``: reward-model score, Σ_t KL_t, Σ_t rewards.
    hidden_states: ``(B, T, H)`` the policy's last-layer hidden state at each state s_t, from the env's cached
    forward (what a value head on the trunk reads: PPO's V_old needs no extra forward); 0 where not taken.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    action_mask: torch.Tensor
    logprobs: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    rm_score: np.ndarray
    episode_kl: np.ndarray
    returns: np.ndarray
    kl_coef: float
    prompts: list[str]
    texts: list[str]
    seconds: float
    hidden_states: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        """Actions taken in this rollout (env steps summed over rows)."""
        return int(self.action_mask.sum())

    def metrics(self) -> dict[str, float]:
        """The ``rollout/*`` scalars every agent logs under the same names (so TensorBoard curves overlay),
        plus ``num_tokens``: mean return, RM score and episode KL (nats), the β paid, mean length (tokens)."""
        return {
            "num_tokens": self.num_tokens,
            "rollout/reward": float(self.returns.mean()),
            "rollout/rm_score": float(self.rm_score.mean()),
            "rollout/kl": float(self.episode_kl.mean()),
            "rollout/kl_coef": float(self.kl_coef),
            "rollout/length": float(self.action_mask.sum(dim=1).mean()),
        }

    @property
    def actions(self) -> torch.Tensor:
        """``(B, T)`` sampled token ids (padding where ``action_mask`` is 0)."""
        return self.input_ids[:, self.prompt_width :]


#: Tokens per block of :func:`sample_actions`' two-level inverse CDF.
SAMPLING_BLOCK = 64


def sample_actions(logits: torch.Tensor, generator: torch.Generator | None, temperature: float = 1.0) -> torch.Tensor:
    """Sample one token per row from ``(B, V)`` logits; ``temperature=0`` is greedy.

    Inverse-CDF sampling with one uniform per row, in two levels: the vocabulary is cut into blocks of
    :data:`SAMPLING_BLOCK` tokens; u ~ U(0, total mass) picks the first block whose cumulative mass exceeds it,
    and the same fraction of that block's mass picks the token inside it (the first whose running sum exceeds it,
    in float64). So P(token) = P(block) · p_token / Σ_block p: exact up to the float32 rounding of each block's
    total (~1e-7 relative, the same order as the float32 softmax itself), and a token of probability 0 is never
    drawn. About 10× faster on CPU than ``torch.multinomial``, and several times faster than a float64
    cumulative sum over the whole vocabulary, whose (B, V) float64 temporaries cost an eighth of a decoding step.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits if temperature == 1 else logits / temperature, dim=-1)
    rows, vocab = probs.shape
    if vocab % SAMPLING_BLOCK:
        probs = torch.nn.functional.pad(probs, (0, -vocab % SAMPLING_BLOCK))  # probability 0 past the vocabulary
    blocks = probs.view(rows, -1, SAMPLING_BLOCK)
    mass = blocks.sum(dim=-1).double()  # (B, blocks)
    cumulative = mass.cumsum(dim=-1)
    u = torch.rand(rows, 1, generator=generator, dtype=torch.float64, device=logits.device) * cumulative[:, -1:]
    block = torch.searchsorted(cumulative, u, right=True).clamp(max=mass.shape[1] - 1)  # (B, 1); its mass is > 0
    before = torch.where(block > 0, cumulative.gather(1, (block - 1).clamp(min=0)), 0.0)  # mass of earlier blocks
    inside = blocks.gather(1, block[..., None].expand(rows, 1, SAMPLING_BLOCK)).squeeze(1)  # (B, SAMPLING_BLOCK)
    running = inside.double().cumsum(dim=-1)
    fraction = (u - before) / mass.gather(1, block)  # in [0, 1): how far into the block u falls
    offset = torch.searchsorted(running, fraction * running[:, -1:], right=True)
    # Should rounding put the fraction at 1, take the block's last token of nonzero probability.
    positions = torch.arange(SAMPLING_BLOCK, device=logits.device).expand(rows, -1)
    last_nonzero = torch.where(inside > 0, positions, -1).amax(dim=-1, keepdim=True)
    return (block * SAMPLING_BLOCK + torch.minimum(offset, last_nonzero)).squeeze(1)


@torch.no_grad()
def collect_rollout(
    env: TextGenVectorEnv,
    generator: torch.Generator | None = None,
    prompts: Sequence[str] | None = None,
    temperature: float = 1.0,
    update_kl_controller: bool = False,
) -> Rollout:
    """Reset ``env`` (a :class:`TextGenVectorEnv` with ``autoreset_mode="disabled"``, or a Gymnasium wrapper around
    one) and play every row to EOS or the length limit, sampling at ``temperature`` (>= 0, finite; 0 is greedy)
    from the env's cached next-token logits with ``generator``. ``prompts``: one per row (default: the env draws).

    ``update_kl_controller``: ``True`` (what the training agents pass for their experience) lets the finished
    episodes enter the adaptive KL controller's window and change β, as any episode stepped through the env
    does. The default ``False`` is for rollouts used only for evaluation or as a baseline (e.g. ReMax's greedy
    completion): β and its window stay as they were (:meth:`TextGenVectorEnv.pause_kl_controller`), and the
    rewards still pay the current β.

    Uses only the env's public API (``reset``/``step``, ``finished``, ``next_token_logits``,
    ``next_token_hidden``, ``episode_tokens``, ``token_kl``, ``kl_coef``)."""
    env = unwrap_vector_env(env)
    if env.autoreset_mode != "disabled":
        raise InputError("collect_rollout needs a TextGenVectorEnv built with autoreset_mode='disabled'")
    check_number("temperature", temperature, low=0)
    if not isinstance(update_kl_controller, bool):
        raise InputError(f"update_kl_controller must be True or False, got {update_kl_controller!r}")
    with nullcontext() if update_kl_controller else env.pause_kl_controller():
        return _play_episodes(env, generator, prompts, temperature)


def _play_episodes(
    env: TextGenVectorEnv, generator: torch.Generator | None, prompts: Sequence[str] | None, temperature: float
) -> Rollout:
    """:func:`collect_rollout` after its checks: one batch reset, then steps until every row has finished."""
    start = time.perf_counter()
    _, reset_info = env.reset(options=None if prompts is None else {"prompts": list(prompts)})
    B = env.num_envs
    logprobs, rewards, masks, hidden = [], [], [], []
    rm_score, episode_kl, texts = np.zeros(B), np.zeros(B), [""] * B
    kl_coef = env.kl_coef
    while not env.finished.all():
        active = torch.from_numpy(~env.finished).float()
        actions = sample_actions(env.next_token_logits(), generator, temperature)
        hidden.append(env.next_token_hidden().float() * active.to(env.device)[:, None])
        _, reward, _, _, info = env.step(actions)
        masks.append(active)
        logprobs.append(torch.from_numpy(info["logprob"]))
        rewards.append(torch.from_numpy(reward))
        if "rm_score" in info:
            done = info["_rm_score"]
            rm_score[done] = info["rm_score"][done]
            episode_kl[done] = info["episode_kl"][done]
            for row in np.flatnonzero(done):
                texts[row] = info["text"][row]
    input_ids, attention_mask = env.episode_tokens()
    prompt_width = input_ids.shape[1] - len(masks)  # one column per step after the prompts' common width
    rewards_t = torch.stack(rewards, dim=1).float()
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        prompt_width=prompt_width,
        action_mask=torch.stack(masks, dim=1).to(env.device),
        logprobs=torch.stack(logprobs, dim=1).to(env.device),
        kl=env.token_kl()[:, prompt_width:].clone(),
        rewards=rewards_t.to(env.device),
        rm_score=rm_score,
        episode_kl=episode_kl,
        returns=rewards_t.sum(dim=1).numpy().astype(np.float64),
        kl_coef=kl_coef,
        prompts=list(reset_info["prompt"]),
        texts=texts,
        seconds=time.perf_counter() - start,
        hidden_states=torch.stack(hidden, dim=1),
    )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1)

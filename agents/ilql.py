"""Implicit Language Q-Learning (ILQL): offline RL from a fixed set of scored completions.

Snell, Kostrikov, Su, Yang and Levine 2022, "Offline RL for Natural Language Generation with Implicit Language
Q Learning" (arXiv:2206.11871), as trlX implements it beside PPO; docs/ilql.md. Each completion token is an action:
the state s_t is the prompt plus the completion so far, a_t the next token, and the reward r_t is 0 except on the
last token, which gets the completion's (normalised) reward R. On the LM's last hidden state h(s) sit

* two Q heads Q_1, Q_2 : h(s) ↦ ℝ^V (a value per next token), their target copies Q̂_1, Q̂_2, and
* a V head V : h(s) ↦ ℝ,

each a two-layer MLP (hidden → 2·hidden → out). The losses, means over the completion tokens of a minibatch:

* Q, towards the SARSA target through V (Snell et al. 2022, the Q loss; Kostrikov et al. 2021, IQL):
      L_Q = Σ_i E[(Q_i(s_t, a_t) − [r_t + γ · V(s_{t+1})])²],   V(s_{T+1}) = 0 at the end, the target not differentiated;
* V, expectile regression on the target Q (the value loss, L_2^τ of IQL):
      L_V = E[|τ − 1(Q̂ − V < 0)| · (Q̂ − V)²],   Q̂ = min_i Q̂_i(s_t, a_t),   τ ∈ (0, 1)
  (τ = 0.5 is the mean squared error; τ → 1 makes V the largest Q̂ the data supports, which is the "implicit" max);
* CQL, the conservative regulariser that pushes down Q of the tokens not taken (the paper's L_CQL):
      L_CQL = Σ_i E[log Σ_a exp Q_i(s_t, a) − Q_i(s_t, a_t)]   (a cross-entropy with Q_i as logits);
* the LM term, AWAC-weighted negative log-likelihood of the data (trlX's; weight 1 when ``awac_beta = 0``):
      L_LM = E[exp(β_awac · (Q̂ − V)) · (−log π_β(a_t | s_t))],

      L = L_Q + L_V + cql_scale · L_CQL + awac_scale · L_LM,

trained jointly into the LM's trunk and the heads (one Adam step per minibatch). Every ``target_update_every``
steps the target heads move by Polyak averaging: θ̂ ← α · θ + (1 − α) · θ̂ (``target_update_rate`` α).

Q-weighted decoding (the policy extraction of the paper: π(a|s) ∝ π_β(a|s) · exp(β · (Q̂(s, a) − V(s)))): the
policy the env samples with has the logits

      z_β(s) + β · (Q̂(s, ·) − V(s)),

where z_β are the LM's logits (log π_β up to a per-state constant, which the softmax ignores), optionally restricted
to the ``top_k`` best tokens. :class:`ILQLPolicy` is that policy as a causal-LM-like torch module around the LM: the
agent installs it with ``env.set_policy``, so rollouts, ``textenv train``'s held-out evaluation and ``textenv eval
CHECKPOINT`` (:meth:`ILQL.sampling_policy`) all sample with it. β = 0 gives the LM's logits exactly.

Data (``data=``): a JSONL file of ``{"prompt": str, "completion": str, "reward": number}`` lines (optional
``"meta"``), or the ranked lines ``textenv collect`` writes (``{"prompt", "ranked": [...], "meta": {"scores":
[...]}}``: each completion with its gold score), or a list of such rows. Rewards are standardised over the dataset
(mean 0, standard deviation 1, as trlX does) unless ``normalize_rewards=False``.

Checkpoints: the LM in ``policy/`` (``from_pretrained``-ready: the behaviour policy π_β), the heads in
``modules.safetensors`` (``ilql_heads.*``); nothing pickled.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textenv.agents.base import Agent, read_checkpoint_meta
from textenv.agents.gradient_step import gradient_step, share
from textenv.agents.sft import MinibatchSampler, OfflineConfig, TokenBatch, collate, context_length, encode_pairs
from textenv.checkpoint import read_tensors
from textenv.config import Flag, Integer, Number, option
from textenv.fast import model_fast
from textenv.logprobs import chosen_logprobs, entropy
from textenv.prompts import read_text_lines
from textenv.validation import InputError
from textenv.vector_env import unwrap_vector_env

#: The row forms of an ILQL data file, said in every schema error.
SCORED_FORMAT = ('each line is {"prompt": str, "completion": str, "reward": number} or a ranked line of textenv '
                 'collect, {"prompt": str, "ranked": [...], "meta": {"scores": [number per completion]}}')
#: The name of the heads module in the checkpoint (``modules.safetensors`` keys ``ilql_heads.*``).
HEADS = "ilql_heads"


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ScoredCompletion:
    """One completion of ``prompt`` and its reward (any finite number, e.g. a gold score)."""

    prompt: str
    completion: str
    reward: float


def load_scored_completions(source: Any) -> list[ScoredCompletion]:
    """Every (prompt, completion, reward) of ``source``: a JSONL path or a list of rows (module docstring). A bad row
    raises :class:`InputError` naming ``FILE:LINE`` (or ``data[i]``) and the expected format."""
    if source is None:
        raise InputError("data=None: pass a JSONL file of {\"prompt\", \"completion\", \"reward\"} lines (or the "
                         "ranked lines `textenv collect` writes) or a list of such rows")
    if isinstance(source, (str, os.PathLike)):
        rows = [(where, obj) for where, obj in _jsonl_rows(Path(source))]
        what = f"data file {source}"
    elif isinstance(source, Sequence) and not isinstance(source, (bytes, dict)):
        rows = [(f"data[{i}]", obj) for i, obj in enumerate(source)]
        what = "data"
    else:
        raise InputError(f"data must be a JSONL path or a list of rows, got {type(source).__name__}")
    scored = [item for where, obj in rows for item in _scored_rows(obj, where)]
    if not scored:
        raise InputError(f"{what} holds no rows (it is empty or blank); {SCORED_FORMAT}")
    return scored


def _jsonl_rows(path: Path) -> list[tuple[str, Any]]:
    """``("FILE:LINE", decoded JSON)`` of every non-blank line of ``path``."""
    if path.is_dir() or not path.is_file():
        raise InputError(f"data={str(path)!r} is not an existing JSONL file; {SCORED_FORMAT}")
    rows = []
    for number, line in read_text_lines(path):
        if line.strip():
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); "
                                 f"{SCORED_FORMAT}") from None
    return rows


def _scored_rows(obj: Any, where: str) -> list[ScoredCompletion]:
    """One row as scored completions: a scored line gives one, a ranked line with ``meta.scores`` one per completion."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}; {SCORED_FORMAT}")
    keys = {"prompt", "ranked", "meta"} if "ranked" in obj else {"prompt", "completion", "reward", "meta"}
    unknown, missing = sorted(set(obj) - keys), sorted(keys - {"meta"} - set(obj))
    if unknown or missing:
        problem = "; ".join(f"{kind} {names}" for kind, names in (("unknown keys", unknown), ("missing", missing))
                            if names)
        raise InputError(f"{where}: {problem}; {SCORED_FORMAT}")
    prompt = _text(obj, "prompt", where, empty_ok=True)
    if "ranked" not in obj:
        return [ScoredCompletion(prompt, _text(obj, "completion", where), _reward(obj["reward"], f"{where}: reward"))]
    ranked, meta = obj["ranked"], obj.get("meta")
    scores = meta.get("scores") if isinstance(meta, dict) else None
    if not (isinstance(ranked, list) and isinstance(scores, list) and len(scores) == len(ranked)):
        raise InputError(f'{where}: a ranked line needs "ranked": [completions] and "meta": {{"scores": [...]}} '
                         f"with one score per completion (textenv collect writes them); {SCORED_FORMAT}")
    return [ScoredCompletion(prompt, _text({"ranked": text}, "ranked", where), _reward(score, f"{where}: scores[{i}]"))
            for i, (text, score) in enumerate(zip(ranked, scores))]


def _text(obj: dict[str, Any], key: str, where: str, empty_ok: bool = False) -> str:
    value = obj[key]
    if not isinstance(value, str) or not (empty_ok or value.strip()):
        raise InputError(f'{where}: "{key}" must be a {"" if empty_ok else "non-empty "}string, got {value!r}')
    return value


def _reward(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}={value!r} must be a finite number (the completion's reward)")
    return float(value)


def normalised_rewards(rewards: Sequence[float]) -> list[float]:
    """``rewards`` standardised to mean 0 and standard deviation 1 (population); only centred when they are all equal."""
    values = np.asarray(rewards, dtype=np.float64)
    spread = values.std()
    centred = values - values.mean()
    return (centred / spread if spread > 0 else centred).tolist()


# ---------------------------------------------------------------------------------------------- heads
def mlp_head(hidden_size: int, out_size: int) -> nn.Sequential:
    """hidden → 2·hidden → ``out_size``, ReLU between (trlX's head shape)."""
    return nn.Sequential(nn.Linear(hidden_size, 2 * hidden_size), nn.ReLU(), nn.Linear(2 * hidden_size, out_size))


class ILQLHeads(nn.Module):
    """The Q heads, their Polyak-averaged targets and the V head on hidden states ``(..., H)``.

    ``q_heads`` / ``target_q_heads``: ``num_q`` heads ``(..., H) -> (..., V)``; ``v_head``: ``(..., H) -> (..., 1)``.
    Every head's output layer starts at zero (Q = V = 0: the untrained Q-weighted policy is the LM's exactly; trlX's
    start random), the targets as copies of the Q heads; the targets never get gradients.
    """

    def __init__(self, hidden_size: int, vocab_size: int, num_q: int = 2) -> None:
        super().__init__()
        self.q_heads = nn.ModuleList(mlp_head(hidden_size, vocab_size) for _ in range(num_q))
        self.v_head = mlp_head(hidden_size, 1)
        for head in (*self.q_heads, self.v_head):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        self.target_q_heads = copy.deepcopy(self.q_heads).requires_grad_(False)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """V(s), ``(..., H) -> (...)``."""
        return self.v_head(hidden).squeeze(-1)

    def target_q(self, hidden: torch.Tensor) -> torch.Tensor:
        """Q̂(s, ·) = min_i Q̂_i(s, ·), ``(..., H) -> (..., V)``, no gradient."""
        with torch.no_grad():
            return torch.stack([head(hidden) for head in self.target_q_heads]).amin(dim=0)

    @torch.no_grad()
    def polyak_update(self, rate: float) -> None:
        """θ̂ ← α · θ + (1 − α) · θ̂ for every target parameter (α = ``rate``)."""
        for target, online in zip(self.target_q_heads.parameters(), self.q_heads.parameters()):
            target.lerp_(online, rate)


def build_heads(lm: nn.Module, num_q: int) -> ILQLHeads:
    """Heads sized for ``lm`` (its hidden size and vocabulary), on its device and in its dtype."""
    embedding = lm.get_input_embeddings()
    parameter = next(lm.parameters())
    heads = ILQLHeads(int(embedding.embedding_dim), int(embedding.num_embeddings), num_q)
    return heads.to(device=parameter.device, dtype=parameter.dtype)


# ---------------------------------------------------------------------------------------------- losses
def expectile_loss(q_hat: torch.Tensor, v: torch.Tensor, tau: float) -> torch.Tensor:
    """The value loss L_V = E[|τ − 1(Q̂ − V < 0)| · (Q̂ − V)²] (IQL's L_2^τ), ``(N,), (N,) -> ()``."""
    u = q_hat - v
    weight = torch.where(u < 0, 1.0 - tau, tau)  # |τ − 1(u < 0)|
    return (weight * u.pow(2)).mean()


def q_loss(q_taken: Sequence[torch.Tensor], rewards: torch.Tensor, next_values: torch.Tensor, gamma: float
           ) -> torch.Tensor:
    """L_Q = Σ_i E[(Q_i(s_t, a_t) − (r_t + γ · V(s_{t+1})))²]; ``next_values`` ``(N,)`` is 0 after the last token and is
    not differentiated. ``q_taken``: each head's Q of the actions taken, ``(N,)``."""
    target = rewards + gamma * next_values.detach()
    return sum(F.mse_loss(q, target) for q in q_taken)


def cql_loss(q_all: Sequence[torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
    """L_CQL = Σ_i E[log Σ_a exp Q_i(s_t, a) − Q_i(s_t, a_t)]: cross-entropy with Q_i ``(N, V)`` as logits."""
    return sum(F.cross_entropy(q.float(), actions) for q in q_all)


def awac_loss(logprobs: torch.Tensor, advantages: torch.Tensor, awac_beta: float) -> torch.Tensor:
    """L_LM = E[exp(β_awac · (Q̂ − V)) · (−log π_β(a_t|s_t))], the weight not differentiated; β_awac = 0 is the NLL."""
    weight = torch.exp(awac_beta * advantages.detach())
    return (weight * -logprobs).mean()


@dataclass
class ILQLLoss:
    """The loss of one (micro-)batch and its parts (scalars; ``total`` has the graph)."""

    total: torch.Tensor
    q: torch.Tensor
    v: torch.Tensor
    cql: torch.Tensor
    lm: torch.Tensor
    q_mean: torch.Tensor
    v_mean: torch.Tensor
    advantage: torch.Tensor
    entropy: torch.Tensor


# ---------------------------------------------------------------------------------------------- decoding
class QWeightedHead(nn.Module):
    """The ILQL policy's output layer: hidden states ``(..., H)`` → logits ``(..., V)``
    z_β + β · (Q̂ − V), restricted to the ``top_k`` largest (the others −inf) when ``top_k`` is set.

    ``lm_head`` is the LM's output embedding; with ``beta = 0`` and no ``top_k`` the result is z_β exactly."""

    def __init__(self, lm_head: nn.Module, heads: ILQLHeads, beta: float, top_k: int | None) -> None:
        super().__init__()
        self._parts = [lm_head, heads]  # a list: the parameters belong to the LM and the agent's heads
        self.beta, self.top_k = beta, top_k

    @property
    def in_features(self) -> int:
        """H, as the LM head's (a hidden state in)."""
        return self._parts[0].in_features

    @property
    def out_features(self) -> int:
        """V, as the LM head's (a logit per token out)."""
        return self._parts[0].out_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.weight(self._parts[0](hidden), hidden)

    def weight(self, lm_logits: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Q-weight the LM's logits ``(..., V)`` of the states ``hidden`` ``(..., H)``."""
        heads = self._parts[1]
        advantage = heads.target_q(hidden) - heads.values(hidden).unsqueeze(-1)  # Q̂(s, ·) − V(s)
        logits = lm_logits + self.beta * advantage.to(lm_logits.dtype)
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits


class ILQLPolicy(nn.Module):
    """The Q-weighted policy as a causal LM: called like the LM (``forward(**kwargs)``, KV caches, ``logits_to_keep``),
    it returns the LM's output with the logits replaced by :class:`QWeightedHead`'s; ``get_output_embeddings`` is that
    head, so every path of the env's engine (cached steps, packed prefill) samples from π_ILQL.

    ``lm`` and ``heads`` are submodules: the module follows ``.to()`` / ``.eval()`` like a model. Give it to
    ``env.set_policy`` (the agent does) or to :func:`~textenv.apps.evaluation.evaluate_policy`."""

    def __init__(self, lm: nn.Module, heads: ILQLHeads, beta: float = 1.0, top_k: int | None = None) -> None:
        super().__init__()
        self.lm, self.heads = lm, heads
        self.config = lm.config
        self.head = QWeightedHead(lm.get_output_embeddings(), heads, beta, top_k)

    @property
    def generation_config(self) -> Any:
        return getattr(self.lm, "generation_config", None)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def get_base_model(self) -> nn.Module:
        """The transformers model under it (the env reads how it takes its KV cache from this)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, **kwargs: Any) -> Any:
        keep = kwargs.get("logits_to_keep", 0)
        out = self.lm(**{**kwargs, "output_hidden_states": True})
        hidden = out.hidden_states[-1]  # (B, S, H), the LM head's input
        if isinstance(keep, int):  # the states whose logits the LM kept: the last `keep` (0: all)
            hidden = hidden[:, -keep:] if keep > 0 else hidden
        else:  # a tensor of column indices
            hidden = hidden[:, keep]
        out.logits = self.head.weight(out.logits, hidden)
        return out


# ---------------------------------------------------------------------------------------------- agent
@dataclass(frozen=True)
class ILQLConfig(OfflineConfig):
    """ILQL's hyper-parameters (trlX's defaults where they fit this scale)."""

    data: str | Sequence[Any] | None = option(
        None, "a JSONL path (or a list of rows) of {'prompt','completion','reward'}, or the ranked lines of textenv "
              "collect with meta.scores")
    heads_learning_rate: float | None = option(
        1e-3, "Adam step size of the Q and V heads, which start from zero (None: learning_rate, as trlX)",
        Number(low=0, low_open=True, high=1e30, none_ok=True))
    normalize_rewards: bool = option(True, "standardise the rewards over the dataset (mean 0, std 1) as trlX does",
                                     Flag())
    gamma: float = option(0.99, "discount γ of the Q target r + γ·V(s')", Number(low=0, high=1))
    tau: float = option(0.7, "expectile τ of the value loss (0.5: mean; towards 1: the best supported Q)",
                        Number(low=0, high=1, low_open=True, high_open=True))
    cql_scale: float = option(0.1, "weight of the CQL regulariser on the Q heads", Number(low=0))
    awac_scale: float = option(1.0, "weight of the LM (AWAC-weighted negative log-likelihood) term", Number(low=0))
    awac_beta: float = option(0.0, "β of the AWAC weight exp(β·(Q̂ − V)) on the LM term (0: plain NLL)", Number(low=0))
    two_qs: bool = option(True, "two Q heads and their minimum (False: one)", Flag())
    target_update_rate: float = option(0.05, "Polyak rate α of the target Q heads: θ̂ ← α·θ + (1 − α)·θ̂",
                                       Number(low=0, high=1, low_open=True))
    target_update_every: int = option(1, "optimizer steps between Polyak updates of the target Q heads", Integer(1))
    beta: float = option(1.0, "β of the Q-weighted decoding logits z_β + β·(Q̂ − V) (0: the LM's policy)",
                         Number(low=0))
    top_k: int | None = option(None, "sample among the top_k tokens of the Q-weighted logits (None: all)",
                               Integer(1, none_ok=True))


class ILQL(Agent):
    """Offline ILQL on a dataset of scored completions; the env samples with the Q-weighted policy.

    One :meth:`train_iteration` is one Adam step on ``batch_size`` completions (an epoch is a fresh permutation of
    the data from the agent's seeded generator, so resumes are exact), followed by the Polyak update of the target
    heads when due; ``num_tokens`` is the number of completion tokens trained on. :attr:`policy` is the LM (saved in
    ``policy/``), :attr:`heads` the Q/V heads (``modules.safetensors``), :attr:`sampling_module` the
    :class:`ILQLPolicy` installed in the env. Hyper-parameters: :class:`ILQLConfig`.
    """

    name = "ilql"
    config_class = ILQLConfig
    config: ILQLConfig

    def __init__(self, env: Any, config: ILQLConfig | None = None, **kwargs: Any) -> None:
        given = ILQLConfig.build(config, {k: v for k, v in kwargs.items() if k in ILQLConfig.names()}, "agent 'ilql'")
        rows = load_scored_completions(given.data)  # a bad data file is refused before the env is touched
        unwrapped = unwrap_vector_env(env)
        if isinstance(unwrapped.policy, ILQLPolicy):  # an env an ILQL agent already decorated: train its LM
            unwrapped.set_policy(unwrapped.policy.lm)
        super().__init__(env, config, **kwargs)
        c = self.config
        rewards = [row.reward for row in rows]
        self.rewards = normalised_rewards(rewards) if c.normalize_rewards else rewards
        self.data = encode_pairs(self.env.tokenizer, [r.prompt for r in rows], [r.completion for r in rows],
                                 c.max_length or context_length(self.policy), c.append_eos)
        self.heads = build_heads(self.policy, 2 if c.two_qs else 1)
        self.sampling_module = ILQLPolicy(self.policy, self.heads, c.beta, c.top_k)
        self.env.set_policy(self.sampling_module)
        self.env.refresh_cache()  # episodes already started continue with the Q-weighted policy
        self.sampler = MinibatchSampler(len(self.data), c.batch_size, self.generator)
        heads = [*self.heads.q_heads.parameters(), *self.heads.v_head.parameters()]
        self.optimizer = torch.optim.Adam([
            {"params": [p for p in self.policy.parameters() if p.requires_grad]},
            {"params": heads, "lr": c.heads_learning_rate or self.learning_rate},
        ], lr=self.learning_rate)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {HEADS: self.heads}

    def _extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def _check_extra_state(self, state: dict[str, Any]) -> None:
        if "sampler" in state:
            self.sampler.check_state_dict(state["sampler"], "scored completions")

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])

    # ------------------------------------------------------------------ the update
    def losses(self, batch: TokenBatch, rewards: torch.Tensor) -> ILQLLoss:
        """The ILQL loss of a batch (module docstring). ``rewards``: ``(B,)`` one per sequence, paid on its last token.

        With left padding every sequence ends at column L − 1, so the last action of every row is the one predicting
        column L − 1, whose next state is terminal (V = 0)."""
        c = self.config
        positions = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
                          output_hidden_states=True)
        hidden = out.hidden_states[-1]  # (B, L, H): h(s_t) at column t, the state predicting column t + 1
        taken = batch.target_mask.bool()  # (B, L − 1): columns t whose next token is a completion token (an action)
        actions = batch.input_ids[:, 1:][taken]  # (N,)
        logits = out.logits[:, :-1][taken].float()  # (N, V) z_β(s_t)
        states, next_states = hidden[:, :-1][taken], hidden[:, 1:][taken]  # h(s_t), h(s_{t+1}): (N, H)
        last = torch.zeros_like(batch.target_mask)
        last[:, -1] = 1.0
        last = last[taken]  # (N,) 1 on each sequence's last action
        token_rewards = last * rewards[:, None].expand_as(batch.target_mask)[taken]  # r_t: R on the last action

        q_all = [head(states) for head in self.heads.q_heads]  # each (N, V)
        q_taken = [q.gather(-1, actions[:, None]).squeeze(-1) for q in q_all]
        q_hat = self.heads.target_q(states).gather(-1, actions[:, None]).squeeze(-1)  # Q̂(s_t, a_t), no grad
        v = self.heads.values(states)
        next_v = self.heads.values(next_states) * (1.0 - last)  # V(s_{t+1}), 0 after the last token
        logprobs = chosen_logprobs(logits, actions, fast=model_fast(self.policy))
        parts = {
            "q": q_loss(q_taken, token_rewards, next_v, c.gamma),
            "v": expectile_loss(q_hat, v, c.tau),
            "cql": cql_loss(q_all, actions),
            "lm": awac_loss(logprobs, q_hat - v, c.awac_beta),
        }
        total = parts["q"] + parts["v"] + c.cql_scale * parts["cql"] + c.awac_scale * parts["lm"]
        with torch.no_grad():
            stats = {"q_mean": torch.stack(q_taken).mean(), "v_mean": v.mean(), "advantage": (q_hat - v).mean(),
                     "entropy": entropy(logits.detach(), fast=model_fast(self.policy)).mean()}
        return ILQLLoss(total, **parts, **stats)

    def train_iteration(self) -> dict[str, float]:
        indices = self.sampler.next()
        size = self.config.micro_batch_size or len(indices)
        chunks = [indices[i : i + size] for i in range(0, len(indices), size)]
        batches = [collate([self.data[i] for i in chunk], self.env.tokenizer.pad_token_id, self.env.device)
                   for chunk in chunks]
        rewards = [torch.tensor([self.rewards[i] for i in chunk], dtype=torch.float32, device=self.env.device)
                   for chunk in chunks]
        num_tokens = sum(batch.num_tokens for batch in batches)
        metrics: dict[str, float] = {}

        def part(batch: TokenBatch, batch_rewards: torch.Tensor) -> torch.Tensor:
            loss = self.losses(batch, batch_rewards)
            for key in ("q", "v", "cql", "lm", "q_mean", "v_mean", "advantage", "entropy"):
                metrics[key] = metrics.get(key, 0.0) + float(share(getattr(loss, key).detach(), batch.num_tokens,
                                                                   num_tokens))
            return share(loss.total, batch.num_tokens, num_tokens)

        self.policy.train()
        loss = gradient_step(self, [lambda b=b, r=r: part(b, r) for b, r in zip(batches, rewards)], self.optimizer,
                             {"policy": self.policy, "q_heads": self.heads.q_heads, "v_head": self.heads.v_head},
                             self.config.max_grad_norm)
        self.policy.eval()
        if (self.iterations + 1) % self.config.target_update_every == 0:
            self.heads.polyak_update(self.config.target_update_rate)
        return {
            "num_tokens": num_tokens,
            "train/loss": float(loss),
            "train/entropy": metrics["entropy"],
            **{f"train/loss_{key}": metrics[key] for key in ("q", "v", "cql", "lm")},
            **{f"train/{key}": metrics[key] for key in ("q_mean", "v_mean", "advantage")},
            "train/epoch": float(self.sampler.epoch),
        }

    @torch.no_grad()
    def evaluate_losses(self, batch_size: int = 32) -> dict[str, float]:
        """The loss and its parts over the whole dataset (token-weighted means, no update)."""
        was_training = self.policy.training
        self.policy.eval()
        totals: dict[str, float] = {}
        count = 0
        for start in range(0, len(self.data), batch_size):
            indices = range(start, min(start + batch_size, len(self.data)))
            batch = collate([self.data[i] for i in indices], self.env.tokenizer.pad_token_id, self.env.device)
            rewards = torch.tensor([self.rewards[i] for i in indices], dtype=torch.float32, device=self.env.device)
            loss = self.losses(batch, rewards)
            for key in ("total", "q", "v", "cql", "lm"):
                totals[key] = totals.get(key, 0.0) + float(getattr(loss, key)) * batch.num_tokens
            count += batch.num_tokens
        self.policy.train(was_training)
        return {("loss" if key == "total" else f"loss_{key}"): value / max(count, 1) for key, value in totals.items()}

    # ------------------------------------------------------------------ acting
    def acting_model(self) -> nn.Module:
        """:meth:`predict` samples from the Q-weighted policy, like the env."""
        return self.sampling_module

    @classmethod
    def sampling_policy(cls, checkpoint: str | os.PathLike, lm: nn.Module) -> ILQLPolicy:
        """The Q-weighted policy of an ILQL ``checkpoint`` around its LM ``lm`` (loaded from ``checkpoint/policy``):
        the heads from ``modules.safetensors``, β, ``top_k`` and the number of Q heads from ``agent.json``. What
        ``textenv eval CHECKPOINT`` samples with."""
        path = Path(checkpoint)
        saved = read_checkpoint_meta(path)["hyperparameters"]
        settings = {key: saved.get(key, getattr(ILQLConfig, key)) for key in ("two_qs", "beta", "top_k")}
        ILQLConfig.check_values(settings)
        heads = build_heads(lm, 2 if settings["two_qs"] else 1)
        prefix = f"{HEADS}."
        tensors = {k[len(prefix):]: v for k, v in read_tensors(path / "modules.safetensors").items()
                   if k.startswith(prefix)}
        try:
            heads.load_state_dict(tensors)
        except RuntimeError as err:
            raise InputError(f"damaged checkpoint: {path / 'modules.safetensors'} does not hold the ILQL heads of "
                             f"this model ({str(err).splitlines()[0]}). Use a complete ILQL checkpoint") from None
        return ILQLPolicy(lm, heads, settings["beta"], settings["top_k"]).eval()

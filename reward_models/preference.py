"""A reward model learned from preference comparisons (Bradley–Terry), as in InstructGPT.

InstructGPT's reward model (docs/rl-framing.md#the-reward-model): the RM is the SFT model with its LM head
replaced by a scalar head, trained on K-way rankings expanded to C(K, 2) pairs with

    loss(φ) = − E_{(x, y_w, y_l)} [ log σ( r_φ(x, y_w) − r_φ(x, y_l) ) ]           (Bradley–Terry)

keeping all pairs of one prompt in the same batch (each completion is scored once per batch and every pair
is formed from those scores; InstructGPT weighs each prompt's C(K, 2) pairs by 1 / C(K, 2), so every prompt
counts once). After training a bias is added so that the mean reward over the training completions is 0.

Normalisation (on by default, ``normalize=True``): the BT loss fixes neither the level nor the scale of r, and
the scale is what the KL coefficient β of PPO is traded against (R = r − β·KL, InstructGPT eq. 2): an RM whose
scores spread over ±10 makes β = 0.05 mean far less than one spread over ±1. So the reward is also divided by
its standard deviation over the same completions (the training prompts' reference completions, i.e. the
starting policy's samples):

    r_norm(x, y) = (r_φ(x, y) − μ) / σ,   μ, σ = mean, std of r_φ over the training completions

so on the reference policy's own text r_norm has mean 0 and standard deviation 1 whatever the RM, and β means
the same for every normalised RM (docs/overoptimisation.md). μ and σ are stored in ``reward_model.json``
(``"normalization"``) and applied on load; :meth:`PreferenceRewardModel.normalize` recomputes them on any
other reference completions. A directory saved before normalisation existed has neither: it loads with scale 1
and scores exactly as before (mean 0, spread unnormalised).

Optional reward centring (``center_coef`` = η > 0), in the spirit of Eisenstein et al. 2023 ("Helping or
Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking"): the BT loss only sees reward
*differences*, so the level of r per prompt drifts freely; we add η · mean_x( mean_{y∈x} r(x, y) )², the
squared mean reward of each prompt's completions, averaged over the prompts of the batch. For a single
pair this is η/4 · (r(x, y_w) + r(x, y_l))², Eisenstein et al.'s auxiliary term up to the constant.

Architecture: any Hugging Face backbone loadable with ``AutoModel`` (for a causal LM checkpoint this is its
trunk without the LM head) → hidden states ``(N, S, H)`` → pooling (``"last"``: the last non-pad token,
which is the EOS appended to every text; ``"mean"``: masked mean over all tokens) → ``nn.Linear(H, 1)``.
Texts are ``prompt + completion`` (the same concatenation the env decodes), right-padded.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from textenv.checkpoint import atomic_directory, read_tensors, recover_directory, verify_directory
from textenv.config import Choice, Config, Flag, Integer, Number, Seed, option
from textenv.models.loading import DEFAULT_MODEL, load_pretrained, load_tokenizer, resolve_device
from textenv.preferences import ComparisonGroup, PreferenceRow, as_preference_rows, expand_pairs
from textenv.reward_models.base import RewardModel
from textenv.validation import InputError, check_choice, check_int, check_number

POOLINGS = ("last", "mean")
FORMAT = "textenv-preference-reward-model"
#: ``kind`` of a saved reward model in its ``textenv.json`` manifest (:mod:`textenv.checkpoint`).
DIRECTORY_KIND = "preference_reward_model"
META_FILE = "reward_model.json"
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"
class RewardModelDivergedError(RuntimeError):
    """Reward-model training produced a non-finite loss, gradient or reward (NaN or ±inf) and stopped; nothing
    was saved. The message names the epoch and step and the likely cause. ``user_facing``: the ``textenv``
    command prints it as one line (exit code 2), like an :class:`~textenv.validation.InputError`."""

    user_facing = True


# ---------------------------------------------------------------------------------------------- the loss
def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """−log σ(r_w − r_l) averaged over pairs (optionally weighted): ``(P,), (P,) -> ()``.

    InstructGPT eq. 1 (docs/rl-framing.md#the-reward-model). ``-logsigmoid`` is the numerically stable form of
    log(1 + exp(−(r_w − r_l))); its gradient w.r.t. r_w is −σ(r_l − r_w).
    """
    losses = -F.logsigmoid(chosen - rejected)
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum()


# ---------------------------------------------------------------------------------------------- the network
class RewardNetwork(nn.Module):
    """Backbone trunk + scalar head: token ids ``(N, S)`` → rewards ``(N,)`` (before the mean-zero bias)."""

    def __init__(self, backbone: PreTrainedModel, pooling: str = "last", head: nn.Linear | None = None) -> None:
        super().__init__()
        check_choice("pooling", pooling, POOLINGS)
        self.backbone = backbone
        self.pooling = pooling
        hidden = _hidden_size(backbone)
        if head is None:
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))  # as TRL's reward-model head
            nn.init.zeros_(head.bias)
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Right-padded ``input_ids`` / ``attention_mask`` ``(N, S)`` → ``(N,)`` float32 rewards."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, S, H)
        if self.pooling == "last":
            last = attention_mask.sum(dim=1) - 1  # index of the last real token (right padding)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return self.head(pooled.float()).squeeze(-1)


def _hidden_size(backbone: PreTrainedModel) -> int:
    config = backbone.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for attribute in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, attribute, None)
        if isinstance(value, int):
            return value
    raise InputError(f"cannot find the hidden size of backbone {type(backbone).__name__}; its config has none of "
                     "hidden_size / n_embd / d_model / dim: use a transformer backbone that names it")


def load_backbone(backbone: str | os.PathLike | PreTrainedModel = DEFAULT_MODEL) -> PreTrainedModel:
    """A trunk to put the scalar head on: ``AutoModel.from_pretrained`` of a name/path, or a copy of a
    loaded model's ``base_model`` (a causal LM's LM head is dropped; the caller's model is not modified)."""
    if isinstance(backbone, PreTrainedModel):
        return copy.deepcopy(backbone.base_model)
    if not isinstance(backbone, (str, os.PathLike)):
        raise TypeError(f"backbone must be a model name/path or a PreTrainedModel, got {type(backbone)}")
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "lm_head weights not used" is expected here
    try:
        return load_pretrained(AutoModel, backbone, "backbone")
    finally:
        hf_logging.set_verbosity(verbosity)


# ---------------------------------------------------------------------------------------------- the reward model
class PreferenceRewardModel(RewardModel):
    """A trained (or freshly initialised) Bradley–Terry reward model.

    Args:
        network: the :class:`RewardNetwork` (backbone + scalar head).
        tokenizer: the backbone's tokenizer (a right-padded copy is used internally).
        bias: added to every raw score (set by training so that the mean training reward is 0).
        scale: multiplies ``raw + bias`` (set by training to 1 / std of the training rewards; 1: unnormalised).
        normalization: how ``bias``/``scale`` were computed (``mean``, ``std``, ``num_texts``, ``texts``), or None.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        batch_size: texts per forward in :meth:`score`.
        max_length: longest text in tokens (longer texts keep their *last* tokens); default: the
            backbone's context length.
        metadata: free-form information saved with the model (training metrics, data source...).

    ``score(prompts, completions)`` → ``(N,)`` float64 rewards ``scale · (raw + bias)``, batched, no grad.
    """

    def __init__(
        self,
        network: RewardNetwork,
        tokenizer: PreTrainedTokenizerBase,
        bias: float = 0.0,
        device: str | torch.device = "auto",
        batch_size: int = 64,
        max_length: int | None = None,
        metadata: dict[str, Any] | None = None,
        scale: float = 1.0,
        normalization: dict[str, Any] | None = None,
    ) -> None:
        check_int("batch_size", batch_size, 1)
        check_number("scale", scale, low=0.0, low_open=True)
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.tokenizer = tokenizer
        self.bias = float(bias)
        self.scale = float(scale)
        self.normalization = None if normalization is None else dict(normalization)
        self.batch_size = int(batch_size)
        config = network.backbone.config
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_length = int(max_length or context or 1024)
        self.metadata = dict(metadata or {})

    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | PreTrainedModel = DEFAULT_MODEL,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        pooling: str = "last",
        device: str | torch.device = "auto",
        **kwargs: Any,
    ) -> PreferenceRewardModel:
        """An untrained RM: ``backbone``'s trunk with a fresh scalar head (bias 0)."""
        trunk = load_backbone(backbone)
        if tokenizer is None:
            tokenizer = getattr(backbone, "name_or_path", None) if isinstance(backbone, PreTrainedModel) else backbone
            tokenizer = tokenizer or DEFAULT_MODEL
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            tokenizer = load_tokenizer(tokenizer)
        return cls(RewardNetwork(trunk, pooling), tokenizer, device=device, **kwargs)

    # ------------------------------------------------------------------ scoring
    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[int]]:
        """Token ids of ``prompt + completion`` with EOS appended (when the tokenizer has one), keeping the
        last ``max_length`` tokens."""
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        texts = [p + c for p, c in zip(prompts, completions)]
        ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        eos = self.tokenizer.eos_token_id
        out = []
        for row in ids:
            row = list(row)
            if eos is not None and (not row or row[-1] != eos):
                row.append(eos)
            if not row:  # no EOS and no special tokens: an empty text still needs one position
                row = [self.tokenizer.pad_token_id or 0]
            out.append(row[-self.max_length :])
        return out

    def collate(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token id lists to ``(N, S)`` ids and mask on :attr:`device`."""
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def raw_scores(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Head outputs without :attr:`bias` for pre-tokenised texts, ``(N,)`` float64."""
        was_training = self.network.training
        self.network.eval()
        out = []
        order = np.argsort([len(s) for s in sequences])  # similar lengths together: less padding
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, mask = self.collate([sequences[i] for i in chunk])
            out.append(self.network(ids, mask).double().cpu().numpy())
        self.network.train(was_training)
        scores = np.empty(len(sequences))
        if out:
            scores[order] = np.concatenate(out)
        return scores

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """scale · (r_φ(x, y) + bias) for each pair, ``(N,)`` float64."""
        if len(completions) == 0:
            return np.zeros(0)
        return (self.raw_scores(self.encode(list(prompts), list(completions))) + self.bias) * self.scale

    def normalize(self, prompts: Sequence[str], completions: Sequence[str],
                  texts: str = "reference completions") -> dict[str, Any]:
        """Set ``bias`` = −μ and ``scale`` = 1/σ from the raw scores of ``(prompts, completions)``, the reference
        policy's completions of the training prompts, so that they score mean 0 and standard deviation 1; returns
        (and keeps in :attr:`normalization`, saved with the model) ``{"mean", "std", "num_texts", "texts"}``.

        Fewer than two texts, or texts that all score the same, cannot set a spread: :class:`InputError`."""
        if len(prompts) != len(completions):
            raise InputError(f"normalize got {len(prompts)} prompts for {len(completions)} completions; give one "
                             "prompt per completion")
        raw = self.raw_scores(self.encode(list(prompts), list(completions))) if len(completions) else np.zeros(0)
        return self._set_normalization(raw, texts)

    def _set_normalization(self, raw: np.ndarray, texts: str) -> dict[str, Any]:
        """μ, σ of the raw scores ``(N,)`` → ``bias``, ``scale``, :attr:`normalization`."""
        std = float(raw.std()) if raw.size >= 2 else 0.0
        if not (math.isfinite(std) and std > 0):
            raise InputError(f"cannot normalise the reward model on {raw.size} {texts}: their scores have no spread "
                             f"(std {std:g}); give at least two completions that the model scores differently")
        mean = float(raw.mean())
        self.bias, self.scale = -mean, 1.0 / std
        self.normalization = {"mean": mean, "std": std, "num_texts": int(raw.size), "texts": texts}
        return dict(self.normalization)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/`` atomically: ``backbone/`` (save_pretrained, safetensors, + tokenizer),
        ``head.safetensors`` and ``reward_model.json`` (pooling, bias, scale, normalization, max_length,
        metadata)."""
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar
        with atomic_directory(path, kind=DIRECTORY_KIND) as tmp:
            self.network.backbone.save_pretrained(tmp / BACKBONE_DIR, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / BACKBONE_DIR)
            head = {k: v.detach().cpu().contiguous() for k, v in self.network.head.state_dict().items()}
            save_file(head, str(tmp / HEAD_FILE))
            meta = {
                "format": FORMAT,
                "version": 2,
                "pooling": self.network.pooling,
                "bias": self.bias,
                "scale": self.scale,
                "normalization": self.normalization,
                "max_length": self.max_length,
                "metadata": self.metadata,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | torch.device = "auto", batch_size: int = 64
    ) -> PreferenceRewardModel:
        """Rebuild a model written by :meth:`save`. A version-1 directory (saved before normalisation existed)
        has no ``scale``: it loads unnormalised (scale 1, ``normalization`` None) and scores as it always did."""
        path = Path(path)
        recover_directory(path)  # a save killed between its two renames
        meta_file = path / META_FILE
        if not meta_file.is_file():
            raise InputError(f"{path} is not a saved PreferenceRewardModel (no {META_FILE}); "
                             "create one with `textenv train-rm` or train_preference_model(...) and model.save(dir)")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{meta_file} is not valid UTF-8 JSON ({err}); the reward model is damaged") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise InputError(f"{meta_file} has format {found!r}, expected {FORMAT!r}")
        missing = [key for key in ("pooling", "bias", "max_length") if key not in meta]
        if missing:
            raise InputError(f"{meta_file} lacks {missing}; the reward model is damaged")
        verify_directory(path, DIRECTORY_KIND)  # truncated or corrupted weights are refused before loading
        head = read_tensors(path / HEAD_FILE)
        trunk = load_backbone(path / BACKBONE_DIR)
        tokenizer = load_tokenizer(path / BACKBONE_DIR)
        network = RewardNetwork(trunk, meta["pooling"])
        network.head.load_state_dict(head)
        scale = meta.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise InputError(f"{meta_file} has scale {scale!r}, expected a finite number > 0; the reward model is "
                             "damaged (retrain it with `textenv train-rm`)")
        return cls(network, tokenizer, bias=meta["bias"], device=device, batch_size=batch_size,
                   max_length=meta["max_length"], metadata=meta.get("metadata", {}), scale=float(scale),
                   normalization=meta.get("normalization"))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


# ---------------------------------------------------------------------------------------------- evaluation
def pair_accuracy(reward_model: RewardModel, groups: Sequence[ComparisonGroup]) -> float:
    """Fraction of pairs with r(x, y_w) > r(x, y_l) (ties count 1/2), for any :class:`RewardModel`."""
    prompts = [g.prompt for g in groups for _ in g.completions]
    completions = [c for g in groups for c in g.completions]
    if not completions:
        return float("nan")
    return _accuracy(groups, np.asarray(reward_model.score(prompts, completions), dtype=np.float64))


def _accuracy(groups: Sequence[ComparisonGroup], scores: np.ndarray) -> float:
    correct, total, offset = 0.0, 0, 0
    for group in groups:
        for w, l in group.pairs:
            diff = scores[offset + w] - scores[offset + l]
            correct += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
            total += 1
        offset += len(group.completions)
    return correct / max(total, 1)


def _bt_loss_numpy(groups: Sequence[ComparisonGroup], scores: np.ndarray) -> float:
    """Per-prompt-averaged BT loss of fixed scores (for evaluation)."""
    losses, offset = [], 0
    for group in groups:
        diffs = np.array([scores[offset + w] - scores[offset + l] for w, l in group.pairs])
        losses.append(np.mean(np.logaddexp(0.0, -diffs)))
        offset += len(group.completions)
    return float(np.mean(losses)) if losses else float("nan")


# ---------------------------------------------------------------------------------------------- training
def split_groups(
    groups: Sequence[ComparisonGroup], eval_fraction: float, seed: int
) -> tuple[list[ComparisonGroup], list[ComparisonGroup]]:
    """Shuffle prompts with ``seed`` and hold out ``eval_fraction`` of them (whole prompts, never pairs)."""
    check_number("eval_fraction", eval_fraction, low=0.0, high=1.0, high_open=True)
    order = np.random.default_rng(seed).permutation(len(groups))
    n_eval = int(round(eval_fraction * len(groups)))
    if eval_fraction > 0 and n_eval == 0 and len(groups) > 1:
        n_eval = 1
    if n_eval >= len(groups):
        raise InputError(f"eval_fraction={eval_fraction} leaves no training prompts out of {len(groups)}; lower "
                         "it or give more data")
    return [groups[i] for i in order[n_eval:]], [groups[i] for i in order[:n_eval]]


@dataclass(frozen=True)
class PreferenceTrainingConfig(Config):
    """The hyper-parameters of :func:`train_preference_model` (and ``textenv train-rm``'s flags), tuned for the
    embedded ~2.7M-parameter backbone on 400 prompts × K=4 VADER-ranked completions (held-out pair accuracy ≈
    0.90; lr 1e-4..1e-3, 1..5 epochs and mean pooling all gave 0.89-0.90). Backbones of 100M+ parameters usually
    want lr ≈ 1e-5 and 1 epoch."""

    epochs: int = option(2, "passes over the training prompts", Integer(1))
    lr: float = option(3e-4, "AdamW step size of backbone and head", Number(low=0, low_open=True))
    weight_decay: float = option(0.0, "AdamW weight decay", Number(low=0.0))
    batch_prompts: int = option(16, "prompts per step; all C(K, 2) pairs of a prompt share its batch", Integer(1))
    eval_fraction: float = option(0.1, "fraction of prompts held out for pair accuracy, in [0, 1); 0: none",
                                  Number(low=0.0, high=1.0, high_open=True))
    center_coef: float = option(0.0, "η of the reward-centring term η · mean_x(mean_y r)²; 0: off",
                                Number(low=0.0))
    normalize: bool = option(True, "after training, scale rewards to standard deviation 1 over the training "
                                   "completions (mean 0 always), so PPO's β means the same for every RM", Flag())
    max_grad_norm: float | None = option(1.0, "gradient-norm clip per step; 0 or None: no clipping",
                                         Number(low=0.0, none_ok=True))
    pooling: str = option("last", "'last' (the EOS token's hidden state) or 'mean' (masked mean over tokens)",
                          Choice(POOLINGS))
    seed: int = option(0, "seeds the head initialisation, the train/eval split and the shuffling", Seed())


def train_preference_model(
    dataset: str | os.PathLike | Iterable[PreferenceRow | dict],
    backbone: str | os.PathLike | PreTrainedModel = DEFAULT_MODEL,
    config: PreferenceTrainingConfig | None = None,
    *,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    device: str | torch.device = "auto",
    verbose: int = 0,
    **hyperparameters: Any,
) -> tuple[PreferenceRewardModel, dict[str, Any]]:
    """Train a Bradley–Terry reward model on preference data; returns ``(model, metrics)``.

    Args:
        dataset: a preference JSONL path (see :mod:`textenv.preferences`) or an iterable of
            :class:`~textenv.preferences.PreferencePair` / :class:`~textenv.preferences.PreferenceRanking`
            rows (or their dict forms).
        backbone: model name/path for ``AutoModel`` or a loaded model (its trunk is copied).
        config: the hyper-parameters (default: :class:`PreferenceTrainingConfig`'s defaults).
        tokenizer: defaults to the backbone's.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        verbose: 1 prints one line per epoch.
        **hyperparameters: fields of :class:`PreferenceTrainingConfig` replacing those of ``config``
            (``lr=1e-4``); every value is checked before any data or model loads.

    Returns metrics with ``eval/pair_accuracy`` (held-out pairs), ``eval/loss``, ``train/pair_accuracy``,
    ``train/loss`` (last epoch's mean step loss), ``bias``, ``scale`` and ``normalization`` (module docstring),
    counts, ``seconds`` and a per-epoch ``history``.
    """
    config = PreferenceTrainingConfig.build(config, hyperparameters, "train_preference_model")
    start = time.perf_counter()
    train_groups, eval_groups = split_groups(_comparison_groups(dataset), config.eval_fraction, config.seed)
    torch.manual_seed(config.seed)
    model = PreferenceRewardModel.from_backbone(backbone, tokenizer=tokenizer, pooling=config.pooling, device=device)
    # Tokenise once: per group, the ids of its distinct completions.
    train_ids = [model.encode([g.prompt] * len(g.completions), g.completions) for g in train_groups]
    optimizer = torch.optim.AdamW(model.network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    history = []
    model.network.train()
    for epoch in range(config.epochs):
        record = _train_epoch(model, optimizer, train_groups, train_ids, rng, config, epoch)
        if eval_groups and (verbose or epoch == config.epochs - 1):
            record.update(_evaluate(model, eval_groups, "eval"))
        history.append(record)
        if verbose:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  flush=True)
    model.network.eval()
    metrics = _center_rewards(model, train_groups, train_ids, eval_groups, history, config)
    metrics["seconds"] = time.perf_counter() - start
    metrics["history"] = history
    model.metadata = {
        "training": {"backbone": str(getattr(backbone, "name_or_path", backbone)), **config.to_dict()},
        "metrics": {k: v for k, v in metrics.items() if k != "history"},
    }
    return model, metrics


def _comparison_groups(dataset: Any) -> list[ComparisonGroup]:
    """The prompts of ``dataset`` that hold at least one comparison; an empty dataset is an :class:`InputError`."""
    groups = [g for g in expand_pairs(as_preference_rows(dataset)) if g.pairs]
    if not groups:
        source = f"--data {dataset}" if isinstance(dataset, (str, os.PathLike)) else "the preference dataset"
        raise InputError(f"{source} is empty: it holds no comparisons (lines of prompt + chosen/rejected or ranked)")
    return groups


def _train_epoch(model: PreferenceRewardModel, optimizer: torch.optim.Optimizer, groups: Sequence[ComparisonGroup],
                 ids: list[list[list[int]]], rng: np.random.Generator, config: PreferenceTrainingConfig,
                 epoch: int) -> dict[str, Any]:
    """One pass over the training prompts in shuffled batches of ``batch_prompts``; returns the epoch's record."""
    losses, accs = [], []
    for batch in _batches(rng.permutation(len(groups)), config.batch_prompts):
        ids_batch, mask = model.collate([seq for i in batch for seq in ids[i]])
        rewards = model.network(ids_batch, mask)  # (N,): every completion of the batch scored once
        loss, chosen, rejected = _batch_loss(rewards, [groups[i] for i in batch], config.center_coef, model.device)
        step = len(losses) + 1
        _check_finite("loss", loss, epoch + 1, step, config.lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The total gradient norm, clipped to max_grad_norm (no clipping when it is 0 or None).
        grad_norm = torch.nn.utils.clip_grad_norm_(model.network.parameters(), config.max_grad_norm or float("inf"))
        _check_finite("gradient norm", grad_norm, epoch + 1, step, config.lr)
        optimizer.step()
        losses.append(float(loss.detach()))
        accs.append(float((chosen > rejected).float().mean()))
    return {"epoch": epoch + 1, "train/loss": float(np.mean(losses)), "train/batch_accuracy": float(np.mean(accs))}


def _batch_loss(rewards: torch.Tensor, groups: Sequence[ComparisonGroup], center_coef: float,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weighted BT loss (+ centring) of a batch whose completions, group after group, scored ``rewards``
    ``(N,)``; returns ``(loss, r_w, r_l)`` with one entry of ``r_w`` / ``r_l`` per pair."""
    chosen, rejected, weights, prompt_means = [], [], [], []
    offset = 0
    for group in groups:
        pairs = torch.as_tensor(group.pairs, device=device) + offset
        chosen.append(rewards[pairs[:, 0]])
        rejected.append(rewards[pairs[:, 1]])
        # InstructGPT: each prompt's pairs carry weight 1 / (its number of pairs), so each prompt counts once.
        weights.append(torch.full((len(group.pairs),), 1.0 / len(group.pairs), device=device))
        prompt_means.append(rewards[offset : offset + len(group.completions)].mean())
        offset += len(group.completions)
    chosen_t, rejected_t = torch.cat(chosen), torch.cat(rejected)
    loss = bradley_terry_loss(chosen_t, rejected_t, torch.cat(weights))
    if center_coef > 0:  # Eisenstein et al. 2023-style centring: η · mean_x (mean_y r(x, y))²
        loss = loss + center_coef * torch.stack(prompt_means).pow(2).mean()
    return loss, chosen_t, rejected_t


def _center_rewards(model: PreferenceRewardModel, train_groups: Sequence[ComparisonGroup], train_ids: list[Any],
                    eval_groups: Sequence[ComparisonGroup], history: list[dict[str, Any]],
                    config: PreferenceTrainingConfig) -> dict[str, Any]:
    """Set the bias that makes the mean reward over the training completions 0 (each distinct completion once)
    and, with ``config.normalize``, the scale that makes their standard deviation 1 (a model that scores them
    all alike keeps scale 1); returns the training metrics. Non-finite rewards stop with
    :class:`RewardModelDivergedError`."""
    train_raw = model.raw_scores([seq for group_ids in train_ids for seq in group_ids])
    if not np.isfinite(train_raw).all():
        raise RewardModelDivergedError(
            f"reward-model training diverged: after the last step (epoch {config.epochs}) the rewards of the training "
            f"texts are not finite. The learning rate lr={config.lr:g} is likely too high (lower it; the default is "
            f"{PreferenceTrainingConfig.lr:g}); nothing was saved"
        )
    model.bias = -float(train_raw.mean())
    if config.normalize and train_raw.size >= 2 and train_raw.std() > 0:
        model._set_normalization(train_raw, "reference completions of the training prompts")
    metrics: dict[str, Any] = {
        "train/loss": history[-1]["train/loss"],
        "train/pair_accuracy": _accuracy(train_groups, train_raw),
        "num_train_prompts": len(train_groups),
        "num_train_pairs": sum(len(g.pairs) for g in train_groups),
        "num_eval_prompts": len(eval_groups),
        "num_eval_pairs": sum(len(g.pairs) for g in eval_groups),
        "bias": model.bias,
        "scale": model.scale,
        "normalization": model.normalization,
    }
    if eval_groups:
        metrics.update({k: v for k, v in history[-1].items() if k.startswith("eval/")})
    return metrics


def _check_finite(what: str, value: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    """Stop training with :class:`RewardModelDivergedError` when ``value`` (a scalar tensor) is NaN or ±inf."""
    number = float(value.detach())
    if math.isfinite(number):
        return
    raise RewardModelDivergedError(
        f"reward-model training diverged at epoch {epoch}, step {step}: the {what} is {number}. The learning rate "
        f"lr={lr:g} is likely too high (lower it; the default is {PreferenceTrainingConfig.lr:g}), or the data hold "
        "texts the backbone cannot score; nothing was saved"
    )


def _evaluate(model: PreferenceRewardModel, groups: Sequence[ComparisonGroup], prefix: str) -> dict[str, float]:
    sequences = [seq for g in groups for seq in model.encode([g.prompt] * len(g.completions), g.completions)]
    scores = model.raw_scores(sequences)
    return {f"{prefix}/pair_accuracy": _accuracy(groups, scores), f"{prefix}/loss": _bt_loss_numpy(groups, scores)}


def _batches(order: np.ndarray, size: int) -> Iterable[list[int]]:
    for start in range(0, len(order), size):
        yield order[start : start + size].tolist()

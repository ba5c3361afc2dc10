"""A gold labeller that wants positive sentiment *and* natural, varied text.

``textenv pipeline``'s synthetic labeller (``reward_model="fluent-sentiment"``). VADER alone saturates near its
ceiling and scores a loop ("I loved it it it it") or a salad of positive words ("enjoyed adored it superb
fresh to love it") as high as a fluent rave, so a policy that drifts into either never looks worse to it than
a good one: no over-optimisation can show. This scorer takes away what such text earned:

    gold(x, y) = VADER_compound(y) − w_rep · (1 − distinct₂(y)) − w_lm · max(0, NLL_ref(y | x) − τ)

* distinct₂(y) = |unique word bigrams| / |word bigrams| (1 for fewer than two words): repetition;
* NLL_ref(y | x) = −(1/|y|) Σ_t log p_ref(y_t | x, y_<t), the mean negative log-likelihood per token of the
  completion under a reference language model (default: the embedded model, the pipeline's π_ref): text that
  model finds implausible. The base model's own samples average NLL ≈ 1.4 nats/token (perplexity ≈ 4), so the
  default τ = 2 nats (perplexity e² ≈ 7.4) spares ordinary text and charges word salad (NLL 4–8) heavily.

Defaults w_rep = 1, w_lm = 0.5, τ = 2. Range (−∞, 1]. With them, on the embedded model's review domain: a varied
positive sentence ≈ +0.8, untrained samples ≈ 0 (mixed sentiment), "I loved it." repeated five times ≈ +0.2,
word salad of praise ≈ −1 or lower. Words are :func:`~textenv.reward_models.tasks.words_of` (the task suite's:
runs of letters, digits and apostrophes, lower-cased), so punctuation does not hide a loop.

The learned reward model sees only the base model's samples, which are fluent and hardly ever repeat, so it
learns the sentiment part and not the rest; PPO that pushes far from π_ref (large KL) finds text the proxy
loves and the gold does not, and the gold turns down while the proxy keeps rising: Goodhart's law in the
miniature of Gao et al. 2022 ("Scaling laws for reward model overoptimization", Fig. 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from textenv.logprobs import chosen_logprobs
from textenv.models.loading import DEFAULT_MODEL, load_causal_lm, load_tokenizer
from textenv.reward_models.tasks import words_of
from textenv.reward_models.vader import VaderSentimentReward
from textenv.validation import check_int, check_number


def distinct_bigram_fraction(text: str) -> float:
    """Unique word bigrams ÷ word bigrams of ``text`` in [0, 1]; 1.0 when it has fewer than two words.

    >>> distinct_bigram_fraction("good good good")  # (good good) twice: 1 unique of 2
    0.5
    """
    words = words_of(text)
    bigrams = list(zip(words, words[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


class ReferenceLikelihood:
    """Mean negative log-likelihood per token of each completion given its prompt under a causal LM, in nats.

    Prompt and completion are tokenised separately and concatenated (as the env builds them); a prompt without
    tokens is preceded by the BOS (or EOS) token so the first completion token has a context. Texts longer than
    the model's context keep their last tokens. A completion without tokens has NLL 0. The model loads on first
    use.

    Args:
        model: name or ``save_pretrained`` path of the reference LM.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        batch_size: texts per forward.
    """

    def __init__(self, model: str | os.PathLike = DEFAULT_MODEL, device: str = "cpu", batch_size: int = 64) -> None:
        check_int("batch_size", batch_size, 1)
        self.model_name, self.device, self.batch_size = str(model), device, batch_size
        self._model: torch.nn.Module | None = None

    def _load(self) -> None:
        self._model = load_causal_lm(self.model_name, device=self.device).eval()
        self.tokenizer = load_tokenizer(self.model_name)
        config = self._model.config
        self.context = int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024))

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """``(N,)`` float64 mean NLL per completion token."""
        if self._model is None:
            self._load()
        rows = [self._encode(p, c) for p, c in zip(prompts, completions)]
        out = np.zeros(len(rows))
        for start in range(0, len(rows), self.batch_size):
            out[start : start + self.batch_size] = self._batch_nll(rows[start : start + self.batch_size])
        return out

    def _encode(self, prompt: str, completion: str) -> tuple[list[int], int]:
        """(token ids of prompt + completion, number of completion tokens), cut to the context."""
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not prompt_ids:
            start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
            prompt_ids = [start if start is not None else 0]
        ids = (prompt_ids + completion_ids)[-self.context :]
        return ids, min(len(completion_ids), len(ids) - 1)

    def _batch_nll(self, rows: list[tuple[list[int], int]]) -> np.ndarray:
        width = max(len(ids) for ids, _ in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        scored = torch.zeros((len(rows), width - 1), dtype=torch.bool)  # targets that are completion tokens
        for i, (row, n_completion) in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.as_tensor(row), 1
            scored[i, len(row) - 1 - n_completion : len(row) - 1] = True
        device = next(self._model.parameters()).device
        logits = self._model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        logprob = chosen_logprobs(logits, ids[:, 1:].to(device)).cpu()  # (B, S-1): log p(token t+1 | ≤ t)
        counts = scored.sum(dim=1)
        nll = -(logprob * scored).sum(dim=1) / counts.clamp(min=1)
        return nll.double().numpy()


class FluentSentimentReward(VaderSentimentReward):
    """VADER − w_rep · (1 − distinct₂) − w_lm · max(0, NLL_ref − τ) (module docstring).

    Args:
        repetition_weight: w_rep ≥ 0, the score lost when every bigram repeats (0: no repetition term).
        fluency_weight: w_lm ≥ 0, the score lost per nat/token of NLL above τ (0: no LM, plain VADER − repetition).
        max_nll: τ ≥ 0 in nats per token.
        model: the reference LM that judges fluency (default: the embedded model).
        device: where the reference LM runs.
    """

    def __init__(self, repetition_weight: float = 1.0, fluency_weight: float = 0.5, max_nll: float = 2.0,
                 model: str | os.PathLike = DEFAULT_MODEL, device: str = "cpu") -> None:
        check_number("repetition_weight", repetition_weight, low=0.0)
        check_number("fluency_weight", fluency_weight, low=0.0)
        check_number("max_nll", max_nll, low=0.0)
        super().__init__()
        self.repetition_weight, self.fluency_weight, self.max_nll = float(repetition_weight), float(fluency_weight), float(max_nll)
        self.likelihood = ReferenceLikelihood(model, device=device) if fluency_weight > 0 else None

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        sentiment = super().score(prompts, completions)
        variety = np.array([distinct_bigram_fraction(text) for text in completions], dtype=np.float64)
        scores = sentiment - self.repetition_weight * (1.0 - variety)
        if self.likelihood is not None and len(completions):
            excess = np.maximum(0.0, self.likelihood(prompts, completions) - self.max_nll)
            scores = scores - self.fluency_weight * excess
        return scores

"""A gold labeller that wants positive sentiment *and* varied text: VADER minus a repetition penalty.

``textenv pipeline``'s synthetic labeller (``reward_model="fluent-sentiment"``). VADER alone saturates near its
ceiling and scores "I loved it. I loved it. I loved it." as high as a fluent rave, so a policy that collapses
into a loop never looks worse to it than a good one: no over-optimisation can show. This scorer subtracts the
fraction of *repeated* word bigrams, so degenerate text loses what its sentiment earned:

    gold(y) = VADER_compound(y) − w · (1 − distinct₂(y)),     distinct₂(y) = |unique word bigrams| / |bigrams|

with ``w`` = ``repetition_weight`` (default 1) and distinct₂ = 1 for completions of fewer than two words.
Range [−1 − w, 1]. Typical values with w = 1: a varied positive sentence ≈ +0.8 (distinct₂ ≈ 1), the
embedded model's untrained samples ≈ 0 (mixed sentiment, distinct₂ ≈ 0.97), "I loved it." repeated five times
≈ +0.2 (distinct₂ = 3/14). Words are :func:`~textenv.reward_models.tasks.words_of` (the task suite's tokenizer:
runs of letters, digits and apostrophes, lower-cased), so punctuation does not hide a loop.

The learned reward model sees only the base model's samples, which hardly ever repeat themselves, so it learns
the sentiment half and not the variety half; PPO that pushes far (large KL) finds the repetition the proxy does
not penalise, and the gold turns down while the proxy keeps rising: Goodhart's law in the miniature of Gao et
al. 2022 ("Scaling laws for reward model overoptimization", Fig. 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from textenv.reward_models.tasks import words_of
from textenv.reward_models.vader import VaderSentimentReward
from textenv.validation import check_number


def distinct_bigram_fraction(text: str) -> float:
    """Unique word bigrams ÷ word bigrams of ``text`` in [0, 1]; 1.0 when it has fewer than two words.

    >>> distinct_bigram_fraction("good good good")  # (good good) twice: 1 unique of 2
    0.5
    """
    words = words_of(text)
    bigrams = list(zip(words, words[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


class FluentSentimentReward(VaderSentimentReward):
    """VADER compound of the completion − ``repetition_weight`` · (1 − distinct₂), in [−1 − w, 1] (module docstring).

    Args:
        repetition_weight: w ≥ 0, the score lost when every bigram repeats (0: plain VADER).
    """

    def __init__(self, repetition_weight: float = 1.0) -> None:
        check_number("repetition_weight", repetition_weight, low=0.0)
        super().__init__()
        self.repetition_weight = float(repetition_weight)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        sentiment = super().score(prompts, completions)
        variety = np.array([distinct_bigram_fraction(text) for text in completions], dtype=np.float64)
        return sentiment - self.repetition_weight * (1.0 - variety)

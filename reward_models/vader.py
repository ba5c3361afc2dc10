"""Sentiment of the completion by VADER (Hutto & Gilbert 2014): a real lexicon model that runs offline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from textenv.reward_models.base import RewardModel


class VaderSentimentReward(RewardModel):
    """VADER compound score of the completion alone, in [-1, 1] (the prompt is not scored)."""

    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return np.array([self._analyzer.polarity_scores(text)["compound"] for text in completions], dtype=np.float64)

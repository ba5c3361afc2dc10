"""The gold scorers of the task suite (:mod:`textenv.tasks`): plain-text reward models that run offline.

Each scores the completion alone (the prompt is not scored) and returns one float per completion:

=====================================  ===============================================================  ========
registered as                          score                                                             range
=====================================  ===============================================================  ========
``"vader-negative"``                   −(VADER compound): negative sentiment                             [−1, 1]
``"target-length:<N>"``                1 − |words − N| / N, clipped at 0: peaks at exactly N words       [0, 1]
``"mentions:<w1>,<w2>,..."``           distinct keywords mentioned ÷ ``saturation`` (2), capped at 1     [0, 1]
``"topic-sound"``                      the same with :data:`SOUND_KEYWORDS` (sound and music)           [0, 1]
``"avoid-word:<word>"``                fluency − 0.5 · occurrences of the word, clipped at −1, where      [−1, 1]
                                       fluency = min(1, words / 10) · distinct words / words
=====================================  ===============================================================  ========

Words are the maximal runs of letters, digits and apostrophes, compared lower-case (:func:`words_of`).
The avoid-word scorer's fluency term is a repetition penalty with a minimum length, so neither the empty
completion nor a word repeated over and over beats a varied sentence without the word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from textenv.reward_models.base import RewardModel
from textenv.reward_models.vader import VaderSentimentReward
from textenv.validation import InputError, check_int, check_positive

_WORD = re.compile(r"[A-Za-z0-9']+")

#: Words about sound and music that the embedded model's review corpus uses in every domain: a film's
#: soundtrack, a game's sound effects, an album's vocals, a speaker's sound quality, a restaurant's music,
#: a noisy hotel room (``tools/corpus.py``).
SOUND_KEYWORDS = (
    "sound", "sounds", "soundtrack", "music", "musical", "song", "songs", "vocals", "voice", "singing",
    "speaker", "speakers", "audio", "audiobook", "score", "chorus", "choruses", "melody", "melodies", "lyrics",
    "drums", "drumming", "guitar", "piano", "noisy", "loud", "quiet", "album", "track", "tracks", "listening",
)


def words_of(text: str) -> list[str]:
    """The lower-cased words of ``text`` (runs of letters, digits and apostrophes)."""
    return [word.lower() for word in _WORD.findall(text)]


class NegativeSentimentReward(VaderSentimentReward):
    """−(VADER compound score) of the completion, in [−1, 1]: higher is more negative."""

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return -super().score(prompts, completions)


class TargetLengthReward(RewardModel):
    """``max(0, 1 − |n − N| / N)`` for a completion of n words: 1 at exactly N words, 0 at none or ≥ 2N.

    Args:
        target_words: N ≥ 1.
    """

    def __init__(self, target_words: int = 10) -> None:
        check_int("target_words", target_words, minimum=1)
        self.target_words = target_words

    @property
    def display_name(self) -> str:
        return f"target-length:{self.target_words}"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        counts = np.array([len(words_of(text)) for text in completions], dtype=np.float64)
        return np.clip(1.0 - np.abs(counts - self.target_words) / self.target_words, 0.0, 1.0)


class KeywordReward(RewardModel):
    """How many distinct keywords the completion mentions, ÷ ``saturation`` and capped at 1, in [0, 1].

    Counting distinct keywords (not occurrences) means repeating one keyword earns nothing more.

    Args:
        keywords: the topic's words (single words, any case).
        saturation: distinct keywords that earn the full score 1.
    """

    def __init__(self, keywords: Iterable[str] = SOUND_KEYWORDS, saturation: int = 2) -> None:
        cleaned = [word.strip().lower() for word in keywords if word.strip()]
        if not cleaned:
            raise InputError("keywords is empty; give at least one word, e.g. 'mentions:battery,screen'")
        bad = [word for word in cleaned if words_of(word) != [word]]
        if bad:
            raise InputError(f"keywords {bad} are not single words (letters, digits, apostrophes); give one word "
                             "per keyword, e.g. 'mentions:battery,screen'")
        check_int("saturation", saturation, minimum=1)
        self.keywords = frozenset(cleaned)
        self.saturation = saturation

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        hits = [len(self.keywords.intersection(words_of(text))) for text in completions]
        return np.minimum(np.array(hits, dtype=np.float64) / self.saturation, 1.0)


class AvoidWordReward(RewardModel):
    """Say everything without ``word``: ``fluency − penalty · occurrences``, clipped to [−1, 1].

    ``fluency = min(1, n / min_words) · distinct(n) / n`` for a completion of n words with distinct(n) distinct
    words (0 for no words): a repetition penalty that also asks for some length, so that stopping at once or
    repeating one word scores below a varied sentence that avoids the word.

    Args:
        word: the word to avoid (one word, any case; matched as a whole word).
        penalty: score lost per occurrence (> 0).
        min_words: completions shorter than this lose fluency in proportion.
    """

    def __init__(self, word: str = "the", penalty: float = 0.5, min_words: int = 10) -> None:
        if not isinstance(word, str) or words_of(word) != [word.strip().lower()]:
            raise InputError(f"word={word!r} must be one word (letters, digits, apostrophes), e.g. 'avoid-word:the'")
        check_positive("penalty", penalty)
        check_int("min_words", min_words, minimum=1)
        self.word = word.strip().lower()
        self.penalty = float(penalty)
        self.min_words = min_words

    @property
    def display_name(self) -> str:
        return f"avoid-word:{self.word}"

    def fluency(self, text: str) -> float:
        """``min(1, n / min_words) · distinct / n`` of ``text``'s n words, in [0, 1]."""
        words = words_of(text)
        if not words:
            return 0.0
        return min(1.0, len(words) / self.min_words) * len(set(words)) / len(words)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        scores = [self.fluency(text) - self.penalty * words_of(text).count(self.word) for text in completions]
        return np.clip(np.array(scores, dtype=np.float64), -1.0, 1.0)


def target_length(argument: str, **kwargs: object) -> RewardModel:
    """``"target-length:<N>"`` → :class:`TargetLengthReward` (N a whole number ≥ 1)."""
    if not argument.strip().isdigit() or int(argument) < 1:
        raise InputError(f"the target length {argument!r} must be a whole number of words >= 1, e.g. 'target-length:10'")
    return TargetLengthReward(int(argument), **kwargs)


def mentions(argument: str, **kwargs: object) -> RewardModel:
    """``"mentions:<w1>,<w2>,..."`` → :class:`KeywordReward`."""
    return KeywordReward(argument.split(","), **kwargs)


def avoid_word(argument: str, **kwargs: object) -> RewardModel:
    """``"avoid-word:<word>"`` → :class:`AvoidWordReward`."""
    return AvoidWordReward(argument.strip(), **kwargs)

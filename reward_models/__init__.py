"""Reward models behind one batched protocol, and a registry by name.

``make_reward_model(spec)`` (and so ``gym.make("TextGen-v0", reward_model=spec)``) accepts a
:class:`RewardModel` instance, a callable ``fn(prompts, completions) -> scores``, or a string:

==============================================  ==============================================================
``"vader"``                                     VADER sentiment of the completion (any name registered with
                                                :func:`register_reward_model`)
``"vader-negative"``, ``"topic-sound"``         the task suite's gold scorers (:mod:`.tasks`, ``textenv.TASKS``)
``"target-length:<N>"``                         1 − |words − N| / N, clipped at 0 (peaks at exactly N words)
``"mentions:<w1>,<w2>,..."``                    distinct keywords mentioned ÷ 2, capped at 1
``"avoid-word:<word>"``                         a varied completion without ``<word>``: fluency − 0.5 · occurrences
``"preference:<dir>"``                          a :class:`PreferenceRewardModel` saved with ``model.save(dir)``
``"<dir>"``                                     the same, when ``<dir>`` holds a saved preference RM
``"classifier:<name_or_path>"``                 a sequence classifier; score = probability of the last class
``"classifier:<name_or_path>#<label>"``         ... probability of class ``<label>`` (name or index)
``"classifier:<path>#label=A,minus=B"``         ... logit[A] − logit[B]
``"classifier:<path>#A,output=logit,text=pair"``  options: ``label``, ``minus``, ``output`` (probability|logit),
                                                ``text`` (completion|prompt+completion|pair), ``batch_size``
``"ensemble:<w>*<spec>+<w>*<spec>..."``         weighted sum of members (each ``<spec>`` any form above but
                                                an ensemble), e.g. ``"ensemble:0.7*preference:rm+0.3*vader"``
``"ensemble-normalized:<w>*<spec>+..."``        the same with per-member running standardisation
==============================================  ==============================================================

In an ensemble string members are split at every ``+`` that is followed by ``<number>*``, so paths may
contain ``+`` but not ``+<digits>*``. Keyword arguments of ``make_reward_model(spec, **kwargs)`` go to the
constructor (e.g. ``make_reward_model("classifier:path", label="POSITIVE", device="cpu")``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textenv.reward_models.base import RewardModel, as_scores, checked_scores
from textenv.reward_models.classifier import ClassifierReward
from textenv.reward_models.ensemble import EnsembleReward
from textenv.reward_models.fluent_sentiment import FluentSentimentReward
from textenv.reward_models.function import CallableReward
from textenv.reward_models.preference import (
    META_FILE,
    PreferenceRewardModel,
    bradley_terry_loss,
    pair_accuracy,
    train_preference_model,
)
from textenv.reward_models.tasks import (
    AvoidWordReward,
    KeywordReward,
    NegativeSentimentReward,
    TargetLengthReward,
    avoid_word,
    mentions,
    target_length,
)
from textenv.reward_models.vader import VaderSentimentReward
from textenv.validation import InputError

#: Plain names: ``REWARD_MODELS[name](**kwargs)``.
REWARD_MODELS: dict[str, Callable[..., RewardModel]] = {
    "vader": VaderSentimentReward,
    # the task suite's gold scorers (reward_models/tasks.py, textenv.TASKS)
    "vader-negative": NegativeSentimentReward,
    "topic-sound": KeywordReward,
    "fluent-sentiment": FluentSentimentReward,  # textenv pipeline's gold: VADER − repetition (.fluent_sentiment)
}

#: Parameterised families ``"<prefix>:<argument>"``: prefix → (``factory(argument, **kwargs)``, usage).
REWARD_MODEL_FAMILIES: dict[str, tuple[Callable[..., RewardModel], str]] = {}


def register_reward_model(name: str, factory: Callable[..., RewardModel]) -> None:
    """Make ``factory(**kwargs)`` available as ``reward_model=name``."""
    if ":" in name:
        raise InputError(f"reward-model name {name!r} must not contain ':' (reserved for '<family>:<argument>')")
    REWARD_MODELS[name] = factory


def register_reward_family(prefix: str, factory: Callable[..., RewardModel], usage: str) -> None:
    """Make ``factory(argument, **kwargs)`` available as ``reward_model="<prefix>:<argument>"``."""
    if ":" in prefix:
        raise InputError(f"family prefix {prefix!r} must not contain ':'")
    REWARD_MODEL_FAMILIES[prefix] = (factory, usage)


def valid_forms() -> list[str]:
    """Every accepted string form, for error messages and ``--help``."""
    return sorted(REWARD_MODELS) + [usage for _, usage in REWARD_MODEL_FAMILIES.values()] + ["<saved preference RM dir>"]


def make_reward_model(spec: Any = "vader", **kwargs: Any) -> RewardModel:
    """Resolve a name, an instance or a callable to a :class:`RewardModel` (string forms: module docstring).

    A string that is none of the valid forms, or whose argument is wrong (a missing directory, an unknown
    classifier label or option, a malformed ensemble), raises :class:`InputError` naming the spec and the
    valid forms."""
    if isinstance(spec, RewardModel):
        return spec
    if isinstance(spec, Path):
        spec = str(spec)
    if isinstance(spec, str):
        if spec in REWARD_MODELS:
            return REWARD_MODELS[spec](**kwargs)
        prefix, sep, argument = spec.partition(":")
        if sep and prefix in REWARD_MODEL_FAMILIES:
            factory, usage = REWARD_MODEL_FAMILIES[prefix]
            if not argument.strip():
                raise InputError(f"reward_model={spec!r} is missing its argument; use {usage!r}")
            try:
                return factory(argument, **kwargs)
            except InputError as err:
                if str(err).startswith(f"reward_model={spec!r}"):
                    raise
                raise InputError(f"reward_model={spec!r}: {err}") from None
        if prefix in REWARD_MODEL_FAMILIES:
            raise InputError(f"reward_model={spec!r} needs an argument; use {REWARD_MODEL_FAMILIES[prefix][1]!r}")
        if (Path(spec) / META_FILE).is_file():
            return PreferenceRewardModel.load(spec, **kwargs)
        raise InputError(f"reward_model={spec!r} is not a known reward model; valid forms: {valid_forms()}")
    if callable(spec):
        return CallableReward(spec)
    raise InputError(f"reward_model must be a name (one of {valid_forms()}), a RewardModel or a function "
                     f"fn(prompts, completions) -> scores, got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------- built-in families
def _preference(argument: str, **kwargs: Any) -> RewardModel:
    path = Path(argument).expanduser()
    if not path.is_dir():
        raise InputError(f"{argument} is not a directory; 'preference:<dir>' needs a directory written by "
                         "PreferenceRewardModel.save (textenv train-rm --output <dir>)")
    if not (path / META_FILE).is_file():
        raise InputError(f"{argument} has no {META_FILE}, so it is not a saved preference reward model; give a "
                         "directory written by PreferenceRewardModel.save (textenv train-rm --output <dir>)")
    return PreferenceRewardModel.load(argument, **kwargs)


_CLASSIFIER_OPTIONS = {"label": "label", "minus": "minus_label", "minus_label": "minus_label", "output": "output",
                       "text": "text", "batch_size": "batch_size", "max_length": "max_length", "device": "device"}


def parse_classifier(argument: str) -> tuple[str, dict[str, Any]]:
    """``"path#POSITIVE,minus=NEGATIVE"`` → ("path", {"label": "POSITIVE", "minus_label": "NEGATIVE"})."""
    usage = REWARD_MODEL_FAMILIES["classifier"][1]
    path, _, options = argument.partition("#")
    if not path.strip():
        raise InputError(f"no model named before '#'; use {usage!r}")
    parsed: dict[str, Any] = {}
    for index, item in enumerate(o.strip() for o in options.split(",") if o.strip()):
        key, eq, value = item.partition("=")
        if not eq:
            if index:
                raise InputError(f"classifier option {item!r} must be key=value (keys: {sorted(_CLASSIFIER_OPTIONS)}); "
                                 f"use {usage!r}")
            key, value = "label", item
        if key.strip() not in _CLASSIFIER_OPTIONS:
            raise InputError(f"unknown classifier option {key.strip()!r}; keys: {sorted(_CLASSIFIER_OPTIONS)}")
        name = _CLASSIFIER_OPTIONS[key.strip()]
        if name in ("batch_size", "max_length"):
            if not value.strip().isdigit() or int(value) < 1:
                raise InputError(f"classifier option {key.strip()}={value!r} must be an integer >= 1")
            parsed[name] = int(value)
        else:
            parsed[name] = value.strip()
    return path, parsed


def _classifier(argument: str, **kwargs: Any) -> RewardModel:
    path, parsed = parse_classifier(argument)
    return ClassifierReward(path, **{**parsed, **kwargs})


_MEMBER_SPLIT = re.compile(r"\+(?=\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*\*)")
_WEIGHTED = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*(.+)$", re.S)


def parse_ensemble(argument: str) -> tuple[list[str], list[float]]:
    """``"0.7*preference:rm+0.3*vader"`` → (["preference:rm", "vader"], [0.7, 0.3])."""
    members, weights = [], []
    for part in _MEMBER_SPLIT.split(argument):
        match = _WEIGHTED.match(part)
        if match is None or not match.group(2).strip():
            raise InputError(f"ensemble member {part!r} must be '<weight>*<reward model>', as in "
                             "'ensemble:0.7*preference:rm+0.3*vader'")
        member = match.group(2).strip()
        if member.partition(":")[0] in ("ensemble", "ensemble-normalized"):
            raise InputError(f"ensemble member {member!r}: an ensemble cannot contain an ensemble; list its members")
        weights.append(float(match.group(1)))
        members.append(member)
    return members, weights


def _ensemble(argument: str, normalize: bool = False, **kwargs: Any) -> RewardModel:
    members, weights = parse_ensemble(argument)
    return EnsembleReward(members, weights, normalize=normalize, **kwargs)


register_reward_family("preference", _preference, "preference:<dir>")
register_reward_family("classifier", _classifier, "classifier:<name_or_path>[#<label>][,minus=<label>][,output=logit]")
register_reward_family("ensemble", _ensemble, "ensemble:<w>*<spec>+<w>*<spec>")
register_reward_family(
    "ensemble-normalized", lambda argument, **kw: _ensemble(argument, normalize=True, **kw),
    "ensemble-normalized:<w>*<spec>+<w>*<spec>",
)
register_reward_family("target-length", target_length, "target-length:<words>")
register_reward_family("mentions", mentions, "mentions:<word>,<word>,...")
register_reward_family("avoid-word", avoid_word, "avoid-word:<word>")

__all__ = [
    "REWARD_MODELS",
    "REWARD_MODEL_FAMILIES",
    "AvoidWordReward",
    "CallableReward",
    "ClassifierReward",
    "EnsembleReward",
    "KeywordReward",
    "NegativeSentimentReward",
    "PreferenceRewardModel",
    "RewardModel",
    "TargetLengthReward",
    "VaderSentimentReward",
    "bradley_terry_loss",
    "as_scores",
    "checked_scores",
    "make_reward_model",
    "pair_accuracy",
    "parse_classifier",
    "parse_ensemble",
    "register_reward_family",
    "register_reward_model",
    "train_preference_model",
    "valid_forms",
]

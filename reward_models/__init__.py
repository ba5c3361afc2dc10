"""Reward models behind one batched protocol, and a registry by name.

``make_reward_model(spec)`` (and so ``gym.make("TextGen-v0", reward_model=spec)``) accepts a
:class:`RewardModel` instance, a callable ``fn(prompts, completions) -> scores``, or a string:

==============================================  ==============================================================
``"vader"``                                     VADER sentiment of the completion (any name registered with
                                                :func:`register_reward_model`)
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

from textenv.reward_models.base import RewardModel, checked_scores
from textenv.reward_models.classifier import ClassifierReward
from textenv.reward_models.ensemble import EnsembleReward
from textenv.reward_models.function import CallableReward
from textenv.reward_models.preference import (
    META_FILE,
    PreferenceRewardModel,
    bradley_terry_loss,
    pair_accuracy,
    train_preference_model,
)
from textenv.reward_models.vader import VaderSentimentReward

#: Plain names: ``REWARD_MODELS[name](**kwargs)``.
REWARD_MODELS: dict[str, Callable[..., RewardModel]] = {"vader": VaderSentimentReward}

#: Parameterised families ``"<prefix>:<argument>"``: prefix → (``factory(argument, **kwargs)``, usage).
REWARD_MODEL_FAMILIES: dict[str, tuple[Callable[..., RewardModel], str]] = {}


def register_reward_model(name: str, factory: Callable[..., RewardModel]) -> None:
    """Make ``factory(**kwargs)`` available as ``reward_model=name``."""
    if ":" in name:
        raise ValueError(f"reward-model name {name!r} must not contain ':' (reserved for '<family>:<argument>')")
    REWARD_MODELS[name] = factory


def register_reward_family(prefix: str, factory: Callable[..., RewardModel], usage: str) -> None:
    """Make ``factory(argument, **kwargs)`` available as ``reward_model="<prefix>:<argument>"``."""
    if ":" in prefix:
        raise ValueError(f"family prefix {prefix!r} must not contain ':'")
    REWARD_MODEL_FAMILIES[prefix] = (factory, usage)


def valid_forms() -> list[str]:
    """Every accepted string form, for error messages and ``--help``."""
    return sorted(REWARD_MODELS) + [usage for _, usage in REWARD_MODEL_FAMILIES.values()] + ["<saved preference RM dir>"]


def make_reward_model(spec: Any = "vader", **kwargs: Any) -> RewardModel:
    """Resolve a name, an instance or a callable to a :class:`RewardModel` (string forms: module docstring)."""
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
            if not argument:
                raise ValueError(f"reward_model={spec!r} is missing its argument; use {usage!r}")
            return factory(argument, **kwargs)
        if prefix in REWARD_MODEL_FAMILIES:
            raise ValueError(f"reward_model={spec!r} needs an argument; use {REWARD_MODEL_FAMILIES[prefix][1]!r}")
        if (Path(spec) / META_FILE).is_file():
            return PreferenceRewardModel.load(spec, **kwargs)
        raise ValueError(f"reward_model={spec!r} is not a known reward model; valid forms: {valid_forms()}")
    if callable(spec):
        return CallableReward(spec)
    raise TypeError(f"reward_model must be a name, a RewardModel or a callable, got {type(spec)}")


# ---------------------------------------------------------------------------------------------- built-in families
def _preference(argument: str, **kwargs: Any) -> RewardModel:
    return PreferenceRewardModel.load(argument, **kwargs)


_CLASSIFIER_OPTIONS = {"label": "label", "minus": "minus_label", "minus_label": "minus_label", "output": "output",
                       "text": "text", "batch_size": "batch_size", "max_length": "max_length", "device": "device"}


def _classifier(argument: str, **kwargs: Any) -> RewardModel:
    path, _, options = argument.partition("#")
    parsed: dict[str, Any] = {}
    for index, item in enumerate(o.strip() for o in options.split(",") if o.strip()):
        key, eq, value = item.partition("=")
        if not eq:
            if index:
                raise ValueError(f"classifier option {item!r} must be key=value (keys: {sorted(_CLASSIFIER_OPTIONS)})")
            key, value = "label", item
        if key.strip() not in _CLASSIFIER_OPTIONS:
            raise ValueError(f"unknown classifier option {key!r} in {argument!r}; keys: {sorted(_CLASSIFIER_OPTIONS)}")
        name = _CLASSIFIER_OPTIONS[key.strip()]
        parsed[name] = int(value) if name in ("batch_size", "max_length") else value.strip()
    return ClassifierReward(path, **{**parsed, **kwargs})


_MEMBER_SPLIT = re.compile(r"\+(?=\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*\*)")
_WEIGHTED = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*(.+)$", re.S)


def parse_ensemble(argument: str) -> tuple[list[str], list[float]]:
    """``"0.7*preference:rm+0.3*vader"`` → (["preference:rm", "vader"], [0.7, 0.3])."""
    members, weights = [], []
    for part in _MEMBER_SPLIT.split(argument):
        match = _WEIGHTED.match(part)
        if match is None:
            raise ValueError(f"ensemble member {part!r} must be '<weight>*<reward model>', e.g. '0.5*vader'")
        weights.append(float(match.group(1)))
        members.append(match.group(2).strip())
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

__all__ = [
    "REWARD_MODELS",
    "REWARD_MODEL_FAMILIES",
    "CallableReward",
    "ClassifierReward",
    "EnsembleReward",
    "PreferenceRewardModel",
    "RewardModel",
    "VaderSentimentReward",
    "bradley_terry_loss",
    "checked_scores",
    "make_reward_model",
    "pair_accuracy",
    "parse_ensemble",
    "register_reward_family",
    "register_reward_model",
    "train_preference_model",
    "valid_forms",
]

"""Any Hugging Face sequence classifier as a reward model (e.g. a sentiment or toxicity classifier).

The score of a text is, for a chosen label ``label`` (name or index):

* ``output="probability"`` (default): softmax(logits)[label] (sigmoid of the logit for 1-logit models);
* ``output="logit"``: logits[label];
* with ``minus_label`` set: logits[label] − logits[minus_label] (the log-odds of label vs minus_label,
  the usual "positive − negative" reward of sentiment RLHF examples).

``text`` chooses what is classified: ``"completion"`` (default), ``"prompt+completion"`` (the concatenated
string, as the env decodes it) or ``"pair"`` (prompt and completion as a tokenizer text pair, for
cross-encoders).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from textenv.models.loading import load_pretrained, locate_model, resolve_device
from textenv.reward_models.base import RewardModel
from textenv.validation import InputError, check_choice, check_int

OUTPUTS = ("probability", "logit")
TEXT_MODES = ("completion", "prompt+completion", "pair")


class ClassifierReward(RewardModel):
    """Score completions with an ``AutoModelForSequenceClassification``.

    Args:
        model: name/path for ``from_pretrained`` or a loaded sequence-classification model.
        tokenizer: name/path or tokenizer object; default: ``model``'s.
        label: the rewarded class, by name (``config.id2label``, case-insensitive) or index; default: the last
            class (index ``num_labels − 1``, "positive" in binary sentiment classifiers).
        minus_label: if given, score = logit[label] − logit[minus_label] (``output`` is then ignored).
        output: ``"probability"`` or ``"logit"``.
        text: ``"completion"``, ``"prompt+completion"`` or ``"pair"``.
        batch_size: texts per forward.
        max_length: longest input in tokens (longer ones are truncated); default: the model's context.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
    """

    def __init__(
        self,
        model: str | os.PathLike | PreTrainedModel,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        label: int | str | None = None,
        minus_label: int | str | None = None,
        output: str = "probability",
        text: str = "completion",
        batch_size: int = 32,
        max_length: int | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        check_choice("classifier output", output, OUTPUTS)
        check_choice("classifier text", text, TEXT_MODES)
        check_int("classifier batch_size", batch_size, minimum=1)
        if max_length is not None:
            check_int("classifier max_length", max_length, minimum=1)
        self.device = resolve_device(device)
        self.model = _load_classifier(model).to(self.device).eval()
        self.model.requires_grad_(False)
        source = tokenizer if tokenizer is not None else (
            model if not isinstance(model, PreTrainedModel) else model.name_or_path
        )
        self.tokenizer = source if isinstance(source, PreTrainedTokenizerBase) else _load_tokenizer(source)
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise InputError("the classifier's tokenizer has neither a pad nor an EOS token; pass a tokenizer "
                                 "with one")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # GPT-2-style classifiers pool at the last non-pad token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self._empty_has_no_tokens = len(self.tokenizer("")["input_ids"]) == 0
        self.num_labels = int(self.model.config.num_labels)
        self.label = self.label_index(label) if label is not None else self.num_labels - 1
        self.minus_label = self.label_index(minus_label) if minus_label is not None else None
        if self.minus_label is not None and self.minus_label == self.label:
            raise InputError(f"classifier label and minus_label are both class {self.label}; choose two different "
                             f"classes of {self.labels}")
        self.output = output
        self.text = text
        self.batch_size = batch_size
        config = self.model.config
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        limits = [v for v in (max_length, context, getattr(self.tokenizer, "model_max_length", None)) if v]
        self.max_length = int(min(limits)) if limits else 512

    @property
    def labels(self) -> list[str]:
        """Class names by index (``config.id2label``)."""
        id2label = self.model.config.id2label or {}
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(self.num_labels)]

    def label_index(self, label: int | str) -> int:
        """Index of ``label`` given by index (int or digit string) or name (case-insensitive)."""
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if not 0 <= label < self.num_labels:
                raise InputError(f"classifier label={label} is out of range: the classifier has {self.num_labels} "
                                 f"classes {self.labels} (give a name or an index 0..{self.num_labels - 1})")
            return int(label)
        if isinstance(label, str):
            names = [name.lower() for name in self.labels]
            if label.lower() in names:
                return names.index(label.lower())
            raise InputError(f"classifier label={label!r} is not a class of this classifier; classes are {self.labels} "
                             "(or an index)")
        raise InputError(f"classifier label must be a class name or index, got {type(label).__name__}")

    @torch.no_grad()
    def logits(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Classifier logits ``(N, num_labels)`` float32 on the CPU."""
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        out = []
        for start in range(0, len(completions), self.batch_size):
            p = list(prompts[start : start + self.batch_size])
            c = list(completions[start : start + self.batch_size])
            if self.text == "completion":
                args: tuple[Any, ...] = ([self._non_empty(x) for x in c],)
            elif self.text == "prompt+completion":
                args = ([self._non_empty(x + y) for x, y in zip(p, c)],)
            else:
                args = (p, c)
            enc = self.tokenizer(*args, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            out.append(self.model(**enc).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.num_labels)

    def _non_empty(self, text: str) -> str:
        """An empty text tokenises to nothing with GPT-2-style tokenizers (no [CLS]/[SEP]): classify the EOS
        (or pad) token instead, as an empty completion is a single EOS in the env."""
        if text or not self._empty_has_no_tokens:
            return text
        return self.tokenizer.eos_token or self.tokenizer.pad_token

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        logits = self.logits(prompts, completions)
        if self.minus_label is not None:
            scores = logits[:, self.label] - logits[:, self.minus_label]
        elif self.output == "logit":
            scores = logits[:, self.label]
        elif self.num_labels == 1:
            scores = torch.sigmoid(logits[:, 0])
        else:
            scores = logits.softmax(dim=-1)[:, self.label]
        return scores.double().numpy()


def _load_classifier(model: str | os.PathLike | PreTrainedModel) -> PreTrainedModel:
    if isinstance(model, PreTrainedModel):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"classifier model must be a name/path or a PreTrainedModel, got {type(model).__name__}")
    return load_pretrained(AutoModelForSequenceClassification, model, "sequence classifier")


def _load_tokenizer(source: str | os.PathLike) -> PreTrainedTokenizerBase:
    path, local_only = locate_model(source, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise InputError(f"could not load the classifier's tokenizer {str(source)!r}: "
                         f"{' '.join(str(err).split())}") from err

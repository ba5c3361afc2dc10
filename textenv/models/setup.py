"""Setting up the models an env runs, in ONE call: policy, tokenizer, dtype, LoRA adapters, dropout off, reference.

    setup = load_models(model="textenv/default", kl_coef=0.05, lora=None, device="cpu")
    setup.policy, setup.tokenizer, setup.reference

Data flows one way: the env calls :func:`load_models` and keeps what it returns; nothing here knows the env. The
reference π_ref is a frozen copy of the policy, the policy with its LoRA adapters disabled (no second copy of the
weights), a model the caller gives, or ``None`` when β = 0 (no KL penalty, no reference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from textenv.fast import resolve_fast, set_model_fast
from textenv.models.loading import (
    DEFAULT_MODEL,
    frozen_copy,
    load_causal_lm,
    load_tokenizer,
    locate_model,
    resolve_device,
)
from textenv.models.lora import AdapterDisabledReference, apply_lora, is_peft_model
from textenv.validation import InputError


@dataclass
class ModelSetup:
    """What :func:`load_models` set up.

    policy: the trainable causal LM π_θ on ``device`` (a peft model with LoRA), dropout off.
    tokenizer: left padding, with a pad token (EOS when it had none).
    reference: the frozen π_ref (no gradients, eval mode), or ``None`` when no KL penalty needs one.
    device: where the policy (and a copied reference) live.
    fast: the switch position of :mod:`textenv.fast`, recorded for the policy and the reference.
    """

    policy: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    reference: torch.nn.Module | None
    device: torch.device
    fast: bool


def check_model_sources(model: str | os.PathLike | torch.nn.Module, tokenizer: Any) -> None:
    """Find the model and tokenizer names or directories before anything loads (:class:`InputError`
    ``"model not found: ..."`` otherwise); loaded objects need no finding."""
    if not isinstance(model, torch.nn.Module):
        locate_model(model, "model")
    if isinstance(tokenizer, (str, os.PathLike)):
        locate_model(tokenizer, "tokenizer")


def load_models(
    model: str | os.PathLike | torch.nn.Module = DEFAULT_MODEL,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
    reference: torch.nn.Module | None = None,
    kl_coef: float = 0.05,
    lora: dict[str, Any] | bool | Any = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "auto",
    fast: bool | None = None,
) -> ModelSetup:
    """Load (or take) the policy and its tokenizer, add LoRA adapters, switch dropout off, and make the reference.

    Args:
        model: a name or ``save_pretrained`` directory (loaded with ``dtype`` and, with ``fast``, the faster
            tanh-GELU: :func:`~textenv.models.loading.load_causal_lm`), or a loaded model, used as it is.
        tokenizer: a name, directory or tokenizer; default: ``model``'s.
        reference: an explicit frozen reference (moved to ``device``); default: a frozen copy of the policy, or
            with ``lora`` the policy with its adapters disabled.
        kl_coef: β; with β = 0 no reference is made (``reference`` is ignored).
        lora: ``True`` or ``peft.LoraConfig`` keyword arguments (or a ``LoraConfig``) to train LoRA adapters.
        dtype: the weights' dtype (``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``). ``None``: a
            model loaded by name loads in float32 (the master weights an optimizer needs; a checkpoint saved in
            bfloat16 too), a loaded model stays as it is.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"``...
        fast: the switch of :mod:`textenv.fast` (``None`` follows ``TEXTENV_FAST``, on by default).
    """
    fast = resolve_fast(fast)
    target = resolve_device(device)
    tokens = resolve_tokenizer(tokenizer, model)
    dtype = resolve_dtype(dtype)
    if isinstance(model, torch.nn.Module):
        policy = model if dtype is None else model.to(dtype)
    else:
        policy = load_causal_lm(model, target, dtype or torch.float32, fast=fast)
    policy.to(target)
    match_vocabulary(policy, tokens, "model")
    if reference is not None:
        match_vocabulary(reference, tokens, "reference")
    if lora:
        policy = apply_lora(policy, lora)
    disable_dropout(policy)
    frozen = _reference(policy, reference, kl_coef, target)
    for module in (policy, frozen):
        if module is not None:
            set_model_fast(module, fast)
    return ModelSetup(policy=policy, tokenizer=tokens, reference=frozen, device=target, fast=fast)


def _reference(
    policy: torch.nn.Module, reference: torch.nn.Module | None, kl_coef: float, device: torch.device
) -> torch.nn.Module | None:
    """π_ref for :func:`load_models`: ``None`` when β = 0, else frozen (eval mode, no gradients)."""
    if kl_coef <= 0:
        return None
    if is_peft_model(policy) and reference is None:
        return AdapterDisabledReference(policy)
    frozen = frozen_copy(policy) if reference is None else reference.to(device).eval()
    frozen.requires_grad_(False)
    return frozen


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 so rollout and update log-probs agree (as TRL does), however the model
    applies it: ``nn.Dropout`` modules, and the probabilities a module keeps as float attributes for
    ``F.dropout(x, p=self.dropout, training=self.training)`` (OPT's ``dropout``, ``attention_dropout``,
    ``activation_dropout``; GPT-2's ``attn_pdrop``...; OPT's ``layerdrop``, which skips whole layers in training), and
    the same fields of every config, so that a module built
    later from it (or the saved checkpoint reloaded) has none either."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
            continue
        for name, value in list(vars(module).items()):
            if _is_dropout_field(name, value):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            _zero_config_dropout(config)


def _is_dropout_field(name: str, value: Any) -> bool:
    """A float attribute that holds a dropout probability (``dropout``, ``attention_dropout``, ``resid_pdrop``...)
    or a probability of skipping a layer in training (OPT's and BART's ``layerdrop``, ``drop_path_rate``)."""
    return (isinstance(value, float) and not isinstance(value, bool) and not name.startswith("_")
            and ("dropout" in name or name.endswith("pdrop") or "layerdrop" in name or name == "drop_path_rate"))


def _zero_config_dropout(config: Any) -> None:
    """Set the dropout probabilities of a transformers config (and its sub-configs) to 0."""
    for name, value in list(vars(config).items()):
        if _is_dropout_field(name, value):
            setattr(config, name, 0.0)
        elif hasattr(value, "to_dict") and value is not config:
            _zero_config_dropout(value)


#: The dtypes ``dtype=`` accepts by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``dtype`` as a ``torch.dtype`` (``None`` stays ``None``); :class:`InputError` for anything but the names of
    :data:`DTYPES` or those dtypes."""
    if dtype is None or dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name in DTYPES:
            return DTYPES[name]
    raise InputError(f"dtype={dtype!r} is not a weight dtype textenv trains in; use one of {sorted(DTYPES)} (or None: "
                     "float32 for a model loaded by name)")


def match_vocabulary(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, argument: str) -> None:
    """Make ``model``'s logits cover exactly the tokenizer's ids, the env's action space ``Discrete(len(tokenizer))``.

    Released checkpoints often pad their embedding past the tokenizer (to a multiple of 64 or 128 rows): the
    extra rows are cut off (``resize_token_embeddings(len(tokenizer))``, in place, on input and output embedding),
    so no id outside the action space is ever sampled and every softmax runs over the tokenizer's ids only. A
    tokenizer with MORE ids than the model's embedding (e.g. a pad token added without resizing the model) cannot
    be run: :class:`InputError` saying how to fix it.
    """
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a transformers model: nothing to match
        return
    if not hasattr(embedding, "num_embeddings"):
        return
    rows, vocab = int(embedding.num_embeddings), len(tokenizer)
    if rows == vocab:
        return
    if rows < vocab:
        raise InputError(
            f"the tokenizer has {vocab} token ids but the {argument}'s embedding only {rows} rows (tokens added to the "
            f"tokenizer, e.g. a pad token, without resizing the model); call model.resize_token_embeddings("
            f"len(tokenizer)) and save the model again, or give the tokenizer the model was trained with"
        )
    model.resize_token_embeddings(vocab, mean_resizing=False)


def resolve_tokenizer(tokenizer: Any, model: Any) -> PreTrainedTokenizerBase:
    """The tokenizer to use: ``tokenizer`` (given with a pad token: EOS when it has none), loaded from its name, or
    ``model``'s (a loaded model's ``config._name_or_path``, else the embedded default's)."""
    if tokenizer is None:
        if isinstance(model, torch.nn.Module):
            source = getattr(model.config, "_name_or_path", "") or DEFAULT_MODEL
            return load_tokenizer(source)
        return load_tokenizer(model)
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        if tokenizer.eos_token_id is None:
            raise InputError("the tokenizer has no EOS token; TextGen episodes end at EOS, so give a tokenizer with an "
                             "eos_token (tokenizer.eos_token = ...)")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return load_tokenizer(tokenizer)


def episode_end_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends an episode: the tokenizer's EOS and each id of the model's generation config's
    ``eos_token_id`` (an int or a list: chat models end a turn with e.g. ``<|im_end|>`` or ``<|eot_id|>`` as well
    as ``<|endoftext|>``), limited to the action space ``[0, len(tokenizer))``; the tokenizer's EOS first."""
    ends = [int(tokenizer.eos_token_id)]
    generation = getattr(model, "generation_config", None)
    configured = getattr(generation, "eos_token_id", None) if generation is not None else None
    if configured is None:
        configured = getattr(getattr(model, "config", None), "eos_token_id", None)
    if isinstance(configured, int):
        configured = [configured]
    for token in configured or []:
        if isinstance(token, int) and 0 <= token < len(tokenizer) and token not in ends:
            ends.append(int(token))
    return ends

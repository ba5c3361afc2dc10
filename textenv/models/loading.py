"""Loading the policy / reference language models and their tokenizer.

Everything goes through ``from_pretrained(name_or_path)``: the embedded default model is a
``save_pretrained`` directory shipped inside the package, so ``model="gpt2"`` (when a hub is
reachable) and ``model="textenv/default"`` take exactly the same code path.

Before anything loads, :func:`locate_model` checks that the name is a local ``save_pretrained`` directory, a
name in the Hugging Face cache, or a name a reachable hub may serve, and :func:`resolve_device` that the device
exists: otherwise one :class:`~textenv.validation.InputError` line ("model not found: ...", "device='cuda' is
not available on this machine ...") instead of a tokenizer detail or a minute of hub retries.
"""

from __future__ import annotations

import copy
import functools
import os
import socket
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from textenv.fast import model_fast, resolve_fast, set_model_fast
from textenv.fast.activations import use_fused_tanh_gelu, use_sigmoid_tanh_gelu
from textenv.validation import InputError

#: Name that resolves to the embedded default model shipped as package data.
DEFAULT_MODEL = "textenv/default"


def default_model_path() -> Path:
    """Directory of the embedded tiny GPT-2 (``save_pretrained`` form, safetensors)."""
    return Path(str(resources.files("textenv") / "assets" / "tiny-reviews-gpt2"))


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map :data:`DEFAULT_MODEL` to the packaged directory; pass every other name through."""
    name = str(name_or_path)
    if name in (DEFAULT_MODEL, "default"):
        return str(default_model_path())
    return name


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, ``"cuda[:N]"``, ``"mps"``... only when that device
    exists here (else :class:`InputError` listing the devices this machine has)."""
    if isinstance(device, torch.device):
        return _available(device, device)
    if not isinstance(device, str):
        raise InputError(f"device={device!r} must be a string such as 'auto', 'cpu' or 'cuda:0'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise InputError(
            f"device={device!r} is not a device name; use 'auto' or one of this machine's devices {available_devices()}"
        ) from None
    return _available(parsed, device)


def available_devices() -> list[str]:
    """Names of the devices torch can use on this machine: ``["cpu", "cuda:0", ..., "mps"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def _available(device: torch.device, given: object) -> torch.device:
    """``device`` if it exists here, else :class:`InputError` (``given`` is what the user wrote)."""
    if device.type == "cpu":
        return device
    if device.type == "cuda" and torch.cuda.is_available():
        if device.index is None or device.index < torch.cuda.device_count():
            return device
    elif device.type == "mps" and "mps" in available_devices():
        return device
    raise InputError(
        f"device={str(given)!r} is not available on this machine (it has {available_devices()}); "
        "use device='auto' (CUDA when present, else CPU) or device='cpu'"
    )


# ---------------------------------------------------------------------------------------------- finding models
def hub_reachable() -> bool:
    """Whether a Hugging Face model hub may be reached: False in offline mode (``HF_HUB_OFFLINE=1``) or when
    its host does not answer a TCP connection within 2 s; True behind a configured proxy (not probed).

    Checked once per process. Loading a name that is neither a local directory nor cached is then refused at
    once, instead of after the hub client's minute of retries.
    """
    if _offline_mode():
        return False
    return _hub_answers()


def _offline_mode() -> bool:
    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags)


@functools.lru_cache(maxsize=1)
def _hub_answers() -> bool:
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    parsed = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout=2.0):
            return True
    except OSError:
        return False


def _in_hub_cache(name: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, filename), str)
    except ValueError:  # not a valid repo id (HFValidationError)
        return False


def _looks_like_path(name: str) -> bool:
    """A name that cannot be a hub repo id (``name`` or ``org/name``): absolute, relative with ``./``, ``~``,
    backslashes or more than one ``/``."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith("/"))


def locate_model(name_or_path: str | os.PathLike, kind: str = "model") -> tuple[str, bool]:
    """Where ``from_pretrained`` should load ``name_or_path`` from, checked before anything loads.

    Returns ``(path_or_name, local_files_only)``: a local ``save_pretrained`` directory (or the embedded
    default), or a hub name that is cached here or may be downloaded (``local_files_only`` is True for a
    cached name when no hub is reachable, so loading does not wait for the hub). ``kind`` is ``"model"``
    (needs ``config.json``) or ``"tokenizer"`` (needs tokenizer files). Anything else: :class:`InputError`
    ``"model not found: ..."``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InputError(f"{kind}={name_or_path!r} must be a model name or a directory path, got "
                         f"{type(name_or_path).__name__}")
    name = resolve_model_path(name_or_path)
    if not name.strip():
        raise InputError(f"{kind}={name!r} is empty; give a local save_pretrained directory or {DEFAULT_MODEL!r}")
    path = Path(name).expanduser()
    if path.is_dir():
        _check_model_dir(path, str(name_or_path), kind)
        return str(path), True
    if path.exists():
        raise InputError(f"{kind}={str(name_or_path)!r} is a file; give the save_pretrained directory that holds it "
                         f"(or {DEFAULT_MODEL!r})")
    if _looks_like_path(name):
        raise InputError(f"{kind} not found: {str(name_or_path)!r} is not an existing directory; give a local "
                         f"save_pretrained directory or {DEFAULT_MODEL!r}")
    reachable = hub_reachable()
    if _in_hub_cache(name, "config.json" if kind == "model" else "tokenizer_config.json"):
        return name, not reachable
    if reachable:
        return name, False
    raise InputError(
        f"{kind} not found: {name!r} (not a local directory; not in the Hugging Face cache; no model hub is "
        f"reachable from this machine). Give a local save_pretrained directory, {DEFAULT_MODEL!r} (the embedded "
        "tiny GPT-2), or a hub name on a machine with access to the hub"
    )


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                    "vocab.txt")


def _check_model_dir(path: Path, given: str, kind: str) -> None:
    if kind == "model" and not (path / "config.json").is_file():
        raise InputError(f"model={given!r} is a directory without config.json, so not a save_pretrained model; "
                         f"give the directory model.save_pretrained() wrote (or {DEFAULT_MODEL!r})")
    if kind == "tokenizer" and not any((path / file).is_file() for file in _TOKENIZER_FILES):
        raise InputError(f"tokenizer={given!r} is a directory without tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
                         "give the directory tokenizer.save_pretrained() wrote, or pass tokenizer=...")


def _load_error(kind: str, name: str, err: Exception) -> InputError:
    return InputError(
        f"could not load the {kind} {name!r}: {err.__class__.__name__}: {' '.join(str(err).split())}. "
        f"Give a complete local save_pretrained directory or {DEFAULT_MODEL!r}"
    )


def load_pretrained(auto_class: Any, name_or_path: str | os.PathLike, what: str = "model", **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(name_or_path, **kwargs)`` from safetensors weights only.

    textenv never unpickles a file it did not write: ``use_safetensors=True`` refuses ``pytorch_model.bin``
    checkpoints (pickle, which can run code when loaded) with an :class:`InputError` that says how to convert
    them. A name that cannot be found, or weights that cannot be read, also raise :class:`InputError` naming
    ``what`` (``"model"``, ``"sequence classifier"``, ``"backbone"``).
    """
    path, local_only = locate_model(name_or_path, "model")
    hf_logging.disable_progress_bar()
    try:
        return auto_class.from_pretrained(path, use_safetensors=True, local_files_only=local_only, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:
        if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
            raise InputError(
                f"{what} {str(name_or_path)!r} has no safetensors weights (only pickle-based files such as "
                "pytorch_model.bin, which can run code when loaded, so textenv does not load them). Convert it once "
                "in a Python you trust: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR) writes "
                "model.safetensors"
            ) from err
        raise _load_error(what, str(name_or_path), err) from err


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """Load a tokenizer, set left padding and make sure it has a pad token (EOS when missing)."""
    path, local_only = locate_model(name_or_path, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise _load_error("tokenizer", str(name_or_path), err) from err
    if tokenizer.eos_token_id is None:
        raise InputError(f"tokenizer {str(name_or_path)!r} has no EOS token; TextGen episodes end at EOS, so give a "
                         "tokenizer with an eos_token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    fast: bool | None = None,
) -> PreTrainedModel:
    """Load a causal LM with ``AutoModelForCausalLM.from_pretrained`` onto ``device``.

    With ``fast`` (the switch of :mod:`textenv.fast`; ``None`` follows ``TEXTENV_FAST``, on by default), the
    tanh-GELU is computed faster, the same function (:mod:`textenv.fast.activations`): a model configured with
    ``activation_function="gelu_new"`` (GPT-2 and its family, the embedded default included) loads with
    ``"gelu_pytorch_tanh"`` (``model.config`` records that choice, so a saved checkpoint loads with the fused kernel
    anywhere), and every tanh-GELU module of the loaded model is then a
    :class:`~textenv.fast.activations.SigmoidTanhGELU`. Without, the model keeps its stock activations. The
    setting is recorded for the model (:func:`textenv.fast.set_model_fast`).

    A name that is not a local directory, not cached and not reachable raises :class:`InputError`
    (``"model not found: ..."``) before anything loads; so does a ``device`` this machine does not have.
    """
    fast = resolve_fast(fast)
    target = resolve_device(device)
    path, local_only = locate_model(name_or_path, "model")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise _load_error("model", str(name_or_path), err) from err
    if fast:
        use_fused_tanh_gelu(config)
    model = load_pretrained(AutoModelForCausalLM, name_or_path, config=config, dtype=dtype)
    if fast:
        use_sigmoid_tanh_gelu(model)
    set_model_fast(model, fast)
    return model.to(target)


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy in eval mode with ``requires_grad=False``: the reference policy π_ref (with the switch position
    recorded for ``model``, :func:`textenv.fast.model_fast`)."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    set_model_fast(reference, model_fast(model))
    return reference

"""CPU speed-ups, each an exact replacement of a plain transformers / PyTorch computation, behind one switch.

The switch
==========
``TEXTENV_FAST=0`` in the environment (``false``, ``no``, ``off`` too), or ``fast=False`` for one env
(``TextGenVectorEnv(fast=False)``, ``gym.make("TextGen-v0", fast=False)``), gives the plain transformers path
everywhere; ``fast=None`` (the default) follows ``TEXTENV_FAST``, which is on unless set to one of those values.
The plain path is what a reader of the transformers docs would write:

- every forward is ``model(input_ids, attention_mask, position_ids)`` over the left-padded rows (the position ids
  count the unmasked tokens, as ``generate`` does for left padding): the prompt prefill, the agents' update
  forward, the lazy reference's scoring;
- log-probs and entropies are ``F.log_softmax`` + ``gather`` (:mod:`textenv.logprobs`);
- models keep their stock activations (no :class:`~textenv.fast.activations.SigmoidTanhGELU` swap, no
  ``gelu_new`` → ``gelu_pytorch_tanh`` config rewrite).

The env records its setting on the policy and the reference it loads (:func:`set_model_fast`), so the agents'
update forward (:func:`textenv.scoring.score_rollout`) and the SFT, DPO and PPO-ptx log-probs (which pass
``fast=model_fast(policy)``) follow the env without being told; so does a policy given later with
``env.set_policy``. Only models textenv did not set up follow ``TEXTENV_FAST``.
Both positions give the same numbers to float32 rounding (``tests/test_fast_switch.py``: GPT-2, Llama and a
sliding-window Mistral; log-probs, KL, entropies and gradients within 1e-5).

The speed-ups (measured on the embedded model, one CPU thread; CHANGELOG.md, version 0.1.0, has each measurement)
==================================================================================================================
1. **Packed prompt prefill** (:mod:`textenv.fast.prefill`): the prompts run packed, no compute on left padding
   (about half of a batch of the built-in prompts), and each token's KV entries are copied to its cache slot.
   ``env.reset()`` with 64 built-in prompts: 121 → 72 ms.
2. **Packed scoring** (:mod:`textenv.fast.packing`): the update forward and the lazy reference run every live
   token once, with the LM head only on the states that predict a scored token: a left-padded batch spends about
   a quarter of its trunk on padding and its vocabulary-sized work on every state. A rollout of 64 × 24 tokens
   (lazy reference) 0.87 → 0.65 s; rows packed first-fit decreasing, one ppo-1pass iteration 1.56 → 1.49 s.
3. **Episode attention** (:mod:`textenv.fast.attention`): in the packed update forward, attention per episode
   (causal SDPA on a right-padded batch of episodes, no mask) instead of rows of several episodes, which left
   10-15 % of the trunk's slots empty. One ppo-1pass iteration: −5.3 % (median of 12 alternating pairs).
4. **Fused and sigmoid-form tanh-GELU** (:mod:`textenv.fast.activations`): ``gelu_new`` (eight element-wise
   ops) loads as ``gelu_pytorch_tanh`` (one fused kernel): the update's forward + backward 0.78 → 0.60 s, a
   decoding step 16.7 → 14.0 ms. Then x·σ(2u) instead of the fused tanh, because PyTorch's CPU ``tanh`` is
   about 3.5× slower than its ``sigmoid``: 2146 × 768 without grad 6.1 → 4.0 ms, forward + backward 12.8 →
   10.3 ms, a decoding step's activation 0.17 → 0.09 ms.
5. **Chunked log-probs with a hand-written backward** (:mod:`textenv.fast.logprobs`): the plain log-softmax /
   exp / gather path writes six vocabulary-sized tensors per update (22 MB each at 64 × 24 actions), about 15 %
   of the update's forward + backward; chunks of 1 MiB keep them in cache. Update forward + backward: median
   0.635 → 0.580 s.

Each packed path runs only where it was checked: the first call per model compares it with the plain forward (in
eval mode) and keeps it only if they agree; a model that cannot take it (the exceptions listed in
:data:`textenv.fast.fallback.MODEL_CANNOT_PACK`) gets the plain forward and one warning. Nothing is registered with
transformers at import time: the episode attention function is registered on its first use.

Not behind the switch (they are how the engine works, not replacements of a transformers computation): the
static KV caches, the lazy reference (one scoring forward when rows finish instead of one forward per step), the
in-place autoreset of finished rows, PPO's V_old from the rollout's hidden states, and the two-level inverse-CDF
sampler of :func:`textenv.rollout.sample_actions` (64 × 4096 logits 4.5 → 0.9 ms). The sampler defines which
token a seed draws (exact in distribution, tested in ``tests/test_sampling.py``); a plain ``torch.multinomial``
would draw other tokens for the same seed, so the two positions of the switch could no longer be compared run for
run.
"""

from __future__ import annotations

import os
import weakref

import torch

from textenv.validation import InputError

#: The environment variable of the switch.
FAST_VARIABLE = "TEXTENV_FAST"
_OFF = ("0", "false", "no", "off")
_ON = ("", "1", "true", "yes", "on")
#: The setting the models layer recorded for each model it set up: model -> fast.
_MODEL_FAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_from_environment() -> bool:
    """``TEXTENV_FAST``: False for ``0``/``false``/``no``/``off``, True when unset or ``1``/``true``/``yes``/``on``
    (any case); anything else is an :class:`InputError`."""
    value = os.environ.get(FAST_VARIABLE, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise InputError(f"{FAST_VARIABLE}={os.environ[FAST_VARIABLE]!r} is not a switch position; set it to 0 (the "
                     "plain transformers path) or 1 (textenv's CPU speed-ups, the default), or unset it")


def resolve_fast(fast: bool | None) -> bool:
    """``fast`` itself, or for ``None`` the ``TEXTENV_FAST`` setting (:func:`fast_from_environment`)."""
    if fast is None:
        return fast_from_environment()
    if not isinstance(fast, bool):
        raise InputError(f"fast={fast!r} must be True (textenv's CPU speed-ups), False (the plain transformers path) "
                         f"or None (follow {FAST_VARIABLE}, on by default)")
    return fast


def set_model_fast(model: torch.nn.Module, fast: bool) -> None:
    """Record the switch position for ``model`` (what the models layer set it up with), so that functions given
    only the model (the agents' update forward) follow it."""
    _MODEL_FAST[model] = fast


def model_fast(model: torch.nn.Module) -> bool:
    """The switch position recorded for ``model`` by :func:`set_model_fast`, else ``TEXTENV_FAST``'s."""
    recorded = _MODEL_FAST.get(model)
    return fast_from_environment() if recorded is None else recorded

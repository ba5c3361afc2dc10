"""The one optimizer step every native agent takes, guarded against NaN and ±inf.

:func:`gradient_step` is ``zero_grad → backward → clip_grad_norm_ → step`` (the same operations in the same
order as a hand-written step, so seeded runs are unchanged) with three checks:

1. the loss is finite, before ``backward``;
2. the gradient norm is finite, before ``step`` (and before clipping, which would spread a NaN to every
   gradient), naming the first parameter whose gradient is not;
3. the parameters are finite after ``step`` (Adam with a huge learning rate can overflow them).

Under torchrun the gradients are averaged over ranks right after ``backward``
(:func:`textenv.distributed.average_gradients`): every rank then clips and steps with the same gradient, so the
weights stay bit-identical on all ranks. This one guarded step is where every native agent's update goes
through, so data parallelism lives here rather than in per-agent ``DistributedDataParallel`` wrappers (the env
and the agents call the policy through several forwards: the cached rollout forward, the scoring forward, the
reference with LoRA adapters off).

With ``autocast_dtype="float16"`` the agent holds a loss scaler (``trainer.grad_scaler``, a
``torch.amp.GradScaler``; Micikevicius et al. 2018, "Mixed Precision Training", §3.2): each loss part's backward
runs on the loss times the scale S, so small float16 gradients do not underflow; the gradients are divided by S
before they are checked and clipped; a step whose gradient overflowed is skipped and S halved (instead of a
:class:`TrainingDivergedError`: an overflow is how the scaler finds S), and S doubles after 2000 clean steps.

A failed check raises :class:`TrainingDivergedError`. Checks 1 and 2 fire before the optimizer steps, so the
weights in memory are exactly those from before the step; all three fire inside ``train_iteration``, before
``Agent.learn`` writes a checkpoint, so the last checkpoint on disk stays as it was.
:func:`check_finite` refuses non-finite rewards / returns / advantages before they reach a loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from textenv import distributed
from textenv.distributed import average_gradients


class TrainingDivergedError(RuntimeError):
    """Training produced NaN or ±inf (loss, gradient, rewards, advantages or weights) and was stopped.

    The message names the agent, the iteration, the non-finite quantity and the likely cause with its fix.
    ``user_facing``: the ``textenv`` CLI prints it as one line, like an ``InputError``.
    """

    user_facing = True


class Trainer(Protocol):
    """What the error message needs from the object being trained (every ``Agent`` is one).

    A trainer may also have ``update_precision()``, the context each loss part's forward runs in (the agents':
    autocast when ``autocast_dtype`` is set); without it the forward runs as is.
    """

    name: str
    iterations: int  # completed iterations; the failing one is iterations + 1
    learning_rate: float


#: What the error says about the model's weights, by where the check fired.
WEIGHTS_UNCHANGED = ("No update was applied: the weights in memory and any checkpoint saved before are as "
                     "they were.")
WEIGHTS_DAMAGED = ("The weights in memory are no longer usable; any checkpoint saved before is as it was: "
                   "resume from it with the fix below.")


def diverged(
    trainer: Trainer,
    problem: str,
    weights: str = WEIGHTS_UNCHANGED,
    max_grad_norm: float | None = None,
    rewards: np.ndarray | None = None,
    rewards_label: str = "reward-model scores",
) -> TrainingDivergedError:
    """The error for ``problem`` (e.g. ``"the loss is nan"``) at ``trainer``'s current iteration.

    ``rewards`` (any shape) are quoted as a range, the usual suspect besides the learning rate.
    """
    cause = f"learning_rate={trainer.learning_rate:g} is too high"
    fix = "lower learning_rate (e.g. 10x)"
    if rewards is not None and np.size(rewards):
        values = np.asarray(rewards, dtype=np.float64)
        cause += (f", or the reward scale is too large ({rewards_label} of this rollout span "
                  f"[{np.min(values):.3g}, {np.max(values):.3g}])")
        fix += ", scale the rewards down (to about [-10, 10]) or normalise them"
    fix += (", and set max_grad_norm (e.g. 1.0)" if max_grad_norm is None
            else f", and keep the gradient clipped (max_grad_norm={max_grad_norm:g})")
    return TrainingDivergedError(
        f"{trainer.name}: training diverged at iteration {trainer.iterations + 1}: {problem}. {weights} "
        f"Likely cause: {cause}. Fix: {fix}."
    )


def check_finite(
    trainer: Trainer,
    quantity: str,
    values: np.ndarray | torch.Tensor,
    max_grad_norm: float | None = None,
    rewards: np.ndarray | None = None,
) -> None:
    """Refuse non-finite ``values`` (e.g. ``quantity="advantages"``) before they reach a loss."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    bad = ~np.isfinite(array)
    if bad.any():
        raise diverged(trainer, f"{int(bad.sum())} of {bad.size} {quantity} are non-finite (first: "
                       f"{array[bad].flat[0]})", max_grad_norm=max_grad_norm, rewards=rewards)


#: The float16 loss scale below which a non-finite gradient is a divergence, not an overflow: at S < 1 the gradients
#: themselves exceed float16's range (65504) or are NaN; halving further would skip every step silently.
MIN_LOSS_SCALE = 1.0


#: One micro-batch's share of a loss: a closure running its forward and returning its part of the scalar loss,
#: already scaled so the parts sum to the full batch's loss (``None``: skip the step, see
#: :func:`accumulate_gradients`).
LossPart = Callable[[], "torch.Tensor | None"]


def micro_batches(rows: torch.Tensor, micro_batch_size: int | None) -> list[torch.Tensor]:
    """The episode indices ``rows`` ``(N,)`` in consecutive chunks of at most ``micro_batch_size`` (``None``: one
    chunk, the whole batch): the forward/backward units of one optimizer step."""
    if micro_batch_size is None or micro_batch_size >= len(rows):
        return [rows]
    return list(rows.split(micro_batch_size))


def share(loss: torch.Tensor, part: float, whole: float) -> torch.Tensor:
    """``loss`` of a micro-batch weighted by its share ``part / whole`` of the batch (episodes or tokens), so
    the shares of a batch's mean losses sum to the batch's mean loss; the whole batch is returned untouched."""
    return loss if part == whole else loss * (part / max(whole, 1))


def accumulate_gradients(
    trainer: Trainer,
    parts: torch.Tensor | Sequence[LossPart],
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float | None,
    rewards: np.ndarray | None = None,
) -> torch.Tensor | None:
    """``zero_grad`` then ``backward`` of each loss part (one forward at a time, so only one micro-batch's
    activations are alive); the gradients sum to those of the full batch's loss. Each part's forward runs in
    ``trainer.update_precision()`` when the trainer has it (autocast; the weights, their gradients and the
    optimizer state stay in the weights' dtype).

    ``parts``: a scalar loss with a graph, or :data:`LossPart` closures run in order. A closure returning ``None``
    (only the first may: nothing has been accumulated yet) skips the step: the result is then ``None``.
    Returns the total loss, detached. Raises :class:`TrainingDivergedError` on a non-finite part, before its
    ``backward`` (no optimizer step has been taken).
    """
    optimizer.zero_grad(set_to_none=True)
    precision = getattr(trainer, "update_precision", contextlib.nullcontext)
    total: torch.Tensor | None = None
    for part in ([lambda: parts] if isinstance(parts, torch.Tensor) else parts):
        with precision():  # the forward only; the backward runs each op in the dtype of its forward
            loss = part()
        if loss is None:
            if total is not None:
                raise RuntimeError("only the first loss part may skip the step")
            return None
        if not bool(torch.isfinite(loss.detach()).all()):
            raise diverged(trainer, f"the loss is {loss.detach().float().item()}", max_grad_norm=max_grad_norm,
                           rewards=rewards)
        scaler = getattr(trainer, "grad_scaler", None)
        (loss if scaler is None else scaler.scale(loss)).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


def apply_gradients(
    trainer: Trainer,
    optimizer: torch.optim.Optimizer,
    modules: Mapping[str, nn.Module],
    max_grad_norm: float | None,
    rewards: np.ndarray | None = None,
) -> None:
    """Average the accumulated gradients over ranks, check them, clip them and step (see :func:`gradient_step`)."""
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    if any(distributed.is_sharded(p) for p in stepped):  # FSDP2 (the modules may show their gathered copies)
        _apply_sharded_gradients(trainer, optimizer, modules, stepped, max_grad_norm, rewards)
        return
    parameters = [p for module in modules.values() for p in module.parameters()]
    average_gradients(parameters)  # data-parallel (torchrun): the mean over ranks; no-op in one process
    scaler = getattr(trainer, "grad_scaler", None)
    if scaler is not None:
        scaler.unscale_(optimizer)  # the gradients / S (the same on every rank: they were averaged)
    grads = [p.grad for p in parameters if p.grad is not None]
    # clip_grad_norm_ is exactly get_total_norm + clip_grads_with_norm_; split so a NaN is seen before the
    # clipping multiplies every gradient by it.
    total_norm = torch.nn.utils.get_total_norm(grads) if max_grad_norm is not None else None
    if not (all_finite(grads) if total_norm is None else bool(torch.isfinite(total_norm))):
        if scaler is not None:  # a float16 overflow: skip this step and halve the scale
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() >= MIN_LOSS_SCALE:
                return
            problem = f"the gradient stays non-finite with the float16 loss scale down to {scaler.get_scale():g}"
            raise diverged(trainer, problem, max_grad_norm=max_grad_norm, rewards=rewards)
        where = first_nonfinite(modules, gradients=True)
        problem = (f"the gradient is non-finite (first at {where})" if where
                   else "the gradient norm overflows float32 (gradients above ~1e19)")
        raise diverged(trainer, problem, max_grad_norm=max_grad_norm, rewards=rewards)
    if total_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_grad_norm, total_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    if not all_finite(parameters):
        where = first_nonfinite(modules, gradients=False)
        raise diverged(trainer, f"the update made the weights non-finite (first: {where})", WEIGHTS_DAMAGED,
                       max_grad_norm=max_grad_norm, rewards=rewards)


def _apply_sharded_gradients(
    trainer: Trainer,
    optimizer: torch.optim.Optimizer,
    modules: Mapping[str, nn.Module],
    parameters: list[torch.Tensor],
    max_grad_norm: float | None,
    rewards: np.ndarray | None,
) -> None:
    """:func:`apply_gradients` when some of the optimizer's ``parameters`` are FSDP2 shards (their gradients
    reduce-scattered, i.e. averaged, by the backward): the other gradients averaged over ranks, the same checks,
    clip and step with the gradient norm over all ranks' shards (so every rank decides alike), then the stepped
    shards gathered again for the rollout."""
    average_gradients(parameters)  # the replicated ones (a value head); shards are skipped
    grads = [p.grad for p in parameters if p.grad is not None]
    total_norm = distributed.sharded_gradient_norm(grads)
    if not bool(torch.isfinite(total_norm)):
        raise diverged(trainer, "the gradient is non-finite", max_grad_norm=max_grad_norm, rewards=rewards)
    if max_grad_norm is not None:
        coefficient = min(max_grad_norm / (float(total_norm) + 1e-6), 1.0)  # clip_grads_with_norm_'s
        for g in grads:
            distributed.local_tensor(g).mul_(coefficient)
    optimizer.step()
    local = [distributed.local_tensor(p.detach()) for p in parameters]
    if distributed.any_rank(not all_finite(local)):
        raise diverged(trainer, "the update made the weights non-finite", WEIGHTS_DAMAGED,
                       max_grad_norm=max_grad_norm, rewards=rewards)
    for module in modules.values():
        distributed.gather_sharded(module)


def gradient_step(
    trainer: Trainer,
    loss: torch.Tensor | Sequence[LossPart],
    optimizer: torch.optim.Optimizer,
    modules: Mapping[str, nn.Module],
    max_grad_norm: float | None,
    rewards: np.ndarray | None = None,
) -> torch.Tensor | None:
    """One guarded update: minimise the scalar ``loss`` over the parameters of ``modules`` with ``optimizer``.

    Args:
        trainer: the agent (named in the error).
        loss: scalar tensor with a graph, or the :data:`LossPart` closures of its micro-batches (gradient
            accumulation: one forward/backward per part, then one step; see :func:`micro_batches`, :func:`share`).
        optimizer: steps the parameters of ``modules``.
        modules: trained modules by name (``{"policy": ..., "value_head": ...}``); their parameters, in this
            order, are the ones whose gradient norm is clipped (names prefix parameter names in the error).
        max_grad_norm: clip the global L2 gradient norm to this (``None``: no clipping).
        rewards: this rollout's rewards, quoted in the error's likely cause.

    Returns:
        The loss, detached (the sum of the parts); ``None`` if the first part skipped the step.

    Raises:
        TrainingDivergedError: non-finite loss or gradient (nothing stepped), or non-finite parameters after
            the step.
    """
    total = accumulate_gradients(trainer, loss, optimizer, max_grad_norm, rewards)
    if total is not None:
        apply_gradients(trainer, optimizer, modules, max_grad_norm, rewards)
    return total


@torch.no_grad()
def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Every element of every tensor is finite (one device sync in the common case)."""
    tensors = [t.detach() for t in tensors]
    if not tensors or bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors))):
        return True  # one fused L2 norm: finite iff no NaN/inf, unless the squares overflow (|x| > ~1e19)
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def first_nonfinite(modules: Mapping[str, nn.Module], gradients: bool) -> str | None:
    """``"<module>.<parameter>"`` of the first parameter (or its gradient) holding a NaN or ±inf; ``None`` if
    every one is finite."""
    for module_name, module in modules.items():
        for name, parameter in module.named_parameters():
            tensor = parameter.grad if gradients else parameter
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                return f"{module_name}.{name}"
    return None

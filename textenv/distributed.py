"""Data-parallel training on ``torch.distributed``: process group, ranks, and the few collectives the agents use.

``torchrun --nproc-per-node N -m textenv train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_from_environment` joins them into one process
group (gloo on CPU, NCCL when CUDA is available, chosen automatically). Without those variables nothing is
initialised and every helper here is the identity (world size 1, rank 0): a single-process run executes exactly
the operations it did before, so seeded runs stay bit-identical.

Under N processes each rank runs its own env rows with the seed ``seed + rank`` (:func:`rank_seed`); the gradients
of every optimizer step are averaged over ranks (:func:`average_gradients`, one all-reduce per dtype, called by
the guarded step in :mod:`textenv.agents.gradient_step`), so all ranks take the same step and keep bit-identical
weights; β of the adaptive KL controller and the logged metrics are averaged (:func:`mean_metrics`,
:func:`synchronise_kl_controller`) and token counts summed (:func:`sum_int`), so all ranks agree. Per-rank
state (random streams, samplers) reaches rank 0 for its checkpoint through :func:`gather_state`, as JSON +
safetensors bytes (nothing pickled). Only torch.distributed collectives are used: no collective code of our own.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import torch
from safetensors.torch import load as load_tensor_bytes
from safetensors.torch import save as save_tensor_bytes

from textenv.checkpoint import decode_state, encode_state

#: Environment variables torchrun (and ``torch.distributed.launch``) set in every worker.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def launched_by_torchrun() -> bool:
    """Whether this process is a worker of a distributed launcher (its variables are all set)."""
    return all(name in os.environ for name in LAUNCHER_VARIABLES)


def backend() -> str:
    """The backend :func:`init_from_environment` picks: ``"nccl"`` when CUDA is available, else ``"gloo"``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_environment(timeout_minutes: float = 30.0) -> bool:
    """Join the process group described by torchrun's variables (no-op without them or when already joined).

    With NCCL the process uses the GPU ``LOCAL_RANK``. Returns whether a process group is now initialised.
    """
    if _initialised():
        return True
    if not launched_by_torchrun():
        return False
    chosen = backend()
    if chosen == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(chosen, timeout=timedelta(minutes=timeout_minutes))
    return True


def shutdown(wait: bool = True) -> None:
    """Leave the process group (no-op when none is initialised).

    With ``wait`` every rank first reaches a barrier, so no rank tears its connections down while another still
    uses them (gloo aborts a process whose peer closed a connection under it); after an error, ``wait=False``
    leaves at once (the launcher stops the other ranks).
    """
    if _initialised():
        if wait and world_size() > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def world_size() -> int:
    """Number of processes training together (1 without torch.distributed)."""
    return torch.distributed.get_world_size() if _initialised() else 1


def rank() -> int:
    """This process's rank in ``[0, world_size)`` (0 without torch.distributed)."""
    return torch.distributed.get_rank() if _initialised() else 0


def is_main_process() -> bool:
    """Rank 0: the one process that writes files (TensorBoard, checkpoints, summary.json) and shows progress."""
    return rank() == 0


def rank_seed(seed: int | None) -> int | None:
    """``seed + rank``: each rank's own random streams (env rows, prompts, sampling); ``None`` stays ``None``."""
    return None if seed is None else seed + rank()


def _device() -> torch.device:
    """Where collective buffers live: the current GPU with NCCL, else the CPU."""
    if _initialised() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank reaches this point (no-op in one process)."""
    if world_size() > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------- reductions
def _all_reduce_scalar(value: float, dtype: torch.dtype, op: Any) -> float:
    """``value`` reduced over ranks with ``op`` (a ``torch.distributed.ReduceOp``), as a one-element tensor."""
    tensor = torch.tensor([value], dtype=dtype, device=_device())
    torch.distributed.all_reduce(tensor, op=op)
    return tensor.item()


def sum_int(value: int) -> int:
    """Σ over ranks of an integer (e.g. tokens generated this iteration: the global count)."""
    if world_size() == 1:
        return value
    return int(_all_reduce_scalar(value, torch.int64, torch.distributed.ReduceOp.SUM))


def max_float(value: float) -> float:
    """max over ranks of a float (e.g. the slowest rank's seconds)."""
    if world_size() == 1:
        return value
    return float(_all_reduce_scalar(value, torch.float64, torch.distributed.ReduceOp.MAX))


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (e.g. a Ctrl-C seen by one process)."""
    return max_float(1.0 if flag else 0.0) > 0 if world_size() > 1 else flag


def mean_float(value: float) -> float:
    """Mean over ranks of a float, identical on every rank (e.g. PPO's approximate KL before early stopping)."""
    if world_size() == 1:
        return value
    return mean_metrics({"value": value})["value"]


def mean_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Every value averaged over ranks (float64, one all-reduce), so all ranks log and decide the same.

    Every rank must pass the same keys (they are sorted, so their order does not matter); a rank whose keys
    differ is a bug in the caller and raises ``RuntimeError`` instead of mixing up values.
    """
    if world_size() == 1:
        return dict(metrics)
    keys = sorted(metrics)
    signature = sum_int(hash_keys(keys))
    if signature != hash_keys(keys) * world_size():
        raise RuntimeError(f"ranks logged different metric names; rank {rank()} has {keys}")
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    values /= world_size()
    return dict(zip(keys, values.tolist()))


def hash_keys(keys: Iterable[str]) -> int:
    """A stable (process-independent) 40-bit fingerprint of a list of names."""
    import hashlib

    return int.from_bytes(hashlib.sha256("\n".join(keys).encode()).digest()[:5], "big")


def synchronise_kl_controller(env: Any) -> None:
    """Average β of ``env``'s KL controller over ranks (its window stays per rank).

    Each rank updated β from its own rollout's KL; the adaptive update is linear in its clipped error, so the mean
    is the update by the ranks' mean clipped error. A fixed β is the same on every rank and stays exactly as it is.
    """
    if world_size() == 1:
        return
    state = env.kl_controller_state()
    state["kl_coef"] = mean_float(float(state["kl_coef"]))
    env.load_kl_controller_state(state)


# ---------------------------------------------------------------------------------------------- parameters
@torch.no_grad()
def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every trainable parameter's gradient by its mean over ranks (one all-reduce per dtype and device).

    A parameter without a gradient on this rank contributes zeros (another rank may have one), so after this call
    every trainable parameter has the same gradient on every rank. No-op in one process.
    """
    if world_size() == 1:
        return
    trainable = [p for p in parameters if p.requires_grad and not is_sharded(p)]  # FSDP averages its own
    for p in trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in trainable:
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat /= world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()


@torch.no_grad()
def broadcast_modules(modules: Iterable[torch.nn.Module]) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``modules`` (the start of data-parallel training).

    FSDP2 shards are left as they are: each rank cut its shard from the same checkpoint's weights."""
    if world_size() == 1:
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if not is_sharded(tensor):
                torch.distributed.broadcast(tensor.data, src=0)


# ---------------------------------------------------------------------------------------------- state
def _all_gather_bytes(payload: bytes) -> list[bytes]:
    """Every rank's ``payload``, in rank order (two all-gathers: the lengths, then the padded bytes)."""
    device = _device()
    length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world_size())]
    torch.distributed.all_gather(lengths, length)
    width = max(int(n.item()) for n in lengths)
    buffer = torch.zeros(width, dtype=torch.uint8, device=device)
    if payload:
        buffer[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    buffers = [torch.zeros_like(buffer) for _ in range(world_size())]
    torch.distributed.all_gather(buffers, buffer)
    return [bytes(b[: int(n.item())].cpu().numpy().tobytes()) for b, n in zip(buffers, lengths)]


def gather_state(state: Any) -> list[Any]:
    """Every rank's ``state`` (what :func:`textenv.checkpoint.encode_state` stores: dicts, lists, numbers, str,
    tensors, NumPy arrays), in rank order, on every rank. Sent as JSON + safetensors bytes: nothing is pickled."""
    if world_size() == 1:
        return [state]
    structure, tensors = encode_state(state)
    header = json.dumps(structure).encode("utf-8")
    blob = save_tensor_bytes({k: v.contiguous() for k, v in tensors.items()}) if tensors else b""
    payload = len(header).to_bytes(8, "big") + header + blob
    states = []
    for item in _all_gather_bytes(payload):
        size = int.from_bytes(item[:8], "big")
        their_structure = json.loads(item[8: 8 + size].decode("utf-8"))
        their_tensors = load_tensor_bytes(item[8 + size:]) if len(item) > 8 + size else {}
        states.append(decode_state(their_structure, their_tensors, "a rank's training state"))
    return states


# ---------------------------------------------------------------------------------------------- FSDP2
def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor: a parameter (or its gradient) sharded over ranks by FSDP2."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's transformer blocks: its largest ``nn.ModuleList`` (``transformer.h``, ``model.layers``...)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of transformer blocks to shard")
    return max(lists, key=lambda blocks: sum(p.numel() for p in blocks.parameters()))


def fully_shard_model(model: torch.nn.Module) -> None:
    """Shard ``model``'s parameters, gradients and optimizer state over the ranks with FSDP2 (``fully_shard`` on
    each transformer block, then on the model). Build the optimizer after this call: it steps on the shards.

    The blocks keep their gathered parameters after a forward (``reshard_after_forward=False``): the env's rollout
    makes a different number of forwards on each rank (its episodes end at different steps), and only the first
    may trigger collectives. The backward reduce-scatters the gradients (their mean over ranks) and frees the
    gathered parameters; the optimizer steps on the shards; :func:`gather_sharded` then gathers them again.
    """
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model):
        fully_shard(block, reshard_after_forward=False)
    fully_shard(model, reshard_after_forward=False)


def gather_sharded(module: torch.nn.Module) -> None:
    """All-gather the stepped shards of every FSDP2 unit in ``module`` afresh (every rank calls it the same number
    of times: after each optimizer step), so forwards need no collective until the next backward."""
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()  # a unit still gathered (the root keeps its parameters through the backward) is stale
            unit.unshard()


@torch.no_grad()
def sharded_gradient_norm(gradients: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of gradients some of which are FSDP2 shards (DTensors): the squares of the shards summed
    over ranks, plus those of the replicated gradients (the same on every rank, counted once). Identical on all
    ranks. float32 scalar."""
    sharded = torch.zeros((), dtype=torch.float32, device=_device())
    replicated = torch.zeros((), dtype=torch.float32, device=_device())
    for g in gradients:
        if is_sharded(g):
            sharded += g.to_local().float().pow(2).sum().to(sharded.device)
        else:
            replicated += g.float().pow(2).sum().to(replicated.device)
    if world_size() > 1:
        torch.distributed.all_reduce(sharded, op=torch.distributed.ReduceOp.SUM)
    return (sharded + replicated).sqrt()


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: in-place changes reach the DTensor), else the tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


# ---------------------------------------------------------------------------------------------- FSDP2 checkpoints
@contextlib.contextmanager
def _sharded_view(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Within the block the FSDP2 units of ``modules`` hold only their shards (their parameters are the DTensors
    the optimizer steps, as ``torch.distributed.checkpoint.state_dict`` expects: gathered units show plain
    tensors); afterwards they are gathered again for the rollout (:func:`gather_sharded`, a collective)."""
    from torch.distributed.fsdp import FSDPModule

    modules = list(modules)
    for module in modules:
        for unit in module.modules():
            if isinstance(unit, FSDPModule):
                unit.reshard()
    try:
        yield
    finally:
        for module in modules:
            gather_sharded(module)


def _full_state_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of an FSDP2-sharded ``model``, on the CPU of rank 0 (the other ranks get
    ``{}``). A collective: every rank must call it (``torch.distributed.checkpoint.state_dict``)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    with _sharded_view([model]):
        return get_model_state_dict(model, options=_full_state_options(cpu_offload=True))


def load_full_model_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a whole (unsharded) state dict, read by every rank, into the FSDP2-sharded ``model`` (each rank keeps
    its shard), then gather the shards for the next rollout (:func:`gather_sharded`). A collective."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    with _sharded_view([model]):
        set_model_state_dict(model, dict(state), options=_full_state_options())


def full_optimizer_state(modules: Mapping[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state of ``optimizer`` (which steps the parameters of ``modules``, some FSDP2-sharded),
    keyed by parameter name (``"policy.transformer.h.0.attn.c_attn.weight"``), on the CPU of rank 0 (the other
    ranks get ``{}``). A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    root = torch.nn.ModuleDict(dict(modules))
    with _sharded_view([root]):
        return get_optimizer_state_dict(root, optimizer, options=_full_state_options(cpu_offload=True))


def load_full_optimizer_state(modules: Mapping[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                              state: Mapping[str, Any]) -> None:
    """Inverse of :func:`full_optimizer_state`: every rank passes the whole state and keeps its shard of it."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    root = torch.nn.ModuleDict(dict(modules))
    with _sharded_view([root]):
        set_optimizer_state_dict(root, optimizer, dict(state), options=_full_state_options())

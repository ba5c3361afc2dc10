"""Big-model memory options of the native agents' update (issue 13): micro-batching (gradient accumulation).

``micro_batch_size`` splits each (mini)batch into forwards/backwards of at most that many episodes (examples,
preference pairs); the gradients are summed and one optimizer step is taken, so the weights after an iteration
equal those of the whole batch at once (up to float32 summation order).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from textenv.agents import make_agent
from textenv.agents.config import NativeConfig
from textenv.agents.gradient_step import gradient_step, micro_batches, share
from textenv.rollout import collect_rollout
from textenv.scoring import score_rollout
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["the film was", "i liked the pasta at the", "the book", "this blender"]
PAIRS = [{"prompt": "the film", "chosen": " was good", "rejected": " was bad"},
         {"prompt": "i liked", "chosen": " the pasta a lot", "rejected": " nothing"},
         {"prompt": "the book", "chosen": " is long", "rejected": " is"}] * 2
DEMONSTRATIONS = [("the film", " was good"), ("i liked", " the pasta at the place"), ("this", " blender")] * 2

#: name -> (group_size, hyper-parameters): minibatches and epochs where the agent has them, every loss term on.
AGENTS = {
    "reinforce": (1, {}),
    "remax": (1, {}),
    "ppo": (1, {"num_minibatches": 2, "ent_coef": 0.01, "target_kl": 10.0}),
    "rloo": (4, {"num_minibatches": 2}),
    "grpo": (4, {"num_minibatches": 2, "beta": 0.1}),
    "sft": (1, {"demonstrations": DEMONSTRATIONS, "batch_size": 6}),
    "dpo": (1, {"preferences": PAIRS, "batch_size": 4}),
}


def reward(prompts: list[str], completions: list[str]) -> list[float]:
    """A dense reward, so every episode's advantage differs."""
    return [completion.count(" the") + 0.05 * len(completion) for completion in completions]


@pytest.fixture(scope="module")
def tiny_llama_dir(tiny_model_dir, tmp_path_factory):
    """A tiny random Llama (RoPE, RMSNorm, GQA) with the tiny GPT-2's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=96, eos_token_id=eos, bos_token_id=eos, pad_token_id=eos))
    directory = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def trained(model_dir, name: str, loss_scale: float | None = None, **config) -> tuple[nn.Module, dict[str, float]]:
    """The policy after one iteration of agent ``name`` (seed 0) on 8 episodes, and the iteration's metrics
    (``loss_scale``: float16's initial loss scale instead of torch's 65536)."""
    group_size, hparams = AGENTS[name]
    env = TextGenVectorEnv(num_envs=8, model=str(model_dir), kl_coef=0.05, group_size=group_size,
                           reward_model=reward, prompts=PROMPTS, max_new_tokens=8, autoreset_mode="disabled",
                           device="cpu")
    # A small step and no clipping: Adam's first step is ~lr·sign(g), so weights within 1e-6 need lr ~1e-5; the
    # gradients left in .grad (the last minibatch's) are compared too, since Adam would hide a mis-scaled loss.
    agent = make_agent(name, env, seed=0, learning_rate=1e-5, max_grad_norm=None, **hparams, **config)
    if loss_scale is not None:
        agent.grad_scaler = torch.amp.GradScaler("cpu", init_scale=loss_scale)
    metrics = agent.train_iteration()
    return agent.policy, metrics


def assert_same_update(a: nn.Module, b: nn.Module, label: str) -> None:
    """Weights within 1e-6 and the gradients left in ``.grad`` (the last step's) within float32 noise."""
    assert max_difference(a, b) <= 1e-6, label
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=label)


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_micro_batches_give_the_whole_batch_update(tiny_model_dir, name):
    whole, whole_metrics = trained(tiny_model_dir, name)
    for size in (1, 3):
        micro, metrics = trained(tiny_model_dir, name, micro_batch_size=size)
        assert_same_update(whole, micro, f"{name}, micro_batch_size={size}")
        assert metrics["train/loss"] == pytest.approx(whole_metrics["train/loss"], rel=1e-5, abs=1e-6)
        assert metrics["train/entropy"] == pytest.approx(whole_metrics["train/entropy"], rel=1e-5)
        if "num_tokens" in metrics:
            assert metrics["num_tokens"] == whole_metrics["num_tokens"]
    reference, _ = trained(tiny_model_dir, name, micro_batch_size=None)
    weights = [p.detach().clone() for p in whole.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(weights, reference.parameters(), strict=True))  # seeded: exact


@pytest.mark.parametrize("name", ["reinforce", "ppo", "sft"])
def test_a_micro_batch_as_large_as_the_batch_is_the_whole_batch_bit_for_bit(tiny_model_dir, name):
    whole, _ = trained(tiny_model_dir, name)
    same, _ = trained(tiny_model_dir, name, micro_batch_size=64)
    assert all(torch.equal(p, q) for p, q in zip(whole.parameters(), same.parameters(), strict=True))


class Named:
    name, iterations, learning_rate = "test", 0, 0.1


def test_accumulated_parts_sum_to_the_full_gradient():
    torch.manual_seed(0)
    x, y = torch.randn(10, 3), torch.randn(10)
    full, accumulated = nn.Linear(3, 1), nn.Linear(3, 1)
    accumulated.load_state_dict(full.state_dict())
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.1) for model in (full, accumulated)]

    def loss_of(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        return ((model(x[rows]).squeeze(-1) - y[rows]) ** 2).mean()

    rows = torch.arange(10)
    total = gradient_step(Named(), loss_of(full, rows), optimizers[0], {"m": full}, None)
    parts = [lambda r=r: share(loss_of(accumulated, r), len(r), 10) for r in micro_batches(rows, 4)]
    assert [len(r) for r in micro_batches(rows, 4)] == [4, 4, 2]
    summed = gradient_step(Named(), parts, optimizers[1], {"m": accumulated}, None)
    assert float(summed) == pytest.approx(float(total), rel=1e-6)
    for p, q in zip(full.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_a_first_part_may_skip_the_step():
    model = nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    assert gradient_step(Named(), [lambda: None], optimizer, {"m": model}, None) is None
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


@pytest.mark.bad_input
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_micro_batch_size_is_a_positive_integer_or_none(value):
    with pytest.raises(InputError, match="micro_batch_size"):
        NativeConfig(micro_batch_size=value)


# ---------------------------------------------------------------------- gradient checkpointing
def block_calls(model: nn.Module) -> list[int]:
    """A counter of the calls of the first layer inside the model's first transformer block (a forward hook: the
    checkpoint replays the block's ``forward``, so its layers' hooks count the recompute)."""
    blocks = next(m for m in model.modules() if isinstance(m, nn.ModuleList))
    calls = [0]
    next(blocks[0].children()).register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("name", ["ppo", "sft"])
def test_gradient_checkpointing_gives_the_same_update(tiny_model_dir, tiny_llama_dir, architecture, name):
    model_dir = tiny_model_dir if architecture == "gpt2" else tiny_llama_dir
    plain, _ = trained(model_dir, name)
    checkpointed, _ = trained(model_dir, name, gradient_checkpointing=True)
    assert checkpointed.is_activation_checkpointing and not plain.is_activation_checkpointing
    assert_same_update(plain, checkpointed, f"{name} on {architecture}")


def test_gradient_checkpointing_recomputes_in_the_update_only(tiny_model_dir):
    """The rollout (eval mode, KV cache) is unchanged and calls each block once per step; the update forward
    calls each block twice (forward, then the recompute in the backward)."""
    runs = {}
    for checkpointing in (False, True):
        env = TextGenVectorEnv(num_envs=8, model=str(tiny_model_dir), kl_coef=0.05, reward_model=reward,
                               prompts=PROMPTS, max_new_tokens=8, autoreset_mode="disabled", device="cpu")
        agent = make_agent("reinforce", env, seed=0, gradient_checkpointing=checkpointing)
        calls = block_calls(agent.policy)
        rollout = collect_rollout(env, agent.generator)
        rollout_calls = calls[0]
        agent.train_iteration()
        runs[checkpointing] = (rollout, rollout_calls, calls[0] - rollout_calls)
    (plain, plain_calls, plain_update), (checkpointed, checkpointed_calls, checkpointed_update) = runs[False], runs[True]
    assert torch.equal(plain.input_ids, checkpointed.input_ids)
    assert torch.equal(plain.logprobs, checkpointed.logprobs)
    assert checkpointed_calls == plain_calls  # one cached forward per generated token, no recompute
    assert checkpointed_update > plain_update  # the update's blocks ran again in the backward


@pytest.mark.bad_input
def test_gradient_checkpointing_is_a_flag():
    with pytest.raises(InputError, match="gradient_checkpointing"):
        NativeConfig(gradient_checkpointing="yes")


# ---------------------------------------------------------------------- mixed precision
def test_bfloat16_autocast_scores_like_float32(tiny_model_dir):
    """The update forward under CPU bfloat16 autocast: float32 weights, log-probs close to float32's."""
    env = TextGenVectorEnv(num_envs=8, model=str(tiny_model_dir), reward_model=reward, prompts=PROMPTS,
                           max_new_tokens=8, autoreset_mode="disabled", device="cpu")
    rollout = collect_rollout(env, torch.Generator().manual_seed(0))
    exact = score_rollout(env.policy, rollout).logprobs
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = score_rollout(env.policy, rollout).logprobs
    assert mixed.dtype == torch.float32 and bool(torch.isfinite(mixed).all())
    error = float((mixed - exact).abs().max())
    assert 0 < error < 0.05, error  # bfloat16 matmuls (8 bits of mantissa), float32 log-softmax


@pytest.mark.parametrize("name", ["reinforce", "ppo", "sft", "dpo"])
def test_bfloat16_autocast_update_keeps_float32_master_weights(tiny_model_dir, name):
    exact, exact_metrics = trained(tiny_model_dir, name)
    mixed, metrics = trained(tiny_model_dir, name, autocast_dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    assert all(p.grad.dtype == torch.float32 for p in mixed.parameters() if p.grad is not None)
    assert metrics["train/loss"] == pytest.approx(exact_metrics["train/loss"], rel=0.05, abs=0.02)
    exact_grad = torch.cat([p.grad.flatten() for p in exact.parameters() if p.grad is not None])
    mixed_grad = torch.cat([p.grad.flatten() for p in mixed.parameters() if p.grad is not None])
    assert not torch.equal(exact_grad, mixed_grad)  # the forward did run in bfloat16
    assert float(torch.nn.functional.cosine_similarity(exact_grad, mixed_grad, dim=0)) > 0.999
    assert max_difference(exact, mixed) < 1e-4  # lr 1e-5: a step is at most ~1e-5 either way


@pytest.mark.parametrize("name", ["reinforce", "ppo"])
def test_float16_autocast_update_with_loss_scaler(tiny_model_dir, name):
    """float16 autocast: the backward runs on the loss times the scale S, the gradients are divided by S before
    the step: float32 master weights and gradients, close to float32's update. (S = 256: torch's initial 65536
    overflows this model's float16 backward, and the first steps would be skipped while S halves.)"""
    exact, exact_metrics = trained(tiny_model_dir, name)
    mixed, metrics = trained(tiny_model_dir, name, loss_scale=256.0, autocast_dtype="float16")
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    assert metrics["train/loss"] == pytest.approx(exact_metrics["train/loss"], rel=0.05, abs=0.02)
    exact_grad = torch.cat([p.grad.flatten() for p in exact.parameters() if p.grad is not None])
    mixed_grad = torch.cat([p.grad.flatten() for p in mixed.parameters() if p.grad is not None])
    assert not torch.equal(exact_grad, mixed_grad)  # the forward did run in float16
    assert float(torch.nn.functional.cosine_similarity(exact_grad, mixed_grad, dim=0)) > 0.999
    assert float(mixed_grad.norm() / exact_grad.norm()) == pytest.approx(1.0, abs=0.01)  # unscaled: not × S
    assert 0 < max_difference(exact, mixed) < 1e-4


def float16_agent(model_dir, **config):
    env = TextGenVectorEnv(num_envs=4, model=str(model_dir), kl_coef=0.05, reward_model=reward, prompts=PROMPTS,
                           max_new_tokens=6, autoreset_mode="disabled", device="cpu")
    return make_agent("reinforce", env, seed=0, autocast_dtype="float16", **config)


def test_float16_overflow_skips_the_step_and_halves_the_scale(tiny_model_dir):
    """A scale so large that the float16 backward overflows: the step is skipped (weights unchanged, no
    TrainingDivergedError) and S halved, as GradScaler finds its scale."""
    agent = float16_agent(tiny_model_dir)
    agent.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.train_iteration()
    assert all(torch.equal(p, q) for p, q in zip(before, agent.policy.parameters()))
    assert agent.grad_scaler.get_scale() == 2.0**99
    agent.grad_scaler = torch.amp.GradScaler("cpu", init_scale=256.0)  # a scale that fits: the step is taken
    agent.train_iteration()
    assert not all(torch.equal(p, q) for p, q in zip(before, agent.policy.parameters()))


def test_a_nan_gradient_under_float16_diverges_once_the_scale_is_spent(tiny_model_dir):
    """A NaN gradient is not an overflow: once halving took S below 1 the guarded step raises, not skips."""
    from textenv.agents.gradient_step import TrainingDivergedError

    agent = float16_agent(tiny_model_dir)
    agent.grad_scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    next(agent.policy.parameters()).register_hook(lambda grad: grad * float("nan"))
    agent.train_iteration()  # skipped: S = 2
    agent.train_iteration()  # skipped: S = 1
    with pytest.raises(TrainingDivergedError, match="non-finite with the float16 loss scale down to 0.5"):
        agent.train_iteration()


def test_the_loss_scale_is_saved_and_resumed(tiny_model_dir, tmp_path):
    from textenv.agents.base import Agent

    agent = float16_agent(tiny_model_dir)
    agent.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    agent.train_iteration()  # overflow: the scale halves to 2**99
    agent.save(tmp_path / "checkpoint")
    resumed = Agent.load(tmp_path / "checkpoint", agent.env)
    assert resumed.grad_scaler.state_dict() == agent.grad_scaler.state_dict()


@pytest.mark.bad_input
@pytest.mark.parametrize("value", ["half", "bf16", "float32", 16])
def test_autocast_dtype_is_bfloat16_float16_or_none(value):
    with pytest.raises(InputError, match="autocast_dtype"):
        NativeConfig(autocast_dtype=value)


@pytest.mark.bad_input
def test_float16_autocast_needs_float32_weights(tiny_model_dir):
    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), reward_model=reward, prompts=PROMPTS,
                           max_new_tokens=4, autoreset_mode="disabled", device="cpu", dtype="bfloat16")
    with pytest.raises(InputError, match="autocast_dtype='float16'.*bfloat16.*dtype='float32'"):
        make_agent("reinforce", env, autocast_dtype="float16")


# ---------------------------------------------------------------------- textenv train flags
def test_train_flags_set_the_env_dtype_and_the_memory_options(tmp_path):
    """--dtype sets env.dtype; --sharding, --micro-batch-size, --gradient-checkpointing and --autocast-dtype set
    agent_kwargs (beating the config file); flags not given leave the file's values."""
    from textenv.apps.cli import build_parser
    from textenv.apps.train import resolve_train_options

    config = tmp_path / "c.yaml"
    config.write_text("agent: ppo\nenv:\n  dtype: bfloat16\nagent_kwargs:\n  micro_batch_size: 2\n"
                      "  gradient_checkpointing: true\n")
    parse = build_parser().parse_args
    options = resolve_train_options(parse(["train", "--config", str(config)]))
    assert options["env"]["dtype"] == "bfloat16"
    assert options["agent_kwargs"] == {"micro_batch_size": 2, "gradient_checkpointing": True}
    args = parse(["train", "--config", str(config), "--dtype", "float32", "--sharding", "ddp", "--micro-batch-size",
                  "4", "--no-gradient-checkpointing", "--autocast-dtype", "bfloat16"])
    options = resolve_train_options(args)
    assert options["env"]["dtype"] == "float32"
    assert options["agent_kwargs"] == {"micro_batch_size": 4, "gradient_checkpointing": False, "sharding": "ddp",
                                       "autocast_dtype": "bfloat16"}


# ---------------------------------------------------------------------- FSDP2 (2 processes, gloo)
FSDP_AGENTS = ("reinforce", "ppo", "rloo")
FSDP_ITERATIONS = 2  # learn() iterations per run; the FSDP run also saves a checkpoint after the first


def gathered_weights(agent) -> torch.Tensor:
    """Every parameter of the policy (FSDP2 shards gathered: a collective) and the other trained modules, flat."""
    from textenv import distributed

    tensors = [p.full_tensor() if distributed.is_sharded(p) else p for p in agent.policy.parameters()]
    tensors += [p for module in agent.trainable_modules().values() for p in module.parameters()]
    return torch.cat([t.detach().flatten() for t in tensors])


def fsdp_run(name: str, model_dir: str, sharding: str, out, resume_from=None) -> dict:
    """One agent trained with ``learn()`` (checkpointing after every iteration, as ``textenv train`` can) for
    FSDP_ITERATIONS iterations, or resumed from ``resume_from``; returns the gathered weights and whether both
    ranks held the same ones after every iteration."""
    from textenv.agents import agent_class

    group_size = 4 if name == "rloo" else 1
    # fast=False: the packed forwards check themselves against the padded ones on first use and may pick
    # differently for the FSDP-wrapped model; with one forward for both, DDP and FSDP agree to 1e-6.
    env = TextGenVectorEnv(num_envs=8, model=model_dir, kl_coef=0.05, group_size=group_size, reward_model=reward,
                           prompts=PROMPTS, max_new_tokens=8, autoreset_mode="disabled", device="cpu", fast=False)
    if resume_from is None:
        agent = make_agent(name, env, seed=0, learning_rate=1e-5, sharding=sharding)
    else:
        agent = agent_class(name).load(resume_from, env)
    agreed, losses = [], []
    while agent.iterations < FSDP_ITERATIONS:
        agent.learn(agent.num_timesteps + 1, progress_bar=False, checkpoint_dir=out / f"{name}-{sharding}")
        losses.append(agent.last_metrics["train/loss"])
        full = gathered_weights(agent)
        gathered = [torch.zeros_like(full) for _ in range(2)]
        torch.distributed.all_gather(gathered, full)
        agreed.append(torch.equal(gathered[0], gathered[1]))
        if agent.iterations == 1 and resume_from is None and sharding == "fsdp":
            agent.save(out / f"{name}-fsdp-1")
    from torch.distributed.fsdp import FSDPModule

    return {"agreed": agreed, "losses": losses, "weights": full, "sharded": isinstance(agent.policy, FSDPModule),
            "num_timesteps": agent.num_timesteps}


def fsdp_worker(model_dir: str, out: str) -> None:
    """One rank of ``torchrun --nproc-per-node 2``: each agent of FSDP_AGENTS with sharding='ddp', then 'fsdp'
    (same seeds), then 'fsdp' resumed from its checkpoint of iteration 1; rank 0 writes the weights and a
    report, and each rank lists the checkpoint directories it sees (rank 0 wrote them)."""
    import gc
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from textenv import distributed

    distributed.init_from_environment()
    out = Path(out)
    report = {}
    for name in FSDP_AGENTS:
        runs = {"ddp": fsdp_run(name, model_dir, "ddp", out), "fsdp": fsdp_run(name, model_dir, "fsdp", out)}
        gc.collect()  # FSDP2's state goes before the process group does (gloo aborts otherwise)
        runs["resumed"] = fsdp_run(name, model_dir, "fsdp", out / "resumed", out / f"{name}-fsdp-1")
        gc.collect()
        if distributed.is_main_process():
            save_file({k: run.pop("weights") for k, run in runs.items()}, str(out / f"{name}.safetensors"))
        report[name] = {k: {key: v for key, v in run.items() if key != "weights"} for k, run in runs.items()}
    if distributed.is_main_process():
        (out / "report.json").write_text(json.dumps(report))
    distributed.shutdown()


@pytest.mark.slow
def test_fsdp_sharding_trains_like_ddp_on_two_processes(tmp_path, tiny_model_dir):
    """FSDP2 (fully_shard per transformer block) under torchrun with gloo on this CPU, through learn() with
    checkpoints: the gathered weights are identical on both ranks after every iteration, the losses finite, the
    weights those of DDP within 1e-6; rank 0's checkpoint holds the whole policy (from_pretrained-ready, equal to
    the trained weights) and a run resumed from the checkpoint of iteration 1 ends bit-identical."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
               "fsdp-worker", str(tiny_model_dir), str(tmp_path)]
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for name in FSDP_AGENTS:
        for kind, run in report[name].items():
            assert all(run["agreed"]) and len(run["agreed"]) >= 1, f"{name} {kind}: ranks disagree"
            assert all(map(math.isfinite, run["losses"])), run
            assert run["sharded"] == (kind != "ddp")
        weights = load_file(tmp_path / f"{name}.safetensors")
        assert float((weights["ddp"] - weights["fsdp"]).abs().max()) <= 1e-6, name
        assert torch.equal(weights["resumed"], weights["fsdp"]), f"{name}: resume is not exact"
        assert report[name]["resumed"]["num_timesteps"] == report[name]["fsdp"]["num_timesteps"]
        checkpoint = tmp_path / f"{name}-fsdp"
        meta = json.loads((checkpoint / "agent.json").read_text())
        assert meta["world_size"] == 2 and meta["iterations"] == FSDP_ITERATIONS
        assert meta["hyperparameters"]["sharding"] == "fsdp"
        saved = AutoModelForCausalLM.from_pretrained(checkpoint / "policy")
        flat = torch.cat([p.detach().flatten() for p in saved.parameters()])
        assert torch.equal(flat, weights["fsdp"][: flat.numel()]), f"{name}: the checkpoint is not the trained policy"
    assert not list(tmp_path.glob("**/*.tmp*")), "a checkpoint was left half written"


@pytest.mark.bad_input
def test_fsdp_needs_torchrun(tiny_model_dir):
    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), reward_model=reward, prompts=PROMPTS,
                           max_new_tokens=4, autoreset_mode="disabled", device="cpu")
    with pytest.raises(InputError, match="sharding='fsdp'.*torchrun"):
        make_agent("reinforce", env, sharding="fsdp")


@pytest.mark.bad_input
@pytest.mark.parametrize("env_kwargs, config, message", [
    ({"lora": True}, {}, "sharding='fsdp' with LoRA.*merges the adapters.*sharding='ddp'"),
    ({}, {"autocast_dtype": "float16"}, "sharding='fsdp' with autocast_dtype='float16'.*bfloat16"),
])
def test_fsdp_refuses_lora_and_float16(tiny_model_dir, monkeypatch, env_kwargs, config, message):
    """Refused before the model is sharded (world size faked: the refusals come before any collective)."""
    from textenv import distributed

    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), reward_model=reward, prompts=PROMPTS,
                           max_new_tokens=4, autoreset_mode="disabled", device="cpu", **env_kwargs)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "fully_shard_model", lambda model: pytest.fail("sharded"))
    with pytest.raises(InputError, match=message):
        make_agent("reinforce", env, sharding="fsdp", **config)


@pytest.mark.bad_input
def test_sharding_is_ddp_or_fsdp():
    with pytest.raises(InputError, match="sharding"):
        NativeConfig(sharding="zero3")


if __name__ == "__main__" and sys.argv[1:2] == ["fsdp-worker"]:
    fsdp_worker(*sys.argv[2:4])

"""Data-parallel scaling: training tokens/s of 2 ranks vs 1 rank under torchrun (gloo on CPU, NCCL on CUDA).

Each configuration is one ``torchrun --standalone --nproc-per-node N`` launch of this file's worker: every rank
builds the same env (the embedded model by default, B = ``--batch`` rows per rank, at most T = ``--new-tokens``
new tokens, VADER reward, β = 0.05) and agent (``--agent``, default PPO), uses ONE torch thread, runs
``--warmup`` untimed iterations and then ``--iterations`` timed ones. The per-rank batch is the same for 1 and 2
ranks, so 2 ranks do twice the work per iteration (weak scaling, as in data-parallel training).

The throughput of an iteration is ``Agent.last_metrics["time/tokens_per_s"]``: the GLOBAL number of tokens
generated in it (summed over ranks) divided by the slowest rank's wall time of the iteration (rollout, reward,
update with the gradient all-reduce); the figure per launch is the median over timed iterations. The machine's
speed drifts (other processes share its cores), so ``--rounds`` rounds each launch both configurations,
alternating which goes first; the last line is the median over rounds of

    ddp_scaling = tokens/s with 2 ranks ÷ tokens/s with 1 rank     (target ≥ 1.6; 2.0 is perfect scaling)

Two ranks need two free cores: on a machine whose cores other jobs use, the figure measures the contention too.
The line before it, ``cpu_efficiency``, divides tokens per CPU-second (all ranks' process CPU time) of 2 ranks by
that of 1 rank: near 1.0 the collectives add little work, and a low ``ddp_scaling`` means the ranks waited for
cores (the load average is printed).

    python benchmarks/distributed.py [--agent ppo] [--batch 16] [--new-tokens 24] [--iterations 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", default="ppo", help="native agent to train (default ppo)")
    parser.add_argument("--model", default="textenv/default", help="model directory (default: the embedded model)")
    parser.add_argument("--batch", type=int, default=16, help="env rows per rank (B)")
    parser.add_argument("--new-tokens", type=int, default=24, help="max new tokens per episode (T)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per launch")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations per launch")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (1 rank, 2 ranks) launches")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON file the rank-0 worker writes
    return parser.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One rank: train ``warmup + iterations`` iterations and (rank 0) write the timed tokens/s to ``--worker``."""
    import torch

    from textenv import distributed
    from textenv.agents import agent_class, make_agent
    from textenv.vector_env import TextGenVectorEnv

    torch.set_num_threads(1)
    distributed.init_from_environment()
    cls = agent_class(args.agent)
    env = TextGenVectorEnv(model=args.model, num_envs=args.batch, max_new_tokens=args.new_tokens, kl_coef=0.05,
                           group_size=cls.default_group_size, autoreset_mode="disabled")
    agent = make_agent(args.agent, env, seed=0)
    speeds, cpu_speeds = [], []
    for iteration in range(args.warmup + args.iterations):
        before, cpu_before = agent.num_timesteps, time.process_time()
        agent.learn(agent.num_timesteps + 1, progress_bar=False)
        cpu_seconds = distributed.mean_float(time.process_time() - cpu_before) * distributed.world_size()
        if iteration >= args.warmup:
            speeds.append(agent.last_metrics["time/tokens_per_s"])
            cpu_speeds.append((agent.num_timesteps - before) / cpu_seconds)
    if distributed.is_main_process():
        Path(args.worker).write_text(json.dumps({"world_size": distributed.world_size(), "tokens_per_s": speeds,
                                                 "tokens_per_cpu_s": cpu_speeds}))
    distributed.shutdown()


def launch(args: argparse.Namespace, ranks: int, out: Path) -> tuple[float, float]:
    """Median global tokens/s and tokens per CPU-second (all ranks' CPU time) of one ``torchrun --nproc-per-node
    ranks`` launch."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
               __file__, "--worker", str(out), "--agent", args.agent, "--model", args.model, "--batch",
               str(args.batch), "--new-tokens", str(args.new_tokens), "--warmup", str(args.warmup),
               "--iterations", str(args.iterations)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    assert result["world_size"] == ranks, result
    return statistics.median(result["tokens_per_s"]), statistics.median(result["tokens_per_cpu_s"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    print(f"agent={args.agent} model={args.model} per-rank batch={args.batch} T={args.new_tokens} "
          f"iterations={args.iterations} (+{args.warmup} warm-up), 1 thread per rank, cores={os.cpu_count()}")
    ratios, cpu_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            order = (1, 2) if round_index % 2 == 0 else (2, 1)
            speed = {n: launch(args, n, Path(tmp) / f"r{round_index}-{n}.json") for n in order}
            ratios.append(speed[2][0] / speed[1][0])
            cpu_ratios.append(speed[2][1] / speed[1][1])
            print(f"round {round_index + 1}: 1 rank {speed[1][0]:.0f} tok/s, 2 ranks {speed[2][0]:.0f} tok/s, "
                  f"ratio {ratios[-1]:.3f}; tokens per CPU-second 1 rank {speed[1][1]:.0f}, 2 ranks "
                  f"{speed[2][1]:.0f}", flush=True)
    print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"cpu_efficiency: {statistics.median(cpu_ratios):.3f}   (2 ranks ÷ 1 rank tokens per CPU-second: "
          "1.0 = data parallelism adds no work)")
    print(f"ddp_scaling: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()

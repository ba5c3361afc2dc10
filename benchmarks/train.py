"""Training throughput: tokens/s of one iteration (rollout + update) per agent, and against TRL's RLOOTrainer.

One iteration = one ``agent.train_iteration()``: generate a batch of B completions of at most T new tokens
(sampling, temperature 1, no top-k/top-p) with the policy, score them with VADER, pay the KL penalty
R = r_φ − β·Σ_t KL_t to the frozen reference (β = 0.05), and update the policy. Every agent runs on the embedded
model with the same B, T and β; the group agents (rloo, grpo) sample K completions of B/K prompts.

TRL side (built by ``benchmarks/trl_setup.py``, which ``learning.py --vs-trl`` shares): ``trl.RLOOTrainer``
on the same model directory, the same training prompts (``datasets.Dataset`` built in memory), the same
VADER scorer through TRL's ``reward_funcs`` callable interface, with
``per_device_train_batch_size`` = B completions, ``num_generations`` = K, ``max_completion_length`` = T,
β = 0.05, one generation batch per optimizer step, fp32, no gradient checkpointing, no logging/saving. One
TRL optimizer step is one iteration; its wall time is measured between consecutive ``on_step_end``
callbacks (so it includes data loading, generation, reference forward, reward, loss and optimizer step).

What is comparable, and what is not:
  * same model, tokenizer, prompts, reward, B, T, K, β, sampling settings, fp32, torch thread count;
  * tokens are COUNTED on both sides, not assumed: ours from each iteration's ``num_tokens`` (env steps),
    TRL's from the ``completion_ids`` its reward function receives (both include the EOS token when one is
    sampled and both stop a row at EOS), so the unit is "seconds per generated token". Completion lengths
    follow the same model's distribution on both sides (mean lengths are printed);
  * the algorithms differ: ``rloo`` ↔ TRL RLOO is like-for-like (one epoch, one minibatch, leave-one-out
    baseline, sequence-level KL in the reward). ``ppo`` at its defaults does twice TRL's update work (2 epochs
    of forward+backward over the batch, in 2 minibatches); ``ppo-1pass`` (``n_epochs=1, num_minibatches=1``)
    does the same update work as TRL's ``num_iterations=1``, and is the row of the last line. Both PPO
    ratios are printed;
  * TRL recomputes log π_old and log π_ref with two extra forwards after ``generate``; the env keeps log π_old
    from its KV-cached steps and scores log π_ref with one packed forward over the episodes as they finish.
    That difference is the point of the comparison;
  * TRL uses AdamW (weight decay 0) with a linear LR schedule, ours Adam with a constant LR: same cost;
  * ``sb3-ppo`` runs SB3's rollout buffer with ``n_steps = T`` per row (B·T tokens exactly, episodes
    crossing iterations) and 4 epochs: it is here for scale, not for the ratio;
  * each side loads the model with its own loader: textenv runs the embedded model's ``gelu_new`` as x·σ(2u)
    on the CPU (the same function, see ``textenv.fast.activations``), TRL as configured; textenv's update and its
    prompt prefill pack the episodes without padding (``textenv.fast.packing``, ``textenv.fast.prefill``), TRL
    pads them; textenv computes log-probs and entropy in chunks (``textenv.fast.logprobs``), TRL with its own
    helpers. With ``TEXTENV_FAST=0`` textenv runs the plain transformers path instead (see ``textenv.fast``).

Every row runs in a fresh Python process, so no row inherits another's heap, thread pool or caches. The
machine's speed also drifts over minutes (measured here: TRL's step took 2.7–3.9 s across runs of one day,
ours 1.4–1.6 s), so the headline pair (``ppo-1pass``, TRL) is measured in ``--rounds`` rounds of
fresh processes, alternating which side goes first; the last line is the median of the rounds' ratios.

Each side runs ``--warmup`` untimed iterations, then ``--iterations`` timed ones; the reported tokens/s is the
inverse of the MEDIAN over timed iterations of seconds per token (robust to a neighbour's burst on a shared
machine). ``tok/row`` is tokens per batch row per iteration: the mean completion length (for sb3-ppo, whose
episodes cross iterations, it is n_steps = T). The last line is ``ppo_vs_trl_rloo: <ours s/token ÷ TRL s/token>`` (target ≤ 0.5; lower is faster).

    python benchmarks/train.py [--batch 64] [--new-tokens 24] [--group-size 4] [--iterations 5] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any

import torch
from trl_setup import CountingReward, TRLSettings, import_trl, isolated, make_trl_trainer

from textenv.agents import agent_class, make_agent
from textenv.apps.cli import build_env
from textenv.models.loading import DEFAULT_MODEL

KL_COEF = 0.05
#: Row name -> (agent, hyper-parameters). PPO last, right before TRL, so that their ratio sees the same load.
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "reinforce": ("reinforce", {}),
    "rloo": ("rloo", {}),
    "grpo": ("grpo", {}),
    "sb3-ppo": ("sb3-ppo", {}),
    "ppo": ("ppo", {}),
    "ppo-1pass": ("ppo", {"n_epochs": 1, "num_minibatches": 1}),  # TRL's update work: one pass, one step
}
DEFAULT_AGENTS = list(ROWS)


# ---------------------------------------------------------------------------------------------- ours
def time_agent(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds and tokens of each timed ``train_iteration()`` of a row of :data:`ROWS` (after the warm-up)."""
    torch.set_num_threads(args.threads)
    name, hyperparameters = ROWS.get(row, (row, {}))
    cls = agent_class(name)
    env = build_env(
        {"num_envs": args.batch, "max_new_tokens": args.new_tokens, "kl_coef": KL_COEF, "model": args.model},
        group_size=args.group_size if cls.default_group_size > 1 else 1,
    )
    agent = make_agent(name, env, seed=0, **hyperparameters)
    for _ in range(args.warmup):
        agent.train_iteration()
    seconds, tokens = [], []
    for _ in range(args.iterations):
        start = time.perf_counter()
        metrics = agent.train_iteration()
        seconds.append(time.perf_counter() - start)
        tokens.append(int(metrics["num_tokens"]))
    return {"name": row, "seconds": seconds, "tokens": tokens, "completions": args.batch}


# ---------------------------------------------------------------------------------------------- TRL
def time_trl_rloo(args: argparse.Namespace) -> dict[str, Any] | None:
    """The same measurement for ``trl.RLOOTrainer``; ``None`` (with a message) when TRL is not installed."""
    torch.set_num_threads(args.threads)
    trl = import_trl()
    if trl is None:
        return None
    from transformers import TrainerCallback

    reward = CountingReward()

    class StepClock(TrainerCallback):
        """(time, tokens generated so far, torch threads) at the end of every optimizer step."""

        def __init__(self) -> None:
            self.marks: list[tuple[float, int, int]] = []

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.marks.append((time.perf_counter(), reward.tokens, torch.get_num_threads()))

    clock = StepClock()
    settings = TRLSettings(model=args.model, batch=args.batch, group_size=args.group_size,
                           new_tokens=args.new_tokens, beta=KL_COEF)
    with make_trl_trainer(trl, "rloo", settings, reward, args.warmup + args.iterations, [clock]) as trainer:
        trainer.train()
    threads = {m[2] for m in clock.marks}
    if threads != {torch.get_num_threads()}:
        print(f"warning: TRL ran with torch threads {threads}, ours with {torch.get_num_threads()}")
    timed = clock.marks[args.warmup - 1:]  # mark k-1 → mark k is iteration k
    seconds = [b[0] - a[0] for a, b in itertools.pairwise(timed)]
    tokens = [b[1] - a[1] for a, b in itertools.pairwise(timed)]
    return {"name": "trl-rloo", "seconds": seconds, "tokens": tokens, "completions": args.batch}


# ---------------------------------------------------------------------------------------------- report
def seconds_per_token(run: dict[str, Any]) -> float:
    """Median over timed iterations of wall seconds per generated token."""
    return statistics.median(s / t for s, t in zip(run["seconds"], run["tokens"]))


def print_row(run: dict[str, Any]) -> None:
    tokens = statistics.mean(run["tokens"])
    print(f"{run['name']:>10} {1 / seconds_per_token(run):>9.0f} {statistics.median(run['seconds']):>9.2f} "
          f"{tokens:>10.0f} {tokens / run['completions']:>9.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=64, help="completions per iteration (B)")
    parser.add_argument("--new-tokens", type=int, default=24, help="max new tokens per completion (T)")
    parser.add_argument("--group-size", type=int, default=4, help="K completions per prompt (rloo, grpo, TRL)")
    parser.add_argument("--agents", nargs="*", default=DEFAULT_AGENTS,
                        help=f"rows: registered agent names or {list(ROWS)}")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (>= 1)")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL row")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of the headline pair (ppo-1pass, TRL); the last line is their median ratio")
    args = parser.parse_args()
    if args.warmup < 1 or args.iterations < 1 or args.rounds < 1:
        parser.error("--warmup, --iterations and --rounds must be >= 1")
    if args.batch % args.group_size:
        parser.error(f"--batch {args.batch} must be a multiple of --group-size {args.group_size}")
    torch.set_num_threads(args.threads)
    for name in args.agents:
        agent_class(ROWS.get(name, (name, {}))[0])  # unknown names fail before anything runs

    print(f"model={args.model} B={args.batch} T={args.new_tokens} K={args.group_size} beta={KL_COEF} "
          f"threads={torch.get_num_threads()} warmup={args.warmup} iterations={args.iterations}")
    print(f"{'agent':>10} {'tok/s':>9} {'s/iter':>9} {'tok/iter':>10} {'tok/row':>9}", flush=True)
    runs: dict[str, dict[str, Any]] = {}
    for name in args.agents:
        runs[name] = isolated(time_agent, name, args)
        print_row(runs[name])
    trl = None if args.no_trl else isolated(time_trl_rloo, args)
    if trl is None:
        return
    print_row(trl)
    if "rloo" in runs:
        print(f"rloo_vs_trl_rloo: {seconds_per_token(runs['rloo']) / seconds_per_token(trl):.2f}")
    if "ppo" in runs:
        print(f"ppo_defaults_vs_trl_rloo: {seconds_per_token(runs['ppo']) / seconds_per_token(trl):.2f}")
    headline = "ppo-1pass" if "ppo-1pass" in runs else "ppo" if "ppo" in runs else None
    if headline is None:
        return
    ratios = [seconds_per_token(runs[headline]) / seconds_per_token(trl)]  # round 1: the table's rows
    print(f"round 1: {headline} {1 / seconds_per_token(runs[headline]):.0f} tok/s, trl-rloo "
          f"{1 / seconds_per_token(trl):.0f} tok/s, ratio {ratios[-1]:.2f}", flush=True)
    for round_ in range(2, args.rounds + 1):
        if round_ % 2 == 0:  # TRL first in even rounds
            other, ours = isolated(time_trl_rloo, args), isolated(time_agent, headline, args)
        else:
            ours, other = isolated(time_agent, headline, args), isolated(time_trl_rloo, args)
        ratios.append(seconds_per_token(ours) / seconds_per_token(other))
        print(f"round {round_}: {headline} {1 / seconds_per_token(ours):.0f} tok/s, trl-rloo "
              f"{1 / seconds_per_token(other):.0f} tok/s, ratio {ratios[-1]:.2f}", flush=True)
    print(f"ppo_vs_trl_rloo: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()

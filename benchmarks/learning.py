"""Learning under a CPU budget: does every native agent raise held-out sentiment within a few CPU-minutes?

The embedded sentiment task: the 2.66M-parameter review GPT-2 (``textenv/default``) continues training
prompts; the reward is the VADER compound score of the completion (in [−1, 1]) minus β·Σ_t KL_t to the frozen
start model (InstructGPT eq. 2). Each agent gets a FRESH env and trains, on its default hyper-parameters,
for the same CPU-time budget (``time.process_time``: CPU seconds of this process, summed over its threads;
evaluation excluded), whole iterations at a time.

Before and after training, the policy is measured on held-out prompts (the built-in ``"eval"`` split, never
trained on) with :func:`textenv.apps.evaluation.evaluate_policy`: mean VADER over ``--eval-prompts`` prompts ×
``--eval-samples`` samples (same prompts and sampler seed before and after), and KL(π_θ‖π_ref) in nats per
completion (k1 estimator, mean over samples).

Prints the table  agent | before → after | change | KL | CPU-min  and a final line saying whether every agent
met the bar "change ≥ +0.5 at KL ≤ 5 nats".

``--vs-trl``: head to head against TRL. TRL's ``RLOOTrainer`` and ``GRPOTrainer`` (the ``bench`` extra) train
the same model on the same prompts, reward (VADER through TRL's ``reward_funcs``), B completions per step, K per
prompt, T new tokens, Adam step size (1e-4, constant: ``lr_scheduler_type="constant"``, AdamW with weight
decay 0 = Adam), gradient clip 1.0, seed and CPU budget as our agents (``benchmarks/trl_setup.py`` builds them,
as for the throughput benchmark ``train.py``). TRL's process CPU time is counted from ``on_train_begin`` and
training stops at the first step end past the budget, exactly as our loop stops at the first iteration end
past it. TRL's trained model is then scored by the same :func:`evaluate_policy` call as ours (same held-out
prompts, sampler seed, gold and reference). Every row runs in a fresh process with the same torch thread
count, and the rows alternate sides (ours, TRL, TRL, ours, ...), so neighbouring rows see the same load.

β and KL: β = ``--kl-coef`` (0.05) on every side. Our agents and TRL's RLOO pay it in the reward,
R = r − β·Σ_t (log π_θ − log π_ref) (InstructGPT eq. 2, the same k1 sum on both sides); TRL's RLOO also
normalises the advantages by their batch std as ours does (``normalize_advantages=True``). TRL's GRPO has no
reward-side penalty: it adds β·k3 per token to the loss (DeepSeekMath eq. 3-4; ``loss_type="grpo"``, rewards
scaled by the group std, as our GRPO's advantage). KL is measured the same way for every row, on held-out
samples (nats per completion); a row counts for the last line only if it ends within ``--max-kl`` nats (5).
The last line is ``learning_vs_trl: X`` = (best gain of our agents within the bound) ÷ (best gain of TRL's
trainers within the bound); target ≥ 1.2. ``--seeds N`` runs every row with N seeds (training and evaluation
seed; the side that goes first alternates between seeds too) and compares the means over seeds. ``--eval-at
0.5`` also scores every row halfway through its budget (evaluation time is paused out of the budget; TRL's
model is evaluated on a copy) and prints the ratio there: the gains saturate (VADER's ceiling at this β is
about +0.85), so the ratio at the end of a long budget understates a difference in speed that the halfway
ratio shows.

    python benchmarks/learning.py                    # 4 agents × 10 CPU-min ≈ 45 min wall at 1 thread
    python benchmarks/learning.py --cpu-minutes 2 --agents ppo rloo
    python benchmarks/learning.py --vs-trl           # rloo, grpo, ppo vs TRL rloo, grpo; 0.5 CPU-min each
    python benchmarks/learning.py --vs-trl --seeds 3 --eval-at 0.5   # the reported run, ≈ 20 min wall
    python benchmarks/learning.py --vs-trl --quick   # a smoke run of seconds per row
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, TrainerCallback
from trl_setup import TRL_TRAINERS, CountingVader, TRLSettings, import_trl, isolated, make_trl_trainer

from textenv.agents import agent_class, make_agent
from textenv.apps.cli import build_env
from textenv.apps.evaluation import evaluate_policy
from textenv.models.loading import DEFAULT_MODEL, load_tokenizer
from textenv.prompts import load_prompts

#: The issue's bar: held-out VADER gain of at least this much ...
MIN_GAIN = 0.5
#: ... while the policy stays within this many nats (per completion) of the reference.
MAX_KL = 5.0
#: ``--vs-trl`` rows: our agents, and TRL's trainers (named ``trl-<kind>``).
VS_TRL_AGENTS = ["rloo", "grpo", "ppo"]
VS_TRL_TRAINERS = ["rloo", "grpo"]
#: TRL config fields that make each TRL trainer do what our agent of the same name does (see the docstring).
TRL_MATCHING: dict[str, dict[str, Any]] = {
    "rloo": {"normalize_advantages": True},
    "grpo": {"loss_type": "grpo", "scale_rewards": "group"},
}
#: ``--quick``: a smoke run (seconds per row) of the same code paths.
QUICK = {"cpu_minutes": 0.05, "num_envs": 8, "max_new_tokens": 8, "eval_prompts": 8, "eval_samples": 1}


def held_out(policy: str | PreTrainedModel, reference: Any, tokenizer: Any, args: argparse.Namespace
             ) -> dict[str, Any]:
    """Mean held-out VADER and KL (nats / completion) of ``policy`` against ``reference``; deterministic given
    ``args.seed`` (the same prompts and sampler seed for every row, before and after training)."""
    return evaluate_policy(
        policy,
        prompts=load_prompts("builtin", "eval")[: args.eval_prompts],
        gold="vader",
        reference=reference,
        tokenizer=tokenizer,
        num_samples=args.eval_samples,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed + 10_000,
        batch_size=args.num_envs,
        max_table_rows=0,
        device="cpu",
    )


def result_row(name: str, before: dict[str, Any], after: dict[str, Any], cpu_s: float, wall_s: float,
               tokens: int, iterations: int, curve: list[dict[str, float]]) -> dict[str, Any]:
    """One table row: held-out gold before / after, its change, KL after, the training cost, and the
    checkpoints' ``curve`` (each with its ``change`` from ``before``)."""
    row = {
        "agent": name, "before": before["gold_reward"], "after": after["gold_reward"],
        "change": after["gold_reward"] - before["gold_reward"], "kl": after["kl"],
        "cpu_min": cpu_s / 60, "wall_min": wall_s / 60, "tokens": tokens, "iterations": iterations,
        "curve": [{**point, "change": point["gold"] - before["gold_reward"]} for point in curve],
    }
    row["met"] = row["change"] >= MIN_GAIN and row["kl"] <= MAX_KL
    return row


class TrainingClock:
    """Process CPU and wall seconds spent training, with held-out evaluations at checkpoints along the way.

    ``budget_s``: CPU seconds of training; ``checkpoints_s``: CPU seconds (< budget) after which the next step end
    evaluates the policy. Evaluation time is paused out of both clocks, so a checkpointed run trains as long as
    one without. ``curve`` holds ``{"checkpoint_min", "cpu_min", "tokens", "gold", "kl"}`` per checkpoint
    (``cpu_min``: the CPU minutes actually spent at that step end, ≥ ``checkpoint_min``).
    """

    def __init__(self, budget_s: float, checkpoints_s: Sequence[float] = ()) -> None:
        self.budget_s = budget_s
        self.pending = sorted(c for c in checkpoints_s if c < budget_s)
        self.cpu_start = self.wall_start = self.paused_cpu = self.paused_wall = 0.0
        self.curve: list[dict[str, float]] = []

    def start(self) -> None:
        self.cpu_start, self.wall_start = time.process_time(), time.perf_counter()

    @property
    def cpu_s(self) -> float:
        return time.process_time() - self.cpu_start - self.paused_cpu

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.wall_start - self.paused_wall

    def done(self) -> bool:
        """Whether the budget is spent (checked at every step end: the last step may overshoot it)."""
        return self.cpu_s >= self.budget_s

    def after_step(self, evaluate: Callable[[], dict[str, Any]], tokens: int) -> None:
        """At a step end: ``evaluate()`` the policy if a checkpoint has passed (and the budget has not)."""
        cpu_s = self.cpu_s
        if not self.pending or cpu_s < self.pending[0] or cpu_s >= self.budget_s:
            return
        while self.pending and cpu_s >= self.pending[0]:
            checkpoint_s = self.pending.pop(0)  # the last checkpoint passed (one step may pass several)
        pause_cpu, pause_wall = time.process_time(), time.perf_counter()
        result = evaluate()
        self.curve.append({"checkpoint_min": checkpoint_s / 60, "cpu_min": cpu_s / 60, "tokens": tokens,
                           "gold": result["gold_reward"], "kl": result["kl"]})
        self.paused_cpu += time.process_time() - pause_cpu
        self.paused_wall += time.perf_counter() - pause_wall


def training_clock(args: argparse.Namespace) -> TrainingClock:
    """The clock of ``args.cpu_minutes`` with checkpoints at the fractions ``args.eval_at`` of it."""
    budget_s = args.cpu_minutes * 60
    return TrainingClock(budget_s, [f * budget_s for f in args.eval_at])


def train_for_cpu_budget(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, train ``name`` until ``args.cpu_minutes`` of process CPU time are spent, evaluate again."""
    torch.set_num_threads(args.threads)  # again: a spawned process (--vs-trl) starts with torch's default
    cls = agent_class(name)
    env = build_env(
        {"num_envs": args.num_envs, "max_new_tokens": args.max_new_tokens, "kl_coef": args.kl_coef,
         "model": args.model},
        group_size=cls.default_group_size,  # rloo, grpo: K completions per prompt in the same num_envs rows
    )
    hyperparameters = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    agent = make_agent(name, env, seed=args.seed, **hyperparameters)
    reference = env.reference if env.reference is not None else args.model  # β = 0: the start model
    before = held_out(env.policy, reference, env.tokenizer, args)

    clock = training_clock(args)
    clock.start()
    while not clock.done():
        # One iteration per call (any iteration generates >= 1 token), through the base loop's bookkeeping.
        agent.learn(agent.num_timesteps + 1, progress_bar=False)
        clock.after_step(lambda: held_out(env.policy, reference, env.tokenizer, args), agent.num_timesteps)
    cpu_s, wall_s = clock.cpu_s, clock.wall_s

    after = held_out(env.policy, reference, env.tokenizer, args)
    return result_row(name, before, after, cpu_s, wall_s, agent.num_timesteps, agent.iterations, clock.curve)


class CPUBudget(TrainerCallback):
    """Runs a :class:`TrainingClock` in a ``transformers.Trainer``: starts it at ``on_train_begin``, evaluates a
    copy of the model at its checkpoints, and stops training at the first step end past the budget (what our
    loop does per iteration); records the CPU and wall seconds and the steps."""

    def __init__(self, clock: TrainingClock, evaluate: Callable[[Any], dict[str, Any]] | None = None,
                 tokens: Callable[[], int] = lambda: 0) -> None:
        self.clock, self.evaluate, self.tokens = clock, evaluate, tokens
        self.cpu_s = self.wall_s = 0.0
        self.steps = 0

    def on_train_begin(self, *_: Any, **__: Any) -> None:
        self.clock.start()

    def on_step_end(self, _args: Any, _state: Any, control: Any, model: Any = None, **__: Any) -> None:
        self.steps += 1
        if self.evaluate is not None:  # on a copy: evaluating in place would change the model TRL trains
            self.clock.after_step(lambda: self.evaluate(copy.deepcopy(model)), self.tokens())
        self.cpu_s, self.wall_s = self.clock.cpu_s, self.clock.wall_s
        if self.clock.done():
            control.should_training_stop = True


def train_trl_for_cpu_budget(kind: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """:func:`train_for_cpu_budget` for TRL's ``kind`` trainer (``"rloo"`` / ``"grpo"``); ``None`` (with a
    message) when TRL is not installed."""
    torch.set_num_threads(args.threads)
    trl = import_trl()
    if trl is None:
        return None
    tokenizer = load_tokenizer(args.model)
    before = held_out(args.model, args.model, tokenizer, args)  # the start model, loaded as ours loads it
    reward = CountingVader()
    budget = CPUBudget(training_clock(args), lambda model: held_out(model, args.model, tokenizer, args),
                       lambda: reward.tokens)
    settings = TRLSettings(
        model=args.model, batch=args.num_envs, group_size=agent_class(kind).default_group_size,
        new_tokens=args.max_new_tokens, beta=args.kl_coef,
        learning_rate=1e-4 if args.learning_rate is None else args.learning_rate, seed=args.seed,
    )
    with make_trl_trainer(trl, kind, settings, reward, max_steps=10**9, callbacks=[budget],
                          lr_scheduler_type="constant", **TRL_MATCHING[kind]) as trainer:
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model)
    if torch.get_num_threads() != args.threads:
        print(f"warning: TRL ran with {torch.get_num_threads()} torch threads, ours with {args.threads}")
    after = held_out(model, args.model, tokenizer, args)
    return result_row(f"trl-{kind}", before, after, budget.cpu_s, budget.wall_s, reward.tokens, budget.steps,
                      budget.clock.curve)


# ---------------------------------------------------------------------------------------------- report
def print_header(args: argparse.Namespace) -> None:
    print(f"model={args.model} envs={args.num_envs} T={args.max_new_tokens} beta={args.kl_coef} "
          f"held-out={args.eval_prompts}x{args.eval_samples} budget={args.cpu_minutes:g} CPU-min "
          f"threads={args.threads}")
    print(f"{'agent':>12} | {'before → after':>15} | {'change':>7} | {'KL':>5} | {'CPU-min':>7} | "
          f"{'wall-min':>8} | {'tokens':>7}", flush=True)


def print_row(r: dict[str, Any]) -> None:
    print(f"{r['agent']:>12} | {r['before']:+.3f} → {r['after']:+.3f} | {r['change']:+7.3f} | {r['kl']:5.2f} | "
          f"{r['cpu_min']:7.2f} | {r['wall_min']:8.2f} | {r['tokens']:>7}", flush=True)
    for point in r["curve"]:
        print(f"{'':>12}   at {point['cpu_min']:.2f} CPU-min, {point['tokens']} tokens: {point['change']:+.3f} "
              f"(KL {point['kl']:.2f})", flush=True)


def vs_trl_schedule(args: argparse.Namespace, first: int = 0) -> list[tuple[str, str]]:
    """The rows in run order, ``("ours", agent)`` / ``("trl", kind)``, alternating sides: ours, TRL, TRL,
    ours, ours, TRL, ... (each side goes first in every other pair; ``first`` odd: TRL goes first in the first
    pair) until both lists are used up."""
    ours, theirs = [("ours", a) for a in args.agents], [("trl", k) for k in args.trl_trainers]
    schedule = []
    for i in range(max(len(ours), len(theirs))):
        pair = ours[i:i + 1] + theirs[i:i + 1]
        schedule += pair if (i + first) % 2 == 0 else pair[::-1]
    return schedule


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One trainer's rows over seeds as one row of means (``change_std``: the seeds' standard deviation of the
    gain); the curve's points are averaged per checkpoint."""
    numbers = ("before", "after", "change", "kl", "cpu_min", "wall_min", "tokens", "iterations")
    mean = {key: statistics.fmean(r[key] for r in rows) for key in numbers}
    checkpoints = sorted({p["checkpoint_min"] for r in rows for p in r["curve"]})
    curve = [{key: statistics.fmean(p[key] for r in rows for p in r["curve"] if p["checkpoint_min"] == c)
              for key in ("checkpoint_min", "cpu_min", "tokens", "gold", "kl", "change")} for c in checkpoints]
    for point in curve:
        point["tokens"] = round(point["tokens"])
    return {**mean, "agent": rows[0]["agent"], "tokens": round(mean["tokens"]), "curve": curve,
            "change_std": statistics.stdev(r["change"] for r in rows) if len(rows) > 1 else 0.0}


def best_gain(rows: list[dict[str, Any]], max_kl: float) -> dict[str, Any] | None:
    """The row with the largest finite held-out gain among those within ``max_kl`` nats; ``None`` if none is."""
    within = [r for r in rows if math.isfinite(r["change"]) and r["kl"] <= max_kl]
    return max(within, key=lambda r: r["change"], default=None)


def learning_ratio(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> float:
    """Our best gain ÷ TRL's best gain (``inf`` when TRL gained nothing within the bound and we did; ``nan`` when
    neither side has a row within it)."""
    if ours is None:
        return math.nan if theirs is None else 0.0
    if theirs is None or theirs["change"] <= 0:
        return math.inf if ours["change"] > 0 else math.nan
    return ours["change"] / theirs["change"]


def run_vs_trl(args: argparse.Namespace) -> None:
    """``--vs-trl``: every row in a fresh process, alternating sides, for each of ``args.seeds`` seeds; prints the
    rows, their means over seeds, the ratio at each checkpoint and the last line."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    start = time.perf_counter()
    for index, seed in enumerate(range(args.seed, args.seed + args.seeds)):
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
        for side, name in vs_trl_schedule(args, first=index):
            row = isolated(train_for_cpu_budget if side == "ours" else train_trl_for_cpu_budget, name, seed_args)
            if row is None:
                return  # TRL is not installed: the message is printed
            runs.setdefault((side, name), []).append(row)
            print_row({**row, "agent": row["agent"] if args.seeds == 1 else f"{row['agent']} s{seed}"})
    print(f"wall time of the whole run: {(time.perf_counter() - start) / 60:.1f} min (with evaluation and "
          "process start-up)")
    rows = {side: [mean_row(r) for (s, _), r in runs.items() if s == side] for side in ("ours", "trl")}
    if args.seeds > 1:
        print(f"means over {args.seeds} seeds (change ± std over seeds):")
        for row in rows["ours"] + rows["trl"]:
            print_row(row)
            print(f"{'':>12}   change {row['change']:+.3f} ± {row['change_std']:.3f}")
    for checkpoint_min in sorted({p["checkpoint_min"] for r in rows["ours"] + rows["trl"] for p in r["curve"]}):
        at = {side: [{**p, "agent": r["agent"]} for r in side_rows for p in r["curve"]
                     if p["checkpoint_min"] == checkpoint_min] for side, side_rows in rows.items()}
        ratio = learning_ratio(best_gain(at["ours"], args.max_kl), best_gain(at["trl"], args.max_kl))
        print(f"learning_vs_trl after {checkpoint_min:.2f} CPU-min: {ratio:.2f}")
    ours, theirs = best_gain(rows["ours"], args.max_kl), best_gain(rows["trl"], args.max_kl)
    for side, best in (("ours", ours), ("TRL", theirs)):
        print(f"best of {side} within KL <= {args.max_kl:g} nats: "
              + ("none" if best is None else f"{best['agent']} {best['change']:+.3f} (KL {best['kl']:.2f})"))
    print(f"learning_vs_trl: {learning_ratio(ours, theirs):.2f}")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=None,
                        help=f"native agents (default: reinforce ppo rloo grpo; with --vs-trl: {' '.join(VS_TRL_AGENTS)})")
    parser.add_argument("--cpu-minutes", type=float, default=None,
                        help="training budget per agent (CPU-min; default 10, with --vs-trl 0.5)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--num-envs", type=int, default=64, help="completions per iteration")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="β")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="override every agent's default α (and TRL's, default 1e-4)")
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts")
    parser.add_argument("--eval-samples", type=int, default=2, help="samples per held-out prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1,
                        help="--vs-trl: run every row with seeds --seed .. --seed+N-1 (the side that goes first "
                             "alternates between seeds); the ratios compare the means over seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (every row)")
    parser.add_argument("--vs-trl", action="store_true", help="also train TRL's trainers; last line learning_vs_trl")
    parser.add_argument("--trl-trainers", nargs="+", default=VS_TRL_TRAINERS, choices=sorted(TRL_TRAINERS))
    parser.add_argument("--max-kl", type=float, default=MAX_KL,
                        help="--vs-trl: only rows within this KL (nats / completion) count for the last line")
    parser.add_argument("--eval-at", type=float, nargs="*", default=[],
                        help="also evaluate at these fractions of the budget, e.g. 0.25 0.5 (evaluation time is "
                             "not charged to the budget); --vs-trl prints the ratio at each")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    args = parser.parse_args()
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args()
    if args.agents is None:
        args.agents = VS_TRL_AGENTS if args.vs_trl else ["reinforce", "ppo", "rloo", "grpo"]
    if args.cpu_minutes is None:
        args.cpu_minutes = 0.5 if args.vs_trl else 10.0
    if not args.cpu_minutes > 0:
        parser.error("--cpu-minutes must be > 0")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if not all(0 < f < 1 for f in args.eval_at):
        parser.error("--eval-at fractions must be in (0, 1): the end of the budget is always evaluated")
    return args


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(args.threads)
    for name in args.agents:
        agent_class(name)  # unknown names fail before anything runs
    print_header(args)
    if args.vs_trl:
        run_vs_trl(args)
        return
    rows = []
    for name in args.agents:
        rows.append(train_for_cpu_budget(name, args))
        print_row(rows[-1])
    failed = [r["agent"] for r in rows if not r["met"]]
    verdict = "every agent met" if not failed else f"NOT met by {', '.join(failed)}:"
    print(f"{verdict} change >= +{MIN_GAIN} at KL <= {MAX_KL} nats in {args.cpu_minutes:g} CPU-min")


if __name__ == "__main__":
    main()

"""The ``textenv`` command line.

    textenv train --agent NAME [--total-timesteps N] [--output DIR] [--config FILE] [--seed S] [--resume DIR]
    textenv eval CHECKPOINT [--num-prompts N] [--seed S]
    textenv collect --output FILE ...     # K completions per prompt, ranked by a gold scorer
    textenv label INPUT --output FILE     # rank completions by hand (keyboard, resumable)
    textenv train-rm --data FILE --output DIR   # Bradley-Terry preference reward model
    textenv pipeline --output DIR         # SFT? → collect → RM → PPO (+ β sweep) → eval.json + plots (resumable)

A YAML config file may set any of the flags (``agent``, ``total_timesteps``, ``output``, ``seed``, ...) plus
``env:`` (TextGenVectorEnv arguments) and ``agent_kwargs:`` (the agent's hyper-parameters); flags given on
the command line override the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

#: Defaults of the main job (``textenv train --agent reinforce`` on the embedded model and VADER reward).
TRAIN_DEFAULTS: dict[str, Any] = {
    "agent": "reinforce",
    "total_timesteps": 50_000,
    "output": None,  # runs/<agent>
    "seed": 0,
    "checkpoint_every": 25,
    "eval_prompts": 128,
    "env": {"num_envs": 32, "max_new_tokens": 32, "kl_coef": 0.05},
    "agent_kwargs": {},
}


def load_config(path: str | None) -> dict[str, Any]:
    """Read a YAML config; unknown top-level keys are rejected with the valid ones."""
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"--config {path}: no such file")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"--config {path}: the file must hold a mapping of option: value")
    unknown = sorted(set(data) - set(TRAIN_DEFAULTS))
    if unknown:
        raise SystemExit(f"--config {path}: unknown key(s) {unknown}; valid keys: {sorted(TRAIN_DEFAULTS)}")
    return data


def resolve_train_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults ← config file ← command-line flags (``env`` and ``agent_kwargs`` merge key by key)."""
    config = load_config(args.config)
    options = {**TRAIN_DEFAULTS, **config}
    options["env"] = {**TRAIN_DEFAULTS["env"], **config.get("env", {})}
    options["agent_kwargs"] = {**config.get("agent_kwargs", {})}
    for key in ("agent", "total_timesteps", "output", "seed"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if options["output"] is None:
        options["output"] = str(Path("runs") / options["agent"])
    return options


def build_env(env_kwargs: dict[str, Any], group_size: int = 1):
    """The training env: a native ``TextGenVectorEnv`` with synchronised episodes."""
    from textenv.vector_env import TextGenVectorEnv

    kwargs = {"autoreset_mode": "disabled", **env_kwargs}
    kwargs.setdefault("group_size", group_size)
    return TextGenVectorEnv(**kwargs)


def held_out_eval(env, num_prompts: int, seed: int) -> dict[str, Any]:
    """Gold reward (the env's reward model) and KL to the env's reference on held-out prompts."""
    from textenv.evaluation import evaluate_policy
    from textenv.prompts import load_prompts

    return evaluate_policy(
        env.policy,
        prompts=load_prompts("builtin", "eval")[:num_prompts],
        gold=env.reward_model,
        reference=env.reference if env.reference is not None else env.spec_kwargs.get("model", "textenv/default"),
        tokenizer=env.tokenizer,
        max_new_tokens=env.max_new_tokens,
        seed=seed,
        batch_size=64,
        max_table_rows=5,
        device=env.device,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from textenv.agents import agent_class, make_agent

    options = resolve_train_options(args)
    cls = agent_class(options["agent"])  # fails early on an unknown agent name
    output = Path(options["output"])
    output.mkdir(parents=True, exist_ok=True)
    env_kwargs = dict(options["env"])
    env = build_env(env_kwargs, group_size=cls.default_group_size)
    print(f"textenv train: agent={cls.name} env={env_kwargs} output={output}")
    agent = make_agent(options["agent"], env, seed=options["seed"], tensorboard_log=str(output / "tensorboard"),
                       **options["agent_kwargs"])
    if args.resume:
        agent.load_state(args.resume)
        print(f"resumed from {args.resume} at step {agent.num_timesteps}")
    eval_seed = options["seed"] + 10_000
    before = held_out_eval(env, options["eval_prompts"], eval_seed)
    print(f"held-out before: mean {env.reward_model.__class__.__name__} = {before['gold_reward']:+.3f}, "
          f"KL = {before['kl']:.3f} nats ({options['eval_prompts']} prompts)")
    start = time.perf_counter()
    agent.learn(
        options["total_timesteps"],
        progress_bar=not args.no_progress,
        checkpoint_dir=output / "checkpoint",
        checkpoint_every=options["checkpoint_every"],
    )
    minutes = (time.perf_counter() - start) / 60
    after = held_out_eval(env, options["eval_prompts"], eval_seed)
    print(f"held-out after:  mean {env.reward_model.__class__.__name__} = {after['gold_reward']:+.3f}, "
          f"KL = {after['kl']:.3f} nats; change {after['gold_reward'] - before['gold_reward']:+.3f} "
          f"in {minutes:.1f} min, {agent.num_timesteps} tokens")
    for row in after["samples"][:3]:
        print(f"  {row['prompt']} | {row['completion']}")
    summary = {"agent": cls.name, "before": before, "after": after, "minutes": minutes,
               "num_timesteps": agent.num_timesteps, "options": options}
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"checkpoint: {output / 'checkpoint'}   tensorboard: {output / 'tensorboard'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from textenv.evaluation import evaluate_policy, save_eval_json

    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "agent.json").is_file():
        raise SystemExit(f"{checkpoint} is not a checkpoint directory (no agent.json); pass DIR/checkpoint")
    from textenv.prompts import load_prompts

    result = evaluate_policy(checkpoint, prompts=load_prompts("builtin", "eval")[: args.num_prompts],
                             seed=args.seed, max_table_rows=5)
    save_eval_json(checkpoint.parent / "eval.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textenv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a policy on TextGen-v0")
    train.add_argument("--agent", help="algorithm name (see `textenv.agents.AGENTS`)")
    train.add_argument("--total-timesteps", dest="total_timesteps", type=int, help="tokens to generate in training")
    train.add_argument("--output", help="directory for TensorBoard events, checkpoints and summary.json")
    train.add_argument("--config", help="YAML file with options, `env:` and `agent_kwargs:`")
    train.add_argument("--seed", type=int)
    train.add_argument("--resume", help="checkpoint directory to continue from exactly")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint on held-out prompts")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--num-prompts", type=int, default=128)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(func=cmd_eval)

    from textenv import collect as collect_cmd
    from textenv import label as label_cmd
    from textenv.reward_models import preference as preference_rm

    collect = sub.add_parser("collect", help="sample K completions per prompt and rank them with a gold reward model")
    collect_cmd.add_arguments(collect)
    collect.set_defaults(func=collect_cmd.run)

    label = sub.add_parser("label", help="rank completions by hand in the terminal (resumable)")
    label_cmd.add_arguments(label)
    label.set_defaults(func=label_cmd.run)

    train_rm = sub.add_parser("train-rm", help="train a Bradley-Terry preference reward model")
    preference_rm.add_arguments(train_rm)
    train_rm.set_defaults(func=preference_rm.run)

    from textenv import pipeline as pipeline_cmd

    pipeline = sub.add_parser("pipeline", help="the whole InstructGPT pipeline in one resumable command")
    pipeline_cmd.add_arguments(pipeline)
    pipeline.set_defaults(func=pipeline_cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"textenv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

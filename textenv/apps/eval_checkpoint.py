"""``textenv eval``: evaluate a checkpoint with the settings it was trained with (its ``agent.json``: reward model,
base model, max_new_tokens); flags override. The evaluation itself is
:func:`~textenv.apps.evaluation.evaluate_policy`; ``--html FILE`` also writes the page of held-out episodes token by
token (:func:`~textenv.apps.evaluation.save_lens_page`, docs/lens.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from textenv.apps.arguments import COUNT, POSITIVE, SEED
from textenv.apps.run_directory import read_agent_json, resolve_checkpoint
from textenv.validation import InputError

#: Episodes on the ``--html`` page unless ``--html-episodes`` says otherwise.
HTML_EPISODES = 32

DESCRIPTION = (
    "Sample from a checkpoint's policy on held-out prompts and report the gold reward, the KL to the base model, "
    "perplexity and distinct-n (--html: also a page of episodes with tokens coloured by their KL). By default it uses what the checkpoint was trained with (agent.json: reward model, "
    "base model, max_new_tokens); flags override."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``textenv eval``."""
    parser.description = DESCRIPTION
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="RUN/checkpoint (or the run directory RUN)")
    parser.add_argument("--output", help="results JSON to write (default: eval.json beside the checkpoint, i.e. "
                                         "RUN/eval.json); an existing file is replaced only with --overwrite, "
                                         "and only if textenv wrote it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing results file (or --html page) of textenv")
    parser.add_argument("--html", metavar="FILE",
                        help="also write one self-contained HTML page of held-out episodes, tokens coloured by their "
                             "per-token KL to the reference (hover or the tables give token, log π, log π_ref, KL_t); "
                             "an existing file is replaced only with --overwrite, and only if textenv wrote it")
    parser.add_argument("--html-episodes", dest="html_episodes", type=COUNT,
                        help=f"episodes shown on the --html page (default: {HTML_EPISODES})")
    parser.add_argument("--reward-model", dest="reward_model",
                        help="gold reward model spec (default: the one the checkpoint was trained with)")
    parser.add_argument("--reference", help="base model for KL and perplexity (default: the checkpoint's base model)")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=COUNT,
                        help="completion length limit (default: the checkpoint's)")
    parser.add_argument("--num-prompts", dest="num_prompts", type=COUNT, default=128,
                        help="held-out prompts to use (default: %(default)s)")
    parser.add_argument("--num-samples", dest="num_samples", type=COUNT, default=1,
                        help="completions per prompt (default: %(default)s)")
    parser.add_argument("--prompts", help="prompt source: 'builtin' or a .txt/.jsonl file (default: builtin)")
    parser.add_argument("--prompt-split", dest="prompt_split", default="eval", choices=["train", "eval"],
                        help="split of the built-in prompts (default: %(default)s, the held-out one)")
    parser.add_argument("--temperature", type=POSITIVE, default=1.0,
                        help="sampling temperature; 1 gives an unbiased KL estimate (default: %(default)s)")
    parser.add_argument("--batch-size", dest="batch_size", type=COUNT, default=32,
                        help="rows generated together (default: %(default)s)")
    parser.add_argument("--seed", type=SEED, default=0, help="seeds the sampler (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda... (default: %(default)s)")


def eval_settings(args: argparse.Namespace, checkpoint: Path) -> dict[str, Any]:
    """The arguments of :func:`~textenv.apps.evaluation.evaluate_policy` for ``textenv eval``: what the checkpoint
    was trained with (its ``agent.json`` ``"env"``), overridden by the flags given. Refuses a reward model or
    base model that ``agent.json`` cannot rebuild (a Python object at training time) unless the flag is given."""
    meta = read_agent_json(checkpoint)
    env = meta.get("env") if isinstance(meta.get("env"), dict) else {}
    gold = _flag_or_recorded(args.reward_model, env.get("reward_model"), InputError(
        f"{checkpoint} was trained with a reward model given as a Python object, which agent.json cannot rebuild; "
        "pass --reward-model SPEC (e.g. --reward-model vader, or the spec of the model you trained with)"))
    reference = _flag_or_recorded(args.reference, env.get("model"), InputError(
        f"{checkpoint} was trained from a model given as a Python object, which agent.json cannot name; pass "
        "--reference MODEL (the base model the policy started from) to measure KL"))
    recorded_length = env.get("max_new_tokens", 32)
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else recorded_length
    kl_coef = env.get("kl_coef")
    return {
        "gold": gold, "reference": reference, "max_new_tokens": max_new_tokens,
        "kl_coef": kl_coef if isinstance(kl_coef, (int, float)) and not isinstance(kl_coef, bool) else None,
        "num_timesteps": meta.get("num_timesteps"), "agent": meta.get("agent"),
        "trained_prompts": env.get("prompts", "builtin"),
    }


def run(args: argparse.Namespace) -> int:
    """``textenv eval``: evaluate a checkpoint with the settings it was trained with (flags override)."""
    from textenv.agents.base import CHECKPOINT_KIND
    from textenv.apps.evaluation import check_results_path, lens_page_writer
    from textenv.checkpoint import verify_directory

    checkpoint = resolve_checkpoint(args.checkpoint, "CHECKPOINT")
    verify_directory(checkpoint, CHECKPOINT_KIND)  # truncated or corrupted weights: a clear error, not a traceback
    settings = eval_settings(args, checkpoint)
    output = Path(args.output) if args.output is not None else checkpoint.parent / "eval.json"
    check_results_path(output, overwrite=args.overwrite)
    page = _html_path(args, output)
    if page is not None:
        check_results_path(page, overwrite=args.overwrite, flag="--html", writer_of=lens_page_writer,
                           example="eval.html")
    prompts = args.prompts if args.prompts is not None else "builtin"
    if args.prompts is None and settings["trained_prompts"] != "builtin":
        print(f"textenv eval: the checkpoint trained on prompts={settings['trained_prompts']!r}; evaluating on the "
              f"built-in held-out prompts (pass --prompts to choose)", file=sys.stderr)

    from textenv.apps.evaluation import evaluate_policy, save_eval_json, save_lens_page
    from textenv.prompts import load_prompts

    result = evaluate_policy(
        checkpoint, prompts=load_prompts(prompts, args.prompt_split)[: args.num_prompts], gold=settings["gold"],
        reference=settings["reference"], num_samples=args.num_samples, max_new_tokens=settings["max_new_tokens"],
        temperature=args.temperature, seed=args.seed, batch_size=args.batch_size, max_table_rows=5,
        device=args.device, lens_episodes=0 if page is None else args.html_episodes or HTML_EPISODES,
    )
    beta = settings["kl_coef"]  # the run's β: objective = gold − β·KL, the quantity its training maximised
    objective = None if beta is None else result["gold_reward"] - beta * result["kl"]
    result["settings"].update({"prompts": str(prompts), "prompt_split": args.prompt_split, "kl_coef": beta})
    result = {"command": "textenv eval", "checkpoint": str(checkpoint), "agent": settings["agent"],
              "num_timesteps": settings["num_timesteps"], "objective": objective, **result}
    lens = result.pop("lens", None)
    save_eval_json(output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2, default=str))
    print(f"textenv eval: wrote {output}", file=sys.stderr)
    if page is not None:
        save_lens_page(page, {**result, "lens": lens}, title=f"textenv eval: {checkpoint}")
        print(f"textenv eval: wrote {page}", file=sys.stderr)
    return 0


def _html_path(args: argparse.Namespace, output: Path) -> Path | None:
    """The ``--html`` page to write (``None``: none); refuses ``--html-episodes`` without ``--html`` and a page at
    the results file's path."""
    if args.html is None:
        if args.html_episodes is not None:
            raise InputError("--html-episodes sets how many episodes the --html page shows: add --html FILE "
                             "(e.g. --html eval.html) or drop --html-episodes")
        return None
    page = Path(args.html)
    if page.absolute() == output.absolute():
        raise InputError(f"--html {page} is also the results file (--output); give the page its own name, "
                         f"e.g. --html {output.with_suffix('.html')}")
    return page


def _flag_or_recorded(flag: str | None, recorded: Any, unrecorded: InputError) -> str:
    """The flag's value when given, else the name ``agent.json`` recorded; ``unrecorded`` when it recorded none
    (a Python object at training time)."""
    if flag is not None:
        return flag
    if isinstance(recorded, str):
        return recorded
    raise unrecorded

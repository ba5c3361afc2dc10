"""``textenv collect``: sample K completions per prompt from a policy and rank them with a gold scorer.

This is the synthetic labeller of RLHF experiments: a "gold" reward model (default VADER) plays the human
who ranks K completions of each prompt, and the rankings train a preference reward model
(docs/rl-framing.md#the-reward-model) whose over-optimisation can then be measured against the gold.

Sampling is batched: a :class:`~textenv.vector_env.TextGenVectorEnv` with ``group_size=K``,
``autoreset_mode="disabled"`` and ``kl_coef=0`` (no reference model is loaded) plays ``batch_prompts × K``
episodes at once with :func:`~textenv.rollout.collect_rollout`; the env scores every completion with the
gold model, so its ``rm_score`` is the gold score.

Per prompt the K completions are de-duplicated and sorted by gold score, best first. Then:

* ``min_gap`` (≥ 0): walking from the best, a completion is kept only if its gold score is **more than**
  ``min_gap`` below the last kept one. Near-equal scores are an arbitrary (noisy) ranking, so they are
  dropped; ``min_gap=0`` drops exact ties only (VADER gives many neutral texts exactly 0). A prompt left
  with fewer than 2 completions is skipped.
* ``noise`` = p: one pass from best to worst swaps each adjacent pair with probability p, mimicking
  inconsistent human labellers (a swapped completion can move down further).

Output: the preference JSONL of :mod:`textenv.preferences`, ranked form
``{"prompt", "ranked": [best, ..., worst], "meta": {"gold", "scores", "model"}}``; with ``unranked=True``
the ``{"prompt", "completions": [...]}`` sets to be ranked by a person with ``textenv label`` (no gold
scoring, no filtering).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textenv.apps.arguments import COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED, integer_at_least
from textenv.models.loading import DEFAULT_MODEL
from textenv.preferences import CompletionSet, JsonlWriter, PreferenceRanking, load_completion_sets, load_preferences
from textenv.prompts import load_prompts
from textenv.reward_models import make_reward_model
from textenv.rollout import collect_rollout
from textenv.validation import InputError, check_int, check_number, check_positive
from textenv.vector_env import TextGenVectorEnv


@dataclass
class CollectResult:
    """What :func:`collect_preferences` produced: the rows and how many prompts were skipped."""

    rows: list[PreferenceRanking | CompletionSet] = field(default_factory=list)
    num_prompts: int = 0
    skipped: int = 0
    num_completions: int = 0
    seconds: float = 0.0


def choose_prompts(pool: Sequence[str], num_prompts: int, rng: np.random.Generator) -> list[str]:
    """``num_prompts`` prompts from ``pool``: without replacement while the pool lasts, then again."""
    chosen: list[str] = []
    while len(chosen) < num_prompts:
        order = rng.permutation(len(pool))[: num_prompts - len(chosen)]
        chosen.extend(pool[i] for i in order)
    return chosen


def rank_completions(
    completions: Sequence[str], scores: Sequence[float], min_gap: float = 0.0, noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[list[str], list[float]]:
    """Gold ranking of one prompt's completions (best first) after de-duplication, the ``min_gap`` filter and
    adjacent-swap ``noise``; returns (ranked completions, their gold scores). May return fewer than 2."""
    check_number("min_gap", min_gap, low=0.0)
    check_number("noise", noise, low=0.0, high=1.0)
    best: dict[str, float] = {}
    for text, score in zip(completions, scores):
        best.setdefault(text, float(score))
    ordered = sorted(best.items(), key=lambda item: -item[1])
    kept: list[tuple[str, float]] = []
    for text, score in ordered:
        if not kept or kept[-1][1] - score > min_gap:
            kept.append((text, score))
    if noise > 0 and len(kept) > 1:
        rng = rng if rng is not None else np.random.default_rng()
        for i in range(len(kept) - 1):
            if rng.random() < noise:
                kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return [t for t, _ in kept], [s for _, s in kept]


def collect_preferences(
    model: Any = DEFAULT_MODEL,
    prompts: Any = "builtin",
    prompt_split: str = "train",
    num_prompts: int = 400,
    k: int = 4,
    max_new_tokens: int = 32,
    gold: Any = "vader",
    output: str | os.PathLike | None = None,
    seed: int = 0,
    noise: float = 0.0,
    min_gap: float = 0.0,
    unranked: bool = False,
    batch_prompts: int = 16,
    temperature: float = 1.0,
    device: str = "auto",
    verbose: int = 0,
) -> CollectResult:
    """Sample ``k`` completions for each of ``num_prompts`` prompts and rank them with ``gold``.

    Args:
        model: policy name/path (default: the embedded model) or a loaded causal LM.
        prompts: ``"builtin"``, a ``.txt`` / ``.jsonl`` file or a list of prompts; ``prompt_split`` picks the
            built-in split.
        num_prompts: prompts to label (drawn without replacement while the set lasts, then repeated).
        k: completions per prompt (K ≥ 2).
        max_new_tokens: completion length limit.
        gold: the synthetic labeller, any ``reward_model`` spec (name such as ``"vader"``, object, callable).
        output: JSONL file to append to, one flushed line per prompt (``None``: only return the rows).
        seed: seeds prompt choice, sampling and label noise.
        noise: probability of swapping each adjacent rank pair (see module docstring).
        min_gap: drop completions within ``min_gap`` gold score of a better kept one (see module docstring).
        unranked: write ``{"prompt", "completions"}`` sets for ``textenv label`` instead of gold rankings.
        batch_prompts: prompts per batched rollout (``batch_prompts × k`` env rows).
        temperature: sampling temperature (1 = the policy's distribution).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
    """
    _check_numbers(num_prompts, k, batch_prompts, max_new_tokens, seed, min_gap, noise, temperature)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    pool = load_prompts(prompts, prompt_split)
    chosen = choose_prompts(pool, num_prompts, rng)
    batch_prompts = min(batch_prompts, num_prompts)
    scorer = _zero_scores if unranked else make_reward_model(gold)  # an unknown gold name fails before the policy loads
    env = TextGenVectorEnv(
        num_envs=batch_prompts * k, model=model, reward_model=scorer, prompts=pool,
        max_new_tokens=max_new_tokens, kl_coef=0.0, group_size=k, autoreset_mode="disabled", device=device,
    )
    env.reset(seed=seed)
    generator = torch.Generator(device=env.device).manual_seed(seed)
    labeller = _Labeller(model, gold, unranked, min_gap, noise, rng)
    result = CollectResult()
    writer = JsonlWriter(output) if output is not None else None
    try:
        for batch_start in range(0, len(chosen), batch_prompts):
            batch = chosen[batch_start : batch_start + batch_prompts]
            padded = batch + [batch[-1]] * (batch_prompts - len(batch))  # the env has a fixed number of rows
            rollout = collect_rollout(env, generator, [p for p in padded for _ in range(k)], temperature)
            for j, prompt in enumerate(batch):
                texts = rollout.texts[j * k : (j + 1) * k]
                row = labeller.row(prompt, texts, rollout.rm_score[j * k : (j + 1) * k])
                result.num_prompts += 1
                result.num_completions += len(texts)
                if row is None:
                    result.skipped += 1
                    continue
                result.rows.append(row)
                if writer is not None:
                    writer.write(row)
            if verbose:
                print(f"collect: {result.num_prompts}/{num_prompts} prompts, {len(result.rows)} rows, "
                      f"{result.skipped} skipped", file=sys.stderr, flush=True)
    finally:
        if writer is not None:
            writer.close()
    result.seconds = time.perf_counter() - start
    return result


def _check_numbers(num_prompts: Any, k: Any, batch_prompts: Any, max_new_tokens: Any, seed: Any, min_gap: Any,
                   noise: Any, temperature: Any) -> None:
    """:class:`InputError` naming the first bad number of :func:`collect_preferences`, before anything loads."""
    for name, value, minimum in (("num_prompts", num_prompts, 1), ("k", k, 2), ("batch_prompts", batch_prompts, 1),
                                 ("max_new_tokens", max_new_tokens, 1), ("seed", seed, 0)):
        check_int(name, value, minimum)
    check_number("min_gap", min_gap, low=0.0)
    check_number("noise", noise, low=0.0, high=1.0)
    check_positive("temperature", temperature)


class _Labeller:
    """Turns one prompt's K completions into a row: a gold ranking (:func:`rank_completions`), or with
    ``unranked`` the set of distinct completions; ``None`` when fewer than 2 remain."""

    def __init__(self, model: Any, gold: Any, unranked: bool, min_gap: float, noise: float,
                 rng: np.random.Generator) -> None:
        name = model if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", type(model).__name__)
        self.model_name = str(name)
        self.gold_name = str(gold if isinstance(gold, str) else type(gold).__name__)
        self.unranked, self.min_gap, self.noise, self.rng = unranked, min_gap, noise, rng

    def row(self, prompt: str, texts: Sequence[str],
            scores: Sequence[float]) -> PreferenceRanking | CompletionSet | None:
        if self.unranked:
            distinct = list(dict.fromkeys(texts))
            return CompletionSet(prompt, tuple(distinct), {"model": self.model_name}) if len(distinct) >= 2 else None
        ranked, ranked_scores = rank_completions(texts, scores, self.min_gap, self.noise, self.rng)
        if len(ranked) < 2:
            return None
        meta = {"gold": self.gold_name, "scores": [round(s, 6) for s in ranked_scores], "model": self.model_name}
        if self.noise:
            meta["noise"] = self.noise
        return PreferenceRanking(prompt, tuple(ranked), meta)


def _zero_scores(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """Placeholder reward for ``--unranked`` (nothing is scored)."""
    return np.zeros(len(completions))


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``textenv collect`` (every number is checked by its ``type=`` before anything loads)."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="policy name or save_pretrained path (default: %(default)s)")
    parser.add_argument("--prompts", default="builtin", help="'builtin' or a .txt/.jsonl prompt file (default: %(default)s)")
    parser.add_argument("--prompt-split", default="train", choices=["train", "eval"], help="built-in prompt split")
    parser.add_argument("--num-prompts", type=COUNT, default=400, help="prompts to label (default: %(default)s)")
    parser.add_argument("--k", type=integer_at_least(2), default=4,
                        help="completions per prompt, K >= 2 (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=COUNT, default=32, help="completion length limit (default: %(default)s)")
    parser.add_argument("--gold", default="vader",
                        help="gold reward model ranking the completions, any reward_model name (default: %(default)s)")
    parser.add_argument("--output", required=True,
                        help="preference JSONL file to write; an existing file is refused unless --append")
    parser.add_argument("--append", action="store_true",
                        help="append to an existing --output (it must already be a file of this format)")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--noise", type=PROBABILITY, default=0.0,
                        help="probability of swapping each adjacent pair of ranks (labeller noise, default: %(default)s)")
    parser.add_argument("--min-gap", type=NON_NEGATIVE, default=0.0,
                        help="drop completions whose gold score is within this of a better kept one; 0 drops exact "
                             "ties (default: %(default)s)")
    parser.add_argument("--unranked", action="store_true",
                        help="write unranked {prompt, completions} sets for `textenv label` instead of gold rankings")
    parser.add_argument("--batch-prompts", type=COUNT, default=16, help="prompts per batched rollout (default: %(default)s)")
    parser.add_argument("--temperature", type=POSITIVE, default=1.0, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda...")


def check_output(output: Path, append: bool, unranked: bool) -> None:
    """Refuse (:class:`InputError`) an ``--output`` that is a directory, or an existing non-empty file without
    ``--append``, or, with ``--append``, a file that is not already of the format being written."""
    if output.is_dir():
        raise InputError(f"--output {output} is a directory; give a .jsonl file name")
    if not output.exists() or output.stat().st_size == 0:
        return
    if not append:
        raise InputError(f"--output {output} already exists; pass --append to add to it or choose another --output")
    kind, load = ("unranked completion-set", load_completion_sets) if unranked else ("preference", load_preferences)
    try:
        load(output)
    except ValueError as err:  # the loaders' parse errors (InputError, or ValueError from older versions)
        raise InputError(f"--append: {output} is not a {kind} JSONL file, so textenv will not add to it "
                         f"({' '.join(str(err).split())})") from None


def run(args: argparse.Namespace) -> int:
    """Execute ``textenv collect``; returns the process exit code."""
    output = Path(args.output)
    check_output(output, args.append, args.unranked)
    if args.prompts != "builtin" and not Path(args.prompts).is_file():
        raise InputError(f"--prompts {args.prompts}: no such file; give 'builtin' or a .txt/.jsonl prompt file")
    result = collect_preferences(
        model=args.model, prompts=args.prompts, prompt_split=args.prompt_split, num_prompts=args.num_prompts,
        k=args.k, max_new_tokens=args.max_new_tokens, gold=args.gold, output=output, seed=args.seed,
        noise=args.noise, min_gap=args.min_gap, unranked=args.unranked, batch_prompts=args.batch_prompts,
        temperature=args.temperature, device=args.device, verbose=1,
    )
    kind = "completion sets" if args.unranked else "rankings"
    print(f"wrote {len(result.rows)} {kind} ({result.skipped} prompts skipped) to {output} "
          f"in {result.seconds:.1f} s", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m textenv.apps.collect`` is ``textenv collect``."""
    from textenv.apps.cli import main as cli_main

    return cli_main(["collect", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

"""``textenv pipeline``: the whole InstructGPT recipe in one offline, resumable command, and its measurement.

    SFT (optional) → collect comparisons → train a reward model → PPO against it with a KL penalty → evaluate

Every stage reuses the project's building blocks (:mod:`textenv.apps.collect`, :mod:`textenv.agents.sft`,
:mod:`textenv.reward_models.preference`, :mod:`textenv.agents.ppo`, :mod:`textenv.apps.evaluation`) and writes its
output into ``DIR``; a stage whose output already exists is skipped, so an interrupted run continues where it
stopped and a finished one is re-summarised in seconds. Layout of ``DIR``:

==============================  =========================================================================
``preferences.jsonl``           stage *collect*: K completions of ``num_prompts`` **training** prompts from
                                the base model, ranked by the gold scorer (the synthetic labeller)
``eval_preferences.jsonl``      the same on the held-out **eval** prompts; used only to measure the reward
                                model's pair accuracy (the RM never trains on it)
``sft/``                        stage *sft* (``--sft`` only): agent checkpoint, policy in ``sft/policy``
``reward_model/``               stage *rm*: the Bradley–Terry reward model (``PreferenceRewardModel.save``),
                                normalised to mean 0, std 1 on the training completions (the base model's)
``ppo/step-N/``                 stage *ppo*: the main run at ``beta``; one checkpoint after ≥ N tokens for
                                every N in ``eval_every, 2·eval_every, ..., ppo_timesteps`` (and at
                                ``sweep_timesteps``); a longer ``ppo_timesteps`` resumes from the last one.
                                Only the last keeps ``trainer_state.json/.safetensors`` (optimizer state, 2/3
                                of the size); the others hold the policy and value head (evaluable, not
                                resumable)
``sweep/beta-B/step-N/``        stage *sweep*: one shorter run (``sweep_timesteps``) per other β of ``betas``
``evaluations.json``            cache of every policy evaluation (keyed by checkpoint and its mtime)
``eval.json``                   the summary (keys below); ``reward_kl_frontier.png``, ``proxy_vs_gold.png``
==============================  =========================================================================

Choices:

* **SFT** (off by default): there is no separate demonstration set, so SFT is behaviour cloning of the best
  ranked completion of every collected prompt (best-of-K "rejection-sampling" fine-tuning), i.e. the
  :class:`~textenv.agents.sft.SFT` agent on ``preferences.jsonl``. With SFT the reward model's backbone, the PPO
  initial policy and π_ref are the SFT model (InstructGPT); the comparisons still come from the base model.
* **β sweep within the budget**: the main run trains ``ppo_timesteps`` tokens at ``beta`` and is evaluated at
  every checkpoint (the proxy-vs-gold curve). Every other β of ``betas`` gets a run of ``sweep_timesteps``
  tokens, evaluated once. The main β's frontier point is the main run's checkpoint at ``sweep_timesteps``:
  runs are seeded, so it is exactly what a separate sweep run at that β would produce. The frontier is gold
  reward against KL at one fixed token budget, one point per β (DiscoPOP Fig. 5 style), plus the initial
  policy at KL = 0.
* **Normalised reward model, so β means something**: the RM's scores are divided by their standard deviation
  over the reference completions of the training prompts (the collected ones; mean 0 as in InstructGPT), so
  ``beta`` is in units of "one standard deviation of the reference policy's reward" for every RM. Before this,
  the RM's raw spread (std ≈ 5) made β = 0.05 barely bind (KL ≈ 30 nats). An RM directory saved by an
  earlier version has no statistics and is used unnormalised (the log says so).
* **Gold labeller** ``fluent-sentiment`` (:mod:`textenv.reward_models.fluent_sentiment`): VADER minus a
  repetition penalty minus a penalty for text the base model finds implausible (NLL above 2 nats/token), so
  the degenerate text PPO finds at large KL scores low, as it would with a person: over-optimisation is
  visible (docs/overoptimisation.md). ``--gold vader`` gives the earlier behaviour.
* **Evaluation** always uses the built-in held-out ``eval`` prompts (first ``eval_prompts`` of them), one
  sample each at temperature 1: ``gold`` is the gold scorer, ``proxy`` the learned RM, ``kl`` the
  k1 estimate of KL(π‖π_ref) in nats per sequence, π_ref being PPO's reference (SFT model or base model).
  ``proxy_vs_gold.png`` plots both against √KL (Gao et al. 2022, Fig. 1) over the main run's checkpoints and
  the sweep's βs; ``overoptimisation`` in ``eval.json`` names the gold peak and the policies past it that the
  proxy scores higher and the gold lower.

``eval.json`` keys: ``rm_pair_accuracy`` (held-out eval-prompt comparisons), ``rm_train_pair_accuracy``,
``gold_before`` / ``proxy_before`` (the base model), ``gold_sft`` / ``proxy_sft`` (``None`` without SFT),
``gold_after`` / ``proxy_after`` / ``kl`` (last checkpoint of the main run), ``best`` (the main-run checkpoint
with the highest gold reward: ``gold_reward``, ``proxy_reward``, ``kl``, ``num_timesteps``, ``checkpoint``),
``gold_after_best``, ``gold_gain_best`` (= ``gold_after_best − gold_before``), ``checkpoints`` (the main run,
per checkpoint), ``frontier`` (per β), ``overoptimisation`` (:func:`overoptimisation`), ``stages`` (status
ran/skipped, wall and CPU seconds), ``plots``,
``samples``, ``settings``, ``cpu_minutes`` / ``wall_minutes`` (of this invocation: a rerun that skips every
stage reports only its own few seconds).

Measured (``OMP_NUM_THREADS=1 textenv pipeline --output DIR``, defaults, seed 0, a 2-core CPU shared with other
jobs): 3.9 CPU-minutes (10 min wall); RM pair accuracy 0.894 on 877 held-out eval-prompt pairs (raw RM std 4.9 on the
training completions, normalised to 1); gold (fluent-sentiment) −0.035 → +0.854 at the best checkpoint (+0.847 at
the last, proxy +1.43, KL 3.8 nats). The β = 0 run's gold peaks at +0.78 (8,417 tokens, KL 6) and falls to −1.14
(KL 122) while its proxy rises from +1.39 to +1.92: over-optimisation. The frontier at 12,288 tokens runs from
β = 1 (gold +0.23, KL 0.6) through β = 0.1 (+0.81, KL 3.9) to β = 0 (+0.67, KL 18.7). Before normalisation and
this gold (VADER, raw RM, β = 0.05) the main run ended at KL ≈ 29–31 nats, gold (VADER) −0.011 → +0.978, and VADER
never turned down although distinct-2 fell from 0.64 to 0.28. Per checkpoint: docs/overoptimisation.md. With
``--sft`` (same comparisons; measured on an earlier version, VADER gold) SFT alone lifted gold to +0.58, but PPO's
best checkpoint was no better (+0.976) and the RM slightly worse (0.900), for ~0.5 more CPU-minute: so SFT is off
by default.

To redo a stage delete its output and every later stage's output (a stage never checks that its inputs are
newer than its output).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

from textenv.apps.arguments import add_config_arguments
from textenv.config import Config, Flag, Integer, Number, Seed, option
from textenv.models.loading import DEFAULT_MODEL
from textenv.prompts import builtin_prompts
from textenv.validation import InputError

SFT_SECTION = "sft (behaviour cloning of each prompt's best-ranked completion)"
STAGES = ("collect", "sft", "rm", "ppo", "sweep", "overoptimise", "evaluate")
#: Every name the pipeline writes directly in ``DIR`` (module docstring); nothing else is ever written there.
OUTPUT_ENTRIES = ("preferences.jsonl", "eval_preferences.jsonl", "sft", "reward_model", "ppo", "sweep", "overoptimisation",
                  "evaluations.json", "eval.json", "reward_kl_frontier.png", "proxy_vs_gold.png")


@dataclass
class StageRecord:
    """What happened to one stage: ``"ran"``, ``"resumed"``, ``"skipped"`` (output existed) or ``"off"``."""

    status: str = "off"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class _Clock:
    """Wall and process-CPU seconds of a block (``process_time`` counts every thread of this process)."""

    def __enter__(self) -> Self:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu


# ---------------------------------------------------------------------------------------------- argument checks
def parse_betas(betas: str | Sequence[float] | None) -> list[float]:
    """``"0.02,0.1, 0.5"`` (or a sequence of numbers) → ``[0.02, 0.1, 0.5]``; ``""``/``"none"``/``None`` → ``[]``.

    Every β must be a finite number ≥ 0 and appear once.
    """
    if betas is None:
        return []
    if isinstance(betas, str):
        text = betas.strip()
        if text.lower() in ("", "none"):
            return []
        items: list[Any] = [part.strip() for part in text.split(",")]
    elif isinstance(betas, Sequence):
        items = list(betas)
    else:
        raise InputError(f"betas={betas!r} must be a comma-separated list such as '0.02,0.1,0.5' or a list of numbers")
    values = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise InputError(
                f"betas={betas!r}: {item!r} is not a number; give a comma-separated list such as '0.02,0.1,0.5'"
            ) from None
        if isinstance(item, bool) or not math.isfinite(value) or value < 0:
            raise InputError(f"betas={betas!r}: every β must be a finite number >= 0, got {item!r}")
        values.append(value)
    if len(set(values)) != len(values):
        raise InputError(f"betas={betas!r} lists a β twice; give each value once")
    return values


def checkpoint_targets(total: int, every: int, extra: Sequence[int] = ()) -> list[int]:
    """Token counts after which a run saves a checkpoint: ``every, 2·every, ... < total``, ``total``, and
    each of ``extra`` that is ≤ ``total``; sorted, without repeats.

    >>> checkpoint_targets(10, 4, extra=[6])
    [4, 6, 8, 10]
    """
    targets = set(range(every, total, every)) | {total} | {e for e in extra if e <= total}
    return sorted(targets)


class Betas:
    """The check of ``betas``: a comma-separated list, ``"none"`` or a sequence of distinct finite numbers >= 0
    (:func:`parse_betas`), kept as a tuple of floats. No ``parse``: ``--betas`` stays text until the pipeline
    checks it, so its error quotes the whole list."""

    description = "comma-separated numbers >= 0, or 'none'"

    def __call__(self, name: str, value: Any) -> None:
        parse_betas(value)

    def normalize(self, value: Any) -> tuple[float, ...]:
        return tuple(parse_betas(value))


@dataclass(frozen=True)
class PipelineConfig(Config):
    """The settings of :func:`run_pipeline` and ``textenv pipeline`` (one flag each): the embedded model,
    ``fluent-sentiment`` as the gold labeller, ~5 CPU-minutes in all (measurements in the module docstring)."""

    model: str = option(DEFAULT_MODEL, "base policy name or save_pretrained path")
    gold: str = option("fluent-sentiment", "gold reward model: the synthetic labeller and the evaluation target "
                                           "(default: VADER sentiment minus repetition and implausible-text "
                                           "penalties; 'vader': sentiment alone)")
    seed: int = option(0, "seeds every stage (collection, SFT, RM, PPO, evaluation sampling)", Seed())
    num_prompts: int = option(400, "training prompts to collect comparisons for", Integer(2), section="collect")
    k: int = option(4, "completions ranked per prompt, K >= 2", Integer(2), section="collect")
    max_new_tokens: int = option(32, "completion length limit (tokens) for every stage", Integer(1),
                                 section="collect")
    min_gap: float = option(0.0, "drop completions within this gold score of a better one", Number(low=0.0),
                            section="collect")
    noise: float = option(0.0, "labeller noise: probability of swapping adjacent ranks", Number(low=0.0, high=1.0),
                          section="collect")
    sft: bool = option(False, "run the SFT stage (behaviour cloning of each prompt's best-ranked completion)", Flag(),
                       section=SFT_SECTION, off_flag="--skip-sft")
    sft_epochs: int = option(2, "passes over the demonstrations", Integer(1), section=SFT_SECTION)
    sft_lr: float = option(1e-4, "Adam step size of SFT", Number(low=0, low_open=True), section=SFT_SECTION)
    rm_epochs: int = option(2, "reward-model training epochs", Integer(1), section="reward model")
    rm_lr: float = option(3e-4, "reward-model AdamW step size", Number(low=0, low_open=True), section="reward model")
    beta: float = option(0.1, "KL coefficient β of the main PPO run (InstructGPT eq. 2), in units of the normalised "
                              "RM (std 1 on the reference completions)", Number(low=0.0), section="ppo")
    betas: str | Sequence[float] | None = option(
        (0.0, 0.02, 0.05, 0.2, 1.0), "the other βs of the frontier sweep: comma-separated ('none': no sweep); beta is "
                                    "added if absent", Betas(), section="ppo")
    ppo_timesteps: int = option(32_768, "tokens generated by the main PPO run", Integer(1), section="ppo")
    sweep_timesteps: int = option(12_288, "tokens of each sweep run, the frontier's budget (<= ppo_timesteps)",
                                  Integer(1), section="ppo")
    eval_every: int = option(4_096, "tokens between evaluated checkpoints of the main run", Integer(1), section="ppo")
    overoptimisation_timesteps: int = option(
        32_768, "tokens of an extra PPO run at β = 0 against the same RM, evaluated every eval_every tokens: where "
                "the gold turns down while the proxy rises (Gao et al. 2022); 0: no such run", Integer(0),
        section="ppo")
    num_envs: int = option(32, "episodes per PPO rollout", Integer(1), section="ppo")
    ppo_lr: float = option(1e-4, "PPO's Adam step size", Number(low=0, low_open=True), section="ppo")
    eval_prompts: int = option(150, "built-in held-out eval prompts to evaluate on, 1..150", Integer(1),
                               section="evaluation")
    device: str = option("auto", "auto, cpu, cuda...")

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        if self.sweep_timesteps > self.ppo_timesteps:
            raise InputError(
                f"sweep_timesteps={self.sweep_timesteps} exceeds ppo_timesteps={self.ppo_timesteps}: the main run's "
                "checkpoint at the sweep budget is the frontier point of the main β; lower sweep_timesteps or raise "
                "ppo_timesteps"
            )
        held_out = len(builtin_prompts("eval"))
        if self.eval_prompts > held_out:
            raise InputError(f"eval_prompts={self.eval_prompts} exceeds the {held_out} built-in held-out eval prompts")

    @property
    def unpenalised_run(self) -> bool:
        """Whether the pipeline makes the extra β = 0 run (on, unless 0 tokens or the main run is at β = 0)."""
        return self.overoptimisation_timesteps > 0 and self.beta != 0

    @property
    def sweep_betas(self) -> list[float]:
        """The βs of the sweep runs: ``betas`` without ``beta``, and without 0 when the β = 0 run reaches
        ``sweep_timesteps`` (its checkpoint there is that frontier point, as the main run's is for ``beta``)."""
        from_unpenalised = self.unpenalised_run and self.overoptimisation_timesteps >= self.sweep_timesteps
        return [b for b in parse_betas(self.betas) if b != self.beta and not (b == 0 and from_unpenalised)]

    def settings(self) -> dict[str, Any]:
        """What ``eval.json`` records under ``"settings"``: every field, ``betas`` as the sorted βs of the frontier."""
        return {**self.to_dict(), "model": str(self.model), "betas": sorted({self.beta, *parse_betas(self.betas)}),
                "device": str(self.device)}


# ---------------------------------------------------------------------------------------------- the pipeline
def run_pipeline(
    output: str | os.PathLike,
    config: PipelineConfig | None = None,
    *,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Run (or resume) the pipeline into ``output`` and return the ``eval.json`` summary (module docstring).

    Args:
        output: the run directory ``DIR`` (created if missing).
        config: the settings (default: :class:`PipelineConfig`'s defaults).
        log: called with one progress line per event (default: print to stderr).
        **settings: fields of :class:`PipelineConfig` replacing those of ``config`` (``beta=0.1``); every value is
            checked before anything is written or loaded.
    """
    config = PipelineConfig.build(config, settings, "run_pipeline")
    run = _PipelineRun(Path(output), config, log or _print_progress)
    run.collect()
    run.supervised_fine_tuning()
    run.train_reward_model()
    run.train_main_ppo()
    run.sweep_betas()
    run.train_unpenalised()
    return run.evaluate_and_summarise()


def _print_progress(line: str) -> None:
    print(f"textenv pipeline: {line}", file=sys.stderr, flush=True)


class _PipelineRun:
    """One invocation of :func:`run_pipeline`: the stages in order, each a method that records a
    :class:`StageRecord` (ran / resumed / skipped / off) and leaves its output in ``DIR``."""

    def __init__(self, out: Path, config: PipelineConfig, log: Callable[[str], None]) -> None:
        from textenv.prompts import load_prompts

        check_output_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.config, self.log = out, config, log
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()
        self.held_out = load_prompts("builtin", "eval")
        self.stages = {name: StageRecord() for name in STAGES}
        self.prefs, self.eval_prefs = out / "preferences.jsonl", out / "eval_preferences.jsonl"
        self.policy = str(config.model)  # the PPO start policy and π_ref: the SFT model with --sft
        self.rm_dir, self.main_dir = out / "reward_model", out / "ppo"
        self.main_targets = checkpoint_targets(config.ppo_timesteps, config.eval_every, extra=[config.sweep_timesteps])

    def collect(self) -> None:
        """1. collect: training comparisons (and held-out ones, only for the RM's accuracy) from the base model."""
        c = self.config
        with _Clock() as clock:
            ran = []
            for path, split, count in ((self.prefs, "train", c.num_prompts), (self.eval_prefs, "eval", c.eval_prompts)):
                if path.is_file():
                    _check_ranked_by(path, c.gold)
                    continue
                self.log(f"collect: {count} {split} prompts × K={c.k} completions ranked by {c.gold} → {path}")
                _collect(path, model=c.model, prompts=self.held_out[:count] if split == "eval" else "builtin",
                         prompt_split=split, num_prompts=count, k=c.k, max_new_tokens=c.max_new_tokens, gold=c.gold,
                         seed=c.seed + (0 if split == "train" else 1), noise=c.noise, min_gap=c.min_gap,
                         device=c.device, min_rows=2 if split == "train" else 1)
                ran.append(split)
        rows = {"rows": _count_rows(self.prefs), "eval_rows": _count_rows(self.eval_prefs)}
        self.stages["collect"] = StageRecord("ran" if ran else "skipped", clock.seconds, clock.cpu_seconds, rows)

    def supervised_fine_tuning(self) -> None:
        """2. sft (optional): behaviour cloning of each prompt's best-ranked completion."""
        c = self.config
        if not c.sft:
            return
        sft_dir = self.out / "sft"
        with _Clock() as clock:
            status = "skipped" if (sft_dir / "agent.json").is_file() else "ran"
            if status == "ran":
                self.log(f"sft: behaviour cloning of the best of K on {self.prefs}, {c.sft_epochs} epoch(s) → "
                         f"{sft_dir}")
                detail = _supervised_fine_tune(self.prefs, sft_dir, model=c.model, epochs=c.sft_epochs, lr=c.sft_lr,
                                               seed=c.seed, max_new_tokens=c.max_new_tokens, device=c.device)
            else:
                detail = {"num_timesteps": json.loads((sft_dir / "agent.json").read_text())["num_timesteps"]}
        self.stages["sft"] = StageRecord(status, clock.seconds, clock.cpu_seconds, detail)
        self.policy = str((sft_dir / "policy").resolve())

    def train_reward_model(self) -> None:
        """3. rm: Bradley–Terry reward model on the training comparisons; accuracy on the held-out ones."""
        from textenv.preferences import expand_pairs, load_preferences
        from textenv.reward_models.preference import PreferenceRewardModel, pair_accuracy, train_preference_model

        c, rm_dir = self.config, self.rm_dir
        with _Clock() as clock:
            status = "skipped" if (rm_dir / "reward_model.json").is_file() else "ran"
            if status == "ran":
                self.log(f"rm: Bradley–Terry reward model on {self.prefs} ({c.rm_epochs} epochs, backbone "
                         f"{self.policy}) → {rm_dir}")
                reward_model, _ = train_preference_model(self.prefs, backbone=self.policy, epochs=c.rm_epochs,
                                                         lr=c.rm_lr, eval_fraction=0.0, seed=c.seed, device=c.device)
                reward_model.save(rm_dir)
            self.reward_model = PreferenceRewardModel.load(rm_dir, device=c.device)
            backbone = self.reward_model.metadata.get("training", {}).get("backbone")
            if backbone != self.policy:
                raise InputError(
                    f"{rm_dir} was trained on backbone {backbone!r} but this run's policy is {self.policy!r} (was "
                    f"--sft toggled or --model changed?); use another --output or delete {rm_dir} and the PPO stages"
                )
            groups = [g for g in expand_pairs(load_preferences(self.eval_prefs)) if g.pairs]
            self.rm_accuracy = pair_accuracy(self.reward_model, groups)
            self.rm_train_accuracy = self.reward_model.metadata.get("metrics", {}).get("train/pair_accuracy")
        accuracy = {"pair_accuracy": self.rm_accuracy, "train_pair_accuracy": self.rm_train_accuracy}
        self.stages["rm"] = StageRecord(status, clock.seconds, clock.cpu_seconds, accuracy)
        stats = self.reward_model.normalization
        self.log(f"rm: scores normalised to mean 0, std 1 on its {stats['num_texts']} training completions (raw mean "
                 f"{stats['mean']:+.3g}, std {stats['std']:.3g})" if stats else
                 f"rm: {rm_dir} was saved unnormalised (by textenv ≤ 0.1.0 or with --no-normalize): β is in its raw units")
        self.log(f"rm: held-out pair accuracy {self.rm_accuracy:.3f} ({_count_pairs(self.eval_prefs)} pairs of eval "
                 "prompts)")

    @property
    def ppo_settings(self) -> dict[str, Any]:
        """What every PPO run (main and sweep) shares: start policy, learned RM, env size, learning rate, seed."""
        c = self.config
        return {"model": self.policy, "reward_model": f"preference:{self.rm_dir.resolve()}", "num_envs": c.num_envs,
                "max_new_tokens": c.max_new_tokens, "learning_rate": c.ppo_lr, "seed": c.seed, "device": c.device}

    def train_main_ppo(self) -> None:
        """4. ppo: the main run at β, checkpointed every eval_every tokens and at the sweep budget."""
        beta = self.config.beta
        with _Clock() as clock:
            status = _train_ppo(self.main_dir, beta, self.main_targets, self.ppo_settings, self.log)
        self.stages["ppo"] = StageRecord(status, clock.seconds, clock.cpu_seconds,
                                         {"beta": beta, "targets": self.main_targets})

    def sweep_betas(self) -> None:
        """5. sweep: one shorter run per other β."""
        betas = self.config.sweep_betas
        with _Clock() as clock:
            statuses = [_train_ppo(_sweep_dir(self.out, b), b, [self.config.sweep_timesteps], self.ppo_settings,
                                   self.log) for b in betas]
        status = "off" if not betas else "skipped" if all(s == "skipped" for s in statuses) else "ran"
        self.stages["sweep"] = StageRecord(status, clock.seconds, clock.cpu_seconds, {"betas": betas})

    @property
    def unpenalised_targets(self) -> list[int]:
        """Checkpoints of the β = 0 run (none when it is off, or when the main run is itself at β = 0)."""
        c = self.config
        if not c.unpenalised_run:
            return []
        return checkpoint_targets(c.overoptimisation_timesteps, c.eval_every, extra=[c.sweep_timesteps])

    def train_unpenalised(self) -> None:
        """6. overoptimise: PPO at β = 0 (nothing holds it near π_ref), checkpointed every eval_every tokens: the
        run along which the gold rises then falls while the proxy keeps rising (Gao et al. 2022, Fig. 1)."""
        targets = self.unpenalised_targets
        if not targets:
            return
        with _Clock() as clock:
            status = _train_ppo(self.out / "overoptimisation", 0.0, targets, self.ppo_settings, self.log)
        self.stages["overoptimise"] = StageRecord(status, clock.seconds, clock.cpu_seconds,
                                                  {"beta": 0.0, "targets": targets})

    def evaluate_and_summarise(self) -> dict[str, Any]:
        """6. evaluate every policy on the held-out prompts (cached), summarise and plot; writes ``eval.json``."""
        from textenv.apps.evaluation import save_eval_json

        with _Clock() as clock:
            evaluator, summary = self._evaluate()
        self.stages["evaluate"] = StageRecord("ran" if evaluator.computed else "skipped", clock.seconds,
                                              clock.cpu_seconds, {"evaluated": evaluator.computed})
        summary = {"command": "textenv pipeline", **summary}
        summary["stages"] = {name: asdict(record) for name, record in self.stages.items()}
        summary["wall_minutes"] = (time.perf_counter() - self.start_wall) / 60
        summary["cpu_minutes"] = (time.process_time() - self.start_cpu) / 60
        save_eval_json(self.out / "eval.json", summary)
        self.log(f"gold {summary['gold_before']:+.3f} → best {summary['gold_after_best']:+.3f} "
                 f"(last {summary['gold_after']:+.3f}, proxy {summary['proxy_after']:+.3f}, KL {summary['kl']:.2f} "
                 f"nats); RM pair accuracy {self.rm_accuracy:.3f}; {summary['cpu_minutes']:.1f} CPU-min → "
                 f"{self.out / 'eval.json'}")
        return summary

    def _evaluate(self) -> tuple[_Evaluator, dict[str, Any]]:
        c, out, policy = self.config, self.out, self.policy
        evaluator = _Evaluator(out, self.held_out[: c.eval_prompts], c.gold, self.reward_model, c.seed + 10_000,
                               c.max_new_tokens, c.device, self.log)
        before = evaluator(str(c.model), "base", reference=str(c.model))
        start_policy = evaluator(policy, "sft", reference=policy) if c.sft else before
        history = [evaluator(self.main_dir / _step_name(t), f"ppo/{_step_name(t)}", reference=policy)
                   for t in self.main_targets]
        unpenalised = [evaluator(out / "overoptimisation" / _step_name(t), f"overoptimisation/{_step_name(t)}",
                                 reference=policy) for t in self.unpenalised_targets]
        frontier: dict[Any, dict[str, Any]] = {"initial policy": start_policy}
        for b in sorted({c.beta, *parse_betas(c.betas)}):
            directory = {c.beta: self.main_dir}.get(b, _sweep_dir(out, b) if b in c.sweep_betas else
                                                    out / "overoptimisation")
            key = f"{directory.relative_to(out).as_posix()}/{_step_name(c.sweep_timesteps)}"
            frontier[b] = evaluator(directory / _step_name(c.sweep_timesteps), key, reference=policy)
        evaluator.save()
        summary = _summarise(before, start_policy if c.sft else None, history, frontier, self.rm_accuracy,
                             self.rm_train_accuracy, c.beta, c.settings())
        runs = {f"β = {c.beta:g}": [start_policy, *history]}
        if unpenalised:
            runs["β = 0"] = [start_policy, *unpenalised]
        summary["unpenalised"] = [_point(r) for r in unpenalised]
        sweep = {b: r for b, r in frontier.items() if isinstance(b, float) and b != c.beta}
        summary["overoptimisation"] = overoptimisation(runs, list(sweep.values()))
        summary["plots"] = _plot(out, runs, frontier, sweep, c.sweep_timesteps)
        return evaluator, summary


# ---------------------------------------------------------------------------------------------- stages
def _collect(path: Path, min_rows: int, **kwargs: Any) -> None:
    """:func:`~textenv.apps.collect.collect_preferences` into a temporary file, renamed into place when complete
    (so an existing ``path`` always holds a finished stage); fewer than ``min_rows`` rankings is an error."""
    from textenv.apps.collect import collect_preferences

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        result = collect_preferences(output=tmp, **kwargs)
        if len(result.rows) < min_rows:
            raise InputError(
                f"only {len(result.rows)} of {result.num_prompts} prompts gave two distinguishable completions "
                f"for {path.name}; the budget is too small: raise num_prompts / k or lower min_gap"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_ranked_by(path: Path, gold: str) -> None:
    """Refuse to reuse comparisons ranked by another gold labeller than ``gold`` (e.g. a DIR of an earlier version,
    whose default gold was ``vader``): the RM and the evaluation would then answer to different labellers."""
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    try:
        ranked_by = json.loads(first).get("meta", {}).get("gold")
    except (json.JSONDecodeError, AttributeError):
        return  # not ours to judge here: the RM stage reports a malformed file with its line number
    if ranked_by is not None and ranked_by != gold:
        raise InputError(
            f"{path} was ranked by gold {ranked_by!r} but this run's --gold is {gold!r} (the default gold became "
            f"'fluent-sentiment'); pass --gold {ranked_by}, or use another --output, or delete {path.name} and every "
            "later stage's output"
        )


def _supervised_fine_tune(
    prefs: Path, directory: Path, model: str, epochs: int, lr: float, seed: int, max_new_tokens: int, device: str
) -> dict[str, Any]:
    """The SFT agent on the preferred completions of ``prefs`` for ``epochs`` passes; saved to ``directory``."""
    from textenv.agents.sft import SFT
    from textenv.vector_env import TextGenVectorEnv

    env = TextGenVectorEnv(num_envs=1, model=model, kl_coef=0.0, max_new_tokens=max_new_tokens,
                           autoreset_mode="disabled", device=device)  # SFT uses only its policy and tokenizer
    agent = SFT(env, demonstrations=str(prefs), learning_rate=lr, seed=seed)
    tokens_per_epoch = sum(len(pair.completion) for pair in agent.data)
    before = agent.demonstration_loss()
    agent.learn(epochs * tokens_per_epoch, progress_bar=False)
    agent.save(directory)
    return {"num_timesteps": agent.num_timesteps, "demonstrations": len(agent.data), "nll_before": before,
            "nll_after": agent.demonstration_loss()}


def _step_name(target: int) -> str:
    return f"step-{target:08d}"


def _sweep_dir(out: Path, beta: float) -> Path:
    return out / "sweep" / f"beta-{beta:g}"


def _latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """``(target, path)`` of the highest complete ``step-N`` checkpoint in ``run_dir``, or ``None``."""
    found = []
    for path in run_dir.glob("step-*"):
        match = re.fullmatch(r"step-(\d+)", path.name)
        if match and (path / "agent.json").is_file():
            found.append((int(match.group(1)), path))
    return max(found) if found else None


def _train_ppo(run_dir: Path, beta: float, targets: Sequence[int], settings: dict[str, Any],
               log: Callable[[str], None]) -> str:
    """PPO against the learned RM at KL coefficient ``beta``, saving ``run_dir/step-N`` once ≥ N tokens were
    generated, for every N in ``targets``. Resumes from the last checkpoint; returns ran/resumed/skipped."""
    from textenv.agents.base import TRAINER_STATE_FILES
    from textenv.agents.ppo import PPO
    from textenv.checkpoint import discard_files
    from textenv.vector_env import TextGenVectorEnv

    latest = _latest_checkpoint(run_dir)
    if latest is not None:
        _check_resumable(latest[1], beta, settings)
        if latest[0] >= targets[-1]:
            return "skipped"
    env = TextGenVectorEnv(
        num_envs=settings["num_envs"], model=settings["model"], reward_model=settings["reward_model"],
        max_new_tokens=settings["max_new_tokens"], kl_coef=beta, autoreset_mode="disabled", device=settings["device"],
    )
    if latest is None:
        agent = PPO(env, learning_rate=settings["learning_rate"], seed=settings["seed"])
        status = "ran"
    else:
        agent = PPO.load(latest[1], env)
        status = "resumed"
        log(f"ppo β={beta:g}: resuming from {latest[1]} ({agent.num_timesteps} tokens)")
    previous = None if latest is None else latest[1]
    for target in targets:
        if latest is not None and target <= latest[0]:
            continue
        agent.learn(target, progress_bar=False)
        agent.save(run_dir / _step_name(target))
        if previous is not None:  # only the newest checkpoint is resumed: drop the others' optimizer state
            discard_files(previous, TRAINER_STATE_FILES)
        previous = run_dir / _step_name(target)
        metrics = agent.last_metrics
        kl = f"KL {metrics.get('rollout/kl', float('nan')):.2f}" if beta > 0 else "KL not computed at β = 0"
        log(f"ppo β={beta:g}: {agent.num_timesteps} tokens, rollout RM score {metrics.get('rollout/rm_score', float('nan')):+.3f}, "
            f"{kl} → {run_dir / _step_name(target)}")
    return status


def check_output_dir(out: Path) -> None:
    """Refuse (:class:`InputError`) a pipeline ``DIR`` that is a file or holds anything but the pipeline's own
    outputs (:data:`OUTPUT_ENTRIES` and temporary files of ours): the pipeline never writes beside user files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--output {out} is a file; give a directory for the pipeline's outputs")
    foreign = [entry.name + ("/" if entry.is_dir() else "") for entry in sorted(out.iterdir())
               if not _is_pipeline_entry(entry.name)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(f"--output {out} holds files textenv pipeline did not write ({shown}); it writes only "
                         f"{', '.join(OUTPUT_ENTRIES)}: choose a new or empty --output directory")


def _is_pipeline_entry(name: str) -> bool:
    """A name the pipeline writes in DIR, or the temporary/backup name of one (``.NAME.tmp...``, ``.NAME.old``)."""
    if name in OUTPUT_ENTRIES:
        return True
    return any(name.startswith(f".{entry}.tmp") or name == f".{entry}.old" for entry in OUTPUT_ENTRIES)


def _check_resumable(checkpoint: Path, beta: float, settings: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint trained with different settings (naming the conflicting option)."""
    meta = json.loads((checkpoint / "agent.json").read_text())
    env, hyper = meta.get("env", {}), meta.get("hyperparameters", {})
    recorded = {"beta": env.get("kl_coef"), "num_envs": env.get("num_envs"), "max_new_tokens": env.get("max_new_tokens"),
                "ppo_lr": hyper.get("learning_rate"), "seed": hyper.get("seed"), "model": env.get("model"),
                "reward_model": env.get("reward_model")}
    wanted = {"beta": beta, "num_envs": settings["num_envs"], "max_new_tokens": settings["max_new_tokens"],
              "ppo_lr": settings["learning_rate"], "seed": settings["seed"], "model": settings["model"],
              "reward_model": settings["reward_model"]}
    for name, value in wanted.items():
        if recorded[name] != value:
            raise InputError(
                f"{checkpoint} was trained with {name}={recorded[name]!r}, this run asks for {name}={value!r}; "
                f"use another --output or delete {checkpoint.parent} to retrain"
            )


class _Evaluator:
    """:func:`~textenv.apps.evaluation.evaluate_policy` with a cache in ``DIR/evaluations.json``.

    A cached result is reused when the evaluation settings match and the policy's weights file has the same
    modification time (a re-trained checkpoint is evaluated again).
    """

    def __init__(self, out: Path, prompts: list[str], gold: str, proxy: Any, seed: int, max_new_tokens: int,
                 device: str, log: Callable[[str], None]) -> None:
        self.path = out / "evaluations.json"
        self.kwargs = {"prompts": prompts, "gold": gold, "proxy": proxy, "seed": seed,
                       "max_new_tokens": max_new_tokens, "batch_size": 64, "max_table_rows": 3, "device": device}
        rm_meta = (out / "reward_model" / "reward_model.json").read_bytes()
        self.settings = {"prompts": len(prompts), "gold": gold, "seed": seed, "max_new_tokens": max_new_tokens,
                         "reward_model": hashlib.sha256(rm_meta).hexdigest()[:16]}
        cache = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.results: dict[str, Any] = cache.get("results", {}) if cache.get("settings") == self.settings else {}
        self.computed: list[str] = []
        self.log = log

    def __call__(self, policy: str | Path, key: str, reference: str) -> dict[str, Any]:
        from textenv.apps.evaluation import evaluate_checkpoints, evaluate_policy

        path = Path(policy)
        weights = path / "policy" if (path / "agent.json").is_file() else path
        files = sorted(weights.glob("*.safetensors"))
        fingerprint = f"{files[0].stat().st_mtime_ns}" if files else str(policy)
        cached = self.results.get(key)
        if cached is not None and cached.get("fingerprint") == fingerprint:
            return cached
        if (path / "agent.json").is_file():
            result = evaluate_checkpoints([path], reference=reference, **self.kwargs)[0]
        else:
            result = evaluate_policy(str(policy), reference=reference, **self.kwargs)
            result["num_timesteps"] = 0
        result["checkpoint"] = key
        result["fingerprint"] = fingerprint
        self.results[key] = result
        self.computed.append(key)
        self.log(f"evaluate {key}: gold {result['gold_reward']:+.3f}, proxy {result['proxy_reward']:+.3f}, "
                 f"KL {result['kl']:.2f} nats")
        self.save()  # after every evaluation, so an interruption keeps the finished ones
        return result

    def save(self) -> None:
        from textenv.apps.evaluation import save_eval_json

        save_eval_json(self.path, {"settings": self.settings, "results": self.results})


_POINT_KEYS = ("gold_reward", "proxy_reward", "kl", "perplexity", "distinct_2", "length", "num_timesteps", "checkpoint")


def _point(result: dict[str, Any]) -> dict[str, Any]:
    return {key: result.get(key) for key in _POINT_KEYS}


def _summarise(before: dict[str, Any], sft: dict[str, Any] | None, history: list[dict[str, Any]],
               frontier: dict[Any, dict[str, Any]], rm_accuracy: float, rm_train_accuracy: float | None,
               beta: float, settings: dict[str, Any]) -> dict[str, Any]:
    last = history[-1]
    best = max(history, key=lambda r: r["gold_reward"])
    return {
        "rm_pair_accuracy": float(rm_accuracy),
        "rm_train_pair_accuracy": None if rm_train_accuracy is None else float(rm_train_accuracy),
        "gold_before": before["gold_reward"],
        "proxy_before": before["proxy_reward"],
        "gold_sft": None if sft is None else sft["gold_reward"],
        "proxy_sft": None if sft is None else sft["proxy_reward"],
        "gold_after": last["gold_reward"],
        "proxy_after": last["proxy_reward"],
        "kl": last["kl"],
        "gold_after_best": best["gold_reward"],
        "gold_gain_best": best["gold_reward"] - before["gold_reward"],
        "best": _point(best),
        "beta": beta,
        "checkpoints": [_point(r) for r in history],
        "frontier": [{"beta": b, **_point(r)} for b, r in frontier.items() if isinstance(b, float)],
        "samples": {"before": before["samples"], "best": best["samples"], "after": last["samples"]},
        "settings": settings,
    }


def overoptimisation(runs: Mapping[str, Sequence[dict[str, Any]]],
                     sweep: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Goodhart's law in numbers (Gao et al. 2022, Fig. 1). Over every evaluated policy (each run's checkpoints
    ``{name: [result, ...]}`` from its start, and the ``sweep``'s policies): the one with the highest gold
    reward (``peak``), and those further from π_ref (``beyond_peak``: higher KL) that the proxy scores higher
    but the gold lower, by more than twice the standard error of the difference of the two means (from each
    result's ``gold_reward_std`` and ``num_samples``; 0 when absent), so sampling noise is not called
    over-optimisation. ``gold_falls_while_proxy_rises`` is whether there is one, ``gold_drop`` the largest gold
    lost past the peak (0 when none); ``runs`` gives the same for each run alone."""
    points = [point for run in runs.values() for point in run] + list(sweep)
    everything = list({point.get("checkpoint") or id(point): point for point in points}.values())  # each policy once
    peak, beyond = _beyond_peak(everything)
    verdict = {
        "peak": _point(peak),
        "beyond_peak": [_point(r) for r in beyond],
        "gold_falls_while_proxy_rises": bool(beyond),
        "gold_drop": max((peak["gold_reward"] - r["gold_reward"] for r in beyond), default=0.0),
        "runs": {},
    }
    for name, points in runs.items():
        run_peak, run_beyond = _beyond_peak(points)
        verdict["runs"][name] = {
            "peak": _point(run_peak), "gold_falls_while_proxy_rises": bool(run_beyond),
            "gold_drop": max((run_peak["gold_reward"] - r["gold_reward"] for r in run_beyond), default=0.0),
        }
    return verdict


def _beyond_peak(points: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the highest-gold point, the points with higher KL and proxy and a gold lower by > 2 standard errors)."""

    def variance_of_mean(r: dict[str, Any]) -> float:
        std, n = r.get("gold_reward_std"), r.get("num_samples")
        return float(std) ** 2 / n if std is not None and n else 0.0

    peak = max(points, key=lambda r: r["gold_reward"])
    beyond = [r for r in points if r["kl"] > peak["kl"] and r["proxy_reward"] > peak["proxy_reward"]
              and peak["gold_reward"] - r["gold_reward"] > 2 * math.sqrt(variance_of_mean(peak) + variance_of_mean(r))]
    return peak, sorted(beyond, key=lambda r: r["kl"])


#: (gold colour, proxy colour, marker) of each run of :func:`plot_overoptimisation`, in order.
_RUN_STYLES = (("tab:blue", "tab:red", "o"), ("tab:cyan", "tab:orange", "^"), ("tab:purple", "tab:brown", "v"))


def plot_overoptimisation(runs: Mapping[str, Sequence[dict[str, Any]]], sweep: Mapping[float, dict[str, Any]],
                          path: str | os.PathLike, title: str) -> Path:
    """Gold (left axis, solid) and proxy (right axis, dashed) against √KL(π‖π_ref), Gao et al. 2022's Fig. 1
    axes: each run's checkpoints ``{name: [result, ...]}`` joined in order (labelled with their tokens) and the
    ``sweep``'s policies ``{β: result}`` as open diamonds (labelled with β). Over-optimisation: the proxy keeps
    rising to the right while the gold turns down. Writes a PNG (atomically) and returns its path."""
    from textenv.apps.evaluation import new_figure, save_figure

    figure = new_figure()
    gold_axes = figure.subplots()
    proxy_axes = gold_axes.twinx()
    handles = []
    for (name, points), (gold_colour, proxy_colour, marker) in zip(runs.items(), _RUN_STYLES):
        x = [math.sqrt(max(r["kl"], 0.0)) for r in points]
        handles += gold_axes.plot(x, [r["gold_reward"] for r in points], marker=marker, color=gold_colour,
                                  label=f"gold, {name}")
        handles += proxy_axes.plot(x, [r["proxy_reward"] for r in points], marker=marker, linestyle="--",
                                   color=proxy_colour, label=f"proxy, {name}")
        labelled = -math.inf
        for xi, r in zip(x, points):
            if xi - labelled >= 0.5:  # tokens of points at least 0.5 √nats apart: crowded ones stay readable
                gold_axes.annotate(str(r.get("num_timesteps") or 0), (xi, r["gold_reward"]),
                                   textcoords="offset points", xytext=(3, 3), fontsize=6, color=gold_colour)
                labelled = xi
    if sweep:
        betas = sorted(sweep, key=lambda b: sweep[b]["kl"])
        x = [math.sqrt(max(sweep[b]["kl"], 0.0)) for b in betas]
        handles += gold_axes.plot(x, [sweep[b]["gold_reward"] for b in betas], marker="D", linestyle=":",
                                  color="tab:green", markerfacecolor="none", label="gold, β sweep")
        handles += proxy_axes.plot(x, [sweep[b]["proxy_reward"] for b in betas], marker="D", linestyle=":",
                                   color="tab:pink", markerfacecolor="none", label="proxy, β sweep")
        for xi, b in zip(x, betas):
            gold_axes.annotate(f"β={b:g}", (xi, sweep[b]["gold_reward"]), textcoords="offset points", xytext=(3, -9),
                               fontsize=7, color="tab:green")
    gold_axes.set_xlabel("√KL(π‖π_ref)  [√nats / sequence]")
    gold_axes.set_ylabel("gold reward (solid)")
    proxy_axes.set_ylabel("proxy reward, normalised RM (dashed)")
    gold_axes.set_title(title, fontsize=10)
    gold_axes.grid(alpha=0.3)
    figure.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncols=3, fontsize=7)
    return save_figure(figure, path)


def _plot(out: Path, runs: dict[str, list[dict[str, Any]]], frontier: dict[Any, dict[str, Any]],
          sweep: dict[float, dict[str, Any]], sweep_timesteps: int) -> dict[str, str]:
    from textenv.apps.evaluation import plot_reward_kl_frontier

    frontier_png = plot_reward_kl_frontier(
        frontier, out / "reward_kl_frontier.png",
        title=f"Gold reward–KL frontier: PPO on the learned RM, {sweep_timesteps} tokens per β",
    )
    what = " and ".join(f"{name}" for name in runs) + (f"; β sweep at {sweep_timesteps} tokens" if sweep else "")
    proxy_png = plot_overoptimisation(runs, sweep, out / "proxy_vs_gold.png",
                                      title=f"Proxy vs gold reward along PPO runs (labels: tokens)\nruns at {what}")
    return {"frontier": frontier_png.name, "proxy_vs_gold": proxy_png.name}


def _count_rows(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else 0


def _count_pairs(path: Path) -> int:
    from textenv.preferences import expand_pairs, load_preferences

    return sum(len(g.pairs) for g in expand_pairs(load_preferences(path)))


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``textenv pipeline``: ``--output`` and one flag per :class:`PipelineConfig` field."""
    parser.description = (
        "SFT (optional) → collect comparisons → train a Bradley-Terry reward model → PPO against it with a KL "
        "penalty (a main run plus a β sweep) → evaluate on held-out prompts. Offline, on the embedded model by "
        "default. Every stage writes into --output and is SKIPPED when its output already exists, so the command "
        "is resumable: rerun it after an interruption, or with a larger --ppo-timesteps to continue the main run. "
        "To redo a stage, delete its output and every later stage's."
    )
    parser.epilog = (
        "Output: DIR/preferences.jsonl, DIR/eval_preferences.jsonl, DIR/sft/ (--sft), DIR/reward_model/, "
        "DIR/ppo/step-N/, DIR/sweep/beta-B/step-N/, DIR/evaluations.json (cache), DIR/eval.json (rm_pair_accuracy, "
        "gold_before, gold_after, gold_after_best, proxy_after, kl, ...), DIR/reward_kl_frontier.png, "
        "DIR/proxy_vs_gold.png. The β sweep: the main run (--beta, --ppo-timesteps, evaluated every --eval-every "
        "tokens) plus one --sweep-timesteps run per other β of --betas; the frontier compares all βs at "
        "--sweep-timesteps tokens (the main β's point is the main run's checkpoint there). Run with "
        "OMP_NUM_THREADS=1 on small CPUs."
    )
    parser.add_argument("--output", required=True,
                        help="run directory DIR (created; existing stage outputs are reused; refused if it holds "
                             "files the pipeline did not write)")
    add_config_arguments(parser, PipelineConfig)


def run(args: argparse.Namespace) -> int:
    """Execute ``textenv pipeline``; prints the headline numbers as JSON, returns the exit code."""
    summary = run_pipeline(args.output, **{name: getattr(args, name) for name in PipelineConfig.names()})
    headline = ("rm_pair_accuracy", "gold_before", "gold_sft", "gold_after", "gold_after_best", "gold_gain_best",
                "proxy_after", "kl", "cpu_minutes", "wall_minutes")
    verdict = summary["overoptimisation"]
    goodhart = {key: verdict[key] for key in ("gold_falls_while_proxy_rises", "gold_drop")} | {
        "peak": {key: verdict["peak"][key] for key in ("checkpoint", "gold_reward", "proxy_reward", "kl")}}
    print(json.dumps({key: summary[key] for key in headline} | {"best": summary["best"], "overoptimisation": goodhart},
                     indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m textenv.apps.pipeline`` is ``textenv pipeline``."""
    from textenv.apps.cli import main as cli_main

    return cli_main(["pipeline", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

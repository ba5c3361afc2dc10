"""``textenv train-rm``: train a Bradley–Terry preference reward model from a preference JSONL and save it.

The saved model's scores are normalised to mean 0 and standard deviation 1 on the training completions
(``--no-normalize``: mean 0 only, the raw spread; see :mod:`textenv.reward_models.preference`).

The flags of the hyper-parameters are the fields of
:class:`~textenv.reward_models.preference.PreferenceTrainingConfig` (same names, defaults, help and checks as
:func:`~textenv.reward_models.preference.train_preference_model`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from textenv.apps.arguments import add_config_arguments
from textenv.checkpoint import check_replaceable, recover_directory
from textenv.models.loading import DEFAULT_MODEL
from textenv.reward_models.preference import DIRECTORY_KIND, PreferenceTrainingConfig, train_preference_model
from textenv.validation import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``textenv train-rm``: data, output, backbone and device, then one flag per hyper-parameter."""
    parser.add_argument("--data", required=True, help="preference JSONL (textenv collect / textenv label output)")
    parser.add_argument("--output", required=True,
                        help="directory to save the reward model to (atomically); refused if it holds other files, "
                             "and an existing reward model is replaced only with --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace the reward model already at --output")
    parser.add_argument("--backbone", default=DEFAULT_MODEL,
                        help="model name/path for the trunk (default: %(default)s)")
    add_config_arguments(parser, PreferenceTrainingConfig)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda... (default: %(default)s)")


def check_output_dir(output: Path, overwrite: bool) -> None:
    """Refuse (:class:`InputError`) a ``train-rm --output`` that is a file, a directory holding anything but a
    reward model textenv saved (its ``textenv.json`` manifest lists every file), or a saved reward model without
    ``overwrite``. Checked before training, so a refusal costs nothing."""
    recover_directory(output)  # a save killed between its two renames
    try:
        check_replaceable(output, DIRECTORY_KIND)
    except InputError as err:
        raise InputError(f"--output: {err}") from None
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise InputError(f"--output {output} holds a reward model; pass --overwrite to replace it or choose "
                         "another --output")


def run(args: argparse.Namespace) -> int:
    """Execute ``textenv train-rm``: check the paths, train, print the metrics as JSON, save to ``--output``.
    A run that fails (bad data, divergence, Ctrl-C) leaves ``--output`` as it was."""
    data = Path(args.data)
    if not data.is_file():
        problem = "is a directory; give a .jsonl file" if data.is_dir() else "no such file"
        raise InputError(f"--data {data}: {problem}")
    output = Path(args.output)
    check_output_dir(output, args.overwrite)
    hyperparameters = {name: getattr(args, name) for name in PreferenceTrainingConfig.names()}
    model, metrics = train_preference_model(data, backbone=args.backbone, device=args.device, verbose=1,
                                            **hyperparameters)
    check_output_dir(output, args.overwrite)  # again: something may have been put there while training
    model.save(output)
    summary = {k: v for k, v in metrics.items() if k != "history"}
    print(json.dumps(summary, indent=2, default=str))
    stats = model.normalization
    if stats:
        print(f"scores normalised to mean 0, std 1 on the {stats['num_texts']} training completions (raw mean "
              f"{stats['mean']:+.4g}, std {stats['std']:.4g}), so a KL coefficient β means the same for every "
              "normalised reward model", file=sys.stderr)
    print(f"saved to {output}; use it as reward_model='preference:{output}'", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m textenv.apps.train_rm`` is ``textenv train-rm``."""
    from textenv.apps.cli import main as cli_main

    return cli_main(["train-rm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

"""The main job: LoRA-tune a causal LM on next-title prompts, recommend top-K items, evaluate, report.

    python experiments/run.py --constrained             # the defaults: ml-100k, SmolLM2-135M, <= 20 min on 2 CPU cores
    python experiments/run.py --constrained --quick     # a smoke run, <= 3 min
    python experiments/run.py --constrained --baselines # + most-popular, unconstrained BIGRec, zero-shot

Without ``--adapter`` it trains first (into ``OUTPUT_DIR/adapter``); with ``--adapter DIR`` it evaluates that
adapter; with ``--train-samples 0`` it evaluates the base model zero-shot. ``--constrained`` decodes with the
title trie (every output is a catalog item); without it, the BIGRec baseline: free beam search, then
grounding by exact title match and by L2 distance in the base model's embedding space.

A collaborative assistant (``--assistant``, default sasrec; popularity with ``--quick``; ``none`` turns it off)
is fit on the training split and listed beside most-popular, the LM alone and LM + prior ("constrained+sasrec":
constrained decoding ranking titles by log p_LM(title) + w log M(title), ``--prior-weight W|auto``); every run
also reports the user-signal control (``--no-user-signal`` turns it off). All test users without the LM-alone
decoding: ``python experiments/run.py --constrained --all-users --no-lm-alone --no-user-signal``.

Results land in ``--output-dir`` (default ``runs/<timestamp>``): ``metrics.json``, ``predictions.jsonl``,
``report.md`` and ``metrics.png``, plus the adapter. Run the same command with the same ``--output-dir``
after an interruption: finished training and finished users are not redone.

The defaults are sized for this project's 2-core CPU machine (see ``DEFAULTS``); on a GPU, scale up with
flags alone, e.g. ``--train-samples 1024 --epochs 3 --eval-users 943``, and shard the evaluation with
``torchrun --nproc_per_node 4 experiments/run.py --constrained --adapter DIR --output-dir NEW`` or
``accelerate launch --multi_gpu --num_processes 4 ...`` (each process takes a disjoint slice of the users; the
main one merges them into one report). A folder is resumed only by a run with the same options (``run.json``).

Every flag is a field of :class:`~constrained_rec.experiment.run_config.RunConfig` (default and help text live
there); ``--config FILE.yaml`` sets any of them by name (``lora_r: 16``), flags given on the command line win.
run.py takes every option of ``experiments/train.py`` with the same meaning: ``--data`` (and the key ``data``) is
``--dataset``, ``--train-samples all`` every training window, ``--eval-samples`` the validation samples of the
loss; but ``--no-resume``: a run folder holds more than the adapter (the assistant, the prior's sweep, the
predictions), so starting over is a new ``--output-dir``.
The job itself is :func:`constrained_rec.experiment.pipeline.run`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from constrained_rec.experiment.pipeline import run
from constrained_rec.experiment.run_config import DATA_OPTIONS, TRAINING_OPTIONS, RunConfig, assistant_options
from constrained_rec.options import OptionParser, add_options, option_fields

TRAINING = ("model", "train_samples", "eval_samples", "epochs", "batch_size", "learning_rate", "history_loss_weight",
            *TRAINING_OPTIONS, "adapter")


def build_parser() -> OptionParser:
    """The flags of :class:`RunConfig`'s fields (defaults and help live there), in groups, and ``--config``."""
    parser = OptionParser(description="Train, recommend, evaluate and report (BIGRec with trie-constrained decoding).",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_config_option()
    groups = {
        "data set": ("--dataset is a GroupLens name, a folder in a supported layout (GroupLens, RecBole, Amazon "
                     "2018, D3/MiniOneRec with its own train/valid/test CSVs), an Amazon reviews file, or an "
                     "interactions CSV/TSV with --items; --template renders the prompts of training and evaluation",
                     (*DATA_OPTIONS, "template")),
        "model and training": ("the LoRA adapter trained on the training split (experiments/train.py takes the same "
                               "training options), or --adapter DIR, or zero-shot with --train-samples 0", TRAINING),
        "collaborative prior and controls": (
            "a text-free assistant fit on the training split, listed alone and fused into constrained decoding (LM + "
            "prior: titles ranked by log p_LM(title) + w log M(title)); most-popular is always listed beside it",
            assistant_options()),
    }
    grouped = {name for _, names in groups.values() for name in names}
    add_options(parser, RunConfig, [spec.name for spec in option_fields(RunConfig) if spec.name not in grouped])
    for title, (description, names) in groups.items():
        add_options(parser, RunConfig, names, group=parser.add_argument_group(title, description))
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    config = RunConfig(**vars(build_parser().parse_args(argv)),
                       command="python experiments/run.py " + " ".join(shlex.quote(a) for a in argv))
    return run(config)


if __name__ == "__main__":
    main()

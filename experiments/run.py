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

Everything below is argparse; the job itself is :func:`constrained_rec.experiment.pipeline.run`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from constrained_rec.evaluation.evaluate import DECODERS
from constrained_rec.experiment.pipeline import run
from constrained_rec.experiment.run_config import (
    ASSISTANT_CHOICES,
    ASSISTANT_KS,
    COLLAB_TOKEN_CHOICES,
    DEFAULT_ASSISTANT,
    DEFAULT_SEARCH_ERROR_USERS,
    DEFAULTS,
    QUICK,
    QUICK_ASSISTANT,
    QUICK_KS,
    SPLIT_CHOICES,
    RunConfig,
    add_data_file_arguments,
    parse_ks,
    parse_prior_weight,
)
from constrained_rec.experiment.search_options import PRIOR_LOOKAHEAD_CHOICES
from constrained_rec.prompts import ITEM_NOUNS


def _cli(parse):
    """An argparse ``type`` that reports the library's ValueError message as the flag's error."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = parse.__name__
    return convert


def _int_at_least(least: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise ValueError(f"expected an integer >= {least}, got {text!r}")
        return value
    return _cli(parse)


non_negative_int, positive_int = _int_at_least(0), _int_at_least(1)
parse_ks_flag = _cli(parse_ks)


def separator(text: str) -> str:
    """``--sep``: the text itself, with ``\\t`` or ``tab`` meaning a tab (what a shell passes most easily)."""
    if not text:
        raise argparse.ArgumentTypeError(f"--sep needs a field separator such as , or tab, got {text!r}")
    return "\t" if text in ("\\t", "tab") else text


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data set's files, columns and split (RunConfig's DATA_OPTIONS)."""
    group = parser.add_argument_group(
        "data set", "--dataset is a GroupLens name, a folder in a supported layout (GroupLens, RecBole, Amazon 2018, "
        "D3/MiniOneRec with its own train/valid/test CSVs), an Amazon reviews file, or an interactions CSV/TSV "
        "with --items")
    add_data_file_arguments(group)
    group.add_argument("--sep", type=separator, default=None,
                       help="field separator of the CSV/TSV files; \\t or tab for a tab [default: tab for .tsv, "
                            "comma otherwise]")
    group.add_argument("--split", choices=SPLIT_CHOICES, default="auto",
                       help="leave-one-out (last item per user), temporal (D3's global time 8:1:1), given (the "
                            "data set's own train/valid/test files), auto: given where the data set has its own "
                            "split, else leave-one-out")
    group.add_argument("--max-history", type=positive_int, default=10,
                       help="at most this many previous items in a prompt (BIGRec's and D3's 10)")
    group.add_argument("--item-noun", choices=sorted(ITEM_NOUNS), default=None,
                       help="the prompt's noun for the items [default the data set's: movies for MovieLens, "
                            "products for Amazon, items otherwise]")


def add_assistant_arguments(parser: argparse.ArgumentParser) -> None:
    """The collaborative assistant and LM + prior, and the user-signal control."""
    group = parser.add_argument_group(
        "collaborative prior and controls", "a text-free assistant fit on the training split, listed alone and fused "
        "into constrained decoding (LM + prior: titles ranked by log p_LM(title) + w log M(title)); most-popular is "
        "always listed beside it")
    group.add_argument("--assistant", choices=ASSISTANT_CHOICES, default=None,
                       help=f"the assistant; none: no prior (no assistant methods) [default {DEFAULT_ASSISTANT}, "
                            f"--quick {QUICK_ASSISTANT}; with an assistant the default K is "
                            f"{','.join(map(str, ASSISTANT_KS))}]")
    group.add_argument("--prior-weight", type=_cli(parse_prior_weight), default="auto",
                       help="the prior's weight w >= 0, or auto: chosen on 30 validation users by the NDCG@10 of "
                            "LM + prior beam search at each w of the grid 0, 1, 4, 16, 64")
    group.add_argument("--prior-lookahead", choices=PRIOR_LOOKAHEAD_CHOICES, default=None,
                       help="what LM + prior's partial titles look ahead to: sum (the mass of every title under "
                            "them), max (of their best title; same scores for complete titles, other pruning), auto "
                            "(the weight sweep decodes both and keeps the better arm; needs --prior-weight auto) "
                            "[default sum, max with --decoder exact (its bound)]")
    group.add_argument("--lm-alone", action=argparse.BooleanOptionalAction, default=True,
                       help="also decode with the LM alone; --no-lm-alone lists only most-popular, the assistant "
                            "and LM + prior (a long all-users run)")
    group.add_argument("--search-error-users", type=non_negative_int, default=None,
                       help=f"test users on which LM + prior's beam top-K is compared with exact search (0: off) "
                            f"[default {DEFAULT_SEARCH_ERROR_USERS} with an assistant]")
    group.add_argument("--user-signal", action=argparse.BooleanOptionalAction, default=True,
                       help="the user-signal control: targets scored under the user's own, another user's and a "
                            "generic prompt (constrained_rec.evaluation.user_signal)")
    group.add_argument("--signal-candidates", type=positive_int, default=5,
                       help="candidates besides the target in the user-signal control (5: ~185 CPU s per 100 users)")
    # collaborative tokens (issue 23): constrained_rec.training.collab_tokens, constrained_rec.experiment.collab_run
    group.add_argument("--collab-tokens", choices=COLLAB_TOKEN_CHOICES, default="none",
                       help="items: after each history title, a soft token projector(assistant item embedding), "
                            "trained with the adapter; the assistant (sasrec, the default then) is fit first")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train, recommend, evaluate and report (BIGRec with trie-constrained decoding).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--constrained", action="store_true",
                        help="decode with the title trie; without it, the BIGRec baseline (free decoding + grounding)")
    parser.add_argument("--dataset", default="ml-100k",
                        help="data set name (ml-100k, ml-latest-small, ml-1m, ...) or path (see 'data set' below "
                             "and constrained_rec.data)")
    parser.add_argument("--data-dir", default=None, help="folder of GroupLens data sets (default $CONSTRAINED_REC_DATA)")
    add_data_arguments(parser)
    parser.add_argument("--model", default=None,
                        help="smollm2-135m (embedded), a local model folder, or a Hugging Face id in the local cache "
                             "[default: the base model of --adapter, else smollm2-135m]")
    parser.add_argument("--train-samples", type=non_negative_int, default=None,
                        help=f"training samples drawn (seeded); 0 evaluates the base model zero-shot "
                             f"[default {DEFAULTS.train_samples}, --quick {QUICK.train_samples}]")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"training epochs [default {DEFAULTS.epochs}]")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="training batch size")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="LoRA learning rate (high: the CPU default trains for only 16 steps)")
    parser.add_argument("--history-loss-weight", type=float, default=0.0,
                        help="add this weight x the mean loss of the history titles in the prompt (titles 2..n) "
                             "to the response loss (TrainConfig.history_loss_weight)")
    parser.add_argument("--adapter", default=None, help="evaluate this trained LoRA adapter folder instead of training")
    parser.add_argument("--eval-users", type=positive_int, default=None,
                        help=f"test users, a seeded sample [default {DEFAULTS.eval_users}, --quick {QUICK.eval_users}]")
    parser.add_argument("--all-users", action="store_true", help="evaluate every test user")
    parser.add_argument("--k", type=parse_ks_flag, default=None, help=f"cut-offs K [default 1,5,10,20, --quick {','.join(map(str, QUICK_KS))}]")
    parser.add_argument("--num-beams", type=positive_int, default=None, help="beam width (>= max K) [default max K]")
    parser.add_argument("--length-penalty", type=float, default=0.0,
                        help="beams ranked by log_prob / length**length_penalty; 0 = total log-probability")
    parser.add_argument("--exclude-history", action=argparse.BooleanOptionalAction, default=True,
                        help="keep items the user already consumed out of the ranking")
    parser.add_argument("--baselines", action="store_true",
                        help="also most-popular, the other decoding mode on the same adapter, and zero-shot constrained")
    parser.add_argument("--eval-batch-size", type=positive_int, default=None,
                        help="prompts decoded together [default 8 on a GPU, 4 on a CPU]")
    parser.add_argument("--decoder", choices=DECODERS, default="beam",
                        help="constrained decoding: beam (constrained_rec.decoding.recommend, fast), generate "
                             "(transformers generate() with TitleTrieProcessor) or exact (recommend(mode='exact'): "
                             "the true top-K, at most 2000 prefixes per user; unproven users are counted)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads [default half the cores: on a shared 2-core machine two threads "
                             "run up to 4x slower than one while another process computes]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few samples and users (<= 3 min here)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seeds sampling, training and the bootstrap")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--output-dir", default=None, help="where results go [default runs/<timestamp>]; "
                        "pass an interrupted run's folder to resume it")
    add_assistant_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    config = RunConfig(**vars(build_parser().parse_args(argv)),
                       command="python experiments/run.py " + " ".join(shlex.quote(a) for a in argv))
    return run(config)


if __name__ == "__main__":
    main()

"""The main job: LoRA-tune a causal LM on next-title prompts, recommend top-K items, evaluate, report.

    python experiments/run.py --constrained             # the defaults: ml-100k, SmolLM2-135M, <= 20 min on 2 CPU cores
    python experiments/run.py --constrained --quick     # a smoke run, <= 3 min
    python experiments/run.py --constrained --baselines # + most-popular, unconstrained BIGRec, zero-shot

Without ``--adapter`` it trains first (into ``OUTPUT_DIR/adapter``); with ``--adapter DIR`` it evaluates that
adapter; with ``--train-samples 0`` it evaluates the base model zero-shot. ``--constrained`` decodes with the
title trie (every output is a catalog item); without it, the BIGRec baseline: free beam search, then
grounding by exact title match and by L2 distance in the base model's embedding space.

Results land in ``--output-dir`` (default ``runs/<timestamp>``): ``metrics.json``, ``predictions.jsonl``,
``report.md`` and ``metrics.png``, plus the adapter. Run the same command with the same ``--output-dir``
after an interruption: finished training and finished users are not redone.

The defaults are sized for this project's 2-core CPU machine (see ``DEFAULTS``); on a GPU, scale up with
flags alone, e.g. ``--train-samples 1024 --epochs 3 --eval-users 943``, and shard the evaluation with
``accelerate launch --num_processes 4 experiments/run.py --constrained --adapter DIR`` (each process takes a
disjoint slice of the users; the main one merges them into one report).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# Nothing may reach a model hub at run time (models load from the wheel, a folder or the local cache);
# without this, peft looks the base model's name up online when it saves an adapter.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from constrained_rec.evaluate import DECODERS  # noqa: E402


@dataclass(frozen=True)
class RunSize:
    """How much a run trains and evaluates."""

    train_samples: int
    epochs: int
    eval_users: int
    validation_samples: int


# Measured on the project's 2-core CPU machine (see the README): the defaults finish in <= 20 minutes,
# --quick in <= 3 minutes.
DEFAULTS = RunSize(train_samples=128, epochs=1, eval_users=100, validation_samples=32)
QUICK = RunSize(train_samples=16, epochs=1, eval_users=10, validation_samples=8)
QUICK_KS = "1,5,10"


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated positive integers like 1,5,10,20, got {text!r}")
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated positive integers like 1,5,10,20, got {text!r}")
    return ks


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train, recommend, evaluate and report (BIGRec with trie-constrained decoding).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--constrained", action="store_true",
                        help="decode with the title trie; without it, the BIGRec baseline (free decoding + grounding)")
    parser.add_argument("--dataset", default="ml-100k",
                        help="data set name (ml-100k, ml-latest-small, ml-1m, ...) or path, see constrained_rec.data")
    parser.add_argument("--data-dir", default=None, help="folder of GroupLens data sets (default $CONSTRAINED_REC_DATA)")
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
    parser.add_argument("--adapter", default=None, help="evaluate this trained LoRA adapter folder instead of training")
    parser.add_argument("--eval-users", type=positive_int, default=None,
                        help=f"test users, a seeded sample [default {DEFAULTS.eval_users}, --quick {QUICK.eval_users}]")
    parser.add_argument("--all-users", action="store_true", help="evaluate every test user")
    parser.add_argument("--k", type=parse_ks, default=None, help=f"cut-offs K [default 1,5,10,20, --quick {QUICK_KS}]")
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
                        help="constrained decoding: beam (constrained_rec.decode, fast) or generate "
                             "(transformers generate() with TitleTrieProcessor)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads [default half the cores: on a shared 2-core machine two threads "
                             "run up to 4x slower than one while another process computes]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few samples and users (<= 3 min here)")
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling, training and the bootstrap")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--output-dir", default=None, help="where results go [default runs/<timestamp>]; "
                        "pass an interrupted run's folder to resume it")
    return parser


def resolve_size(args) -> RunSize:
    base = QUICK if args.quick else DEFAULTS
    return RunSize(
        train_samples=base.train_samples if args.train_samples is None else args.train_samples,
        epochs=base.epochs if args.epochs is None else args.epochs,
        eval_users=base.eval_users if args.eval_users is None else args.eval_users,
        validation_samples=base.validation_samples,
    )


def adapter_train_config(adapter_dir: Path) -> dict:
    """The ``train_config.json`` that :func:`constrained_rec.train.train` writes beside an adapter."""
    config_path = adapter_dir / "train_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{adapter_dir} has no train_config.json: not an adapter written by constrained_rec.train, so its "
            "base model, catalog and tokenizer cannot be checked"
        )
    return json.loads(config_path.read_text())


def check_adapter(adapter_dir: Path, base_model: str, trie) -> None:
    """An adapter must have been trained on this base model, for this catalog tokenized by this tokenizer."""
    config = adapter_train_config(adapter_dir)
    config_path = adapter_dir / "train_config.json"
    if config.get("base_model") != base_model:
        raise ValueError(
            f"the adapter {adapter_dir} was trained on the base model {config.get('base_model')!r}, not "
            f"{base_model!r}; pass --model {config.get('base_model')} (or leave --model out)"
        )
    stored = config.get("catalog_fingerprint")
    if stored is None:
        raise ValueError(f"{config_path} records no catalog_fingerprint; retrain with TrainConfig(catalog_fingerprint=...)")
    if stored != trie.fingerprint():
        raise ValueError(
            f"the adapter {adapter_dir} was trained for another catalog or tokenizer (catalog fingerprint {stored}); "
            f"this run's data set and tokenizer give {trie.fingerprint()}. Evaluate it on the data set and base "
            "model it was trained with, or train a new adapter"
        )


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    from accelerate import PartialState
    from transformers import set_seed

    from constrained_rec import TitleTrie
    from constrained_rec.data import SplitConfig, load_interactions, make_splits, split_positions
    from constrained_rec.evaluate import (
        ConstrainedRecommender, EvalConfig, MostPopularRecommender, UnconstrainedRecommender, config_dict,
        consumed_items, evaluate, method_metrics, samples_from_split, training_item_counts)
    from constrained_rec.grounding import TitleGrounder, model_fingerprint
    from constrained_rec.metrics import popularity_percentiles
    from constrained_rec.model import load_adapter, load_model
    from constrained_rec.report import library_versions, machine_description, write_report
    from constrained_rec.train import TrainConfig, train

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) // 2))
    state = PartialState()
    size = resolve_size(args)
    ks = args.k or (parse_ks(QUICK_KS) if args.quick else (1, 5, 10, 20))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda" and state.num_processes > 1:
        device = state.device
    eval_config = EvalConfig(ks=ks, num_beams=args.num_beams, length_penalty=args.length_penalty,
                             exclude_history=args.exclude_history, seed=args.seed,
                             decoder=args.decoder, batch_size=args.eval_batch_size or (8 if device.type == "cuda" else 4))
    output_dir = Path(args.output_dir or f"runs/{datetime.now():%Y%m%d-%H%M%S}")
    set_seed(args.seed)

    tick = time.perf_counter()
    data = load_interactions(args.dataset, data_dir=args.data_dir)
    split_config = SplitConfig(train_samples=size.train_samples or None, seed=args.seed,
                               eval_samples=None if args.all_users else min(size.eval_users, data.num_users))
    splits = make_splits(data, split_config)
    timings["data_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    model_name = args.model or (adapter_train_config(Path(args.adapter))["base_model"] if args.adapter else "smollm2-135m")
    model, tokenizer = load_model(model_name)
    timings["model_load_s"] = time.perf_counter() - tick
    item_ids = list(data.titles)
    trie = TitleTrie.from_titles([data.titles[i] for i in item_ids], tokenizer, item_ids=item_ids)
    if eval_config.max_k > len(trie):
        raise ValueError(f"K = {eval_config.max_k} is larger than the catalog of {data.name}: "
                         f"{len(trie)} distinct titles; use smaller --k values")

    train_summary = None
    adapter_dir = Path(args.adapter) if args.adapter else output_dir / "adapter"
    if args.adapter:
        check_adapter(adapter_dir, model_name, trie)
        model, _ = load_adapter(adapter_dir, base_model=model)
        train_summary = adapter_train_config(adapter_dir)
    elif size.train_samples > 0:
        if (adapter_dir / "train_config.json").is_file():  # finished by an earlier, interrupted run
            check_adapter(adapter_dir, model_name, trie)
            model, _ = load_adapter(adapter_dir, base_model=model)
        else:
            tick = time.perf_counter()
            validation = splits["validation"].select(range(min(size.validation_samples, len(splits["validation"]))))
            train_config = TrainConfig(epochs=size.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                       seed=args.seed, catalog_fingerprint=trie.fingerprint(),
                                       warmup_steps=min(20, max(1, size.train_samples // args.batch_size // 10)))
            result = train(model, tokenizer, splits["train"], train_config, eval_dataset=validation,
                           output_dir=adapter_dir)
            model = result.model
            timings["train_s"] = time.perf_counter() - tick
        train_summary = adapter_train_config(adapter_dir)
    model.to(device).eval()

    tick = time.perf_counter()
    test = splits["test"]
    exclude = consumed_items(data.interactions, test) if args.exclude_history else None
    samples = samples_from_split(test, exclude)
    positions = split_positions(data, split_config)
    counts = training_item_counts(data.interactions, list(positions["validation"]) + list(positions["test"]))
    popularity = popularity_percentiles(counts, data.titles)

    is_peft = hasattr(model, "disable_adapter")
    notes = []
    repeated = sum(s.target_item_id in s.exclude for s in samples)
    if repeated:
        notes.append(f"{repeated} of {len(samples)} users consumed their target item before: with history "
                     "exclusion no method can recommend it to them")
    recommenders = []
    if args.baselines:
        recommenders.append(MostPopularRecommender(counts, data.titles, eval_config))
    if args.constrained or args.baselines:
        recommenders.append(ConstrainedRecommender(model, tokenizer, trie, eval_config))
    if not args.constrained or args.baselines:
        grounder = TitleGrounder.build(model, tokenizer, data.titles)
        recommenders.append(UnconstrainedRecommender(model, tokenizer, trie, grounder, eval_config))
    if args.baselines:
        if is_peft:
            recommenders.append(ConstrainedRecommender(model, tokenizer, trie, eval_config, use_adapter=False))
        else:
            notes.append("zero-shot-constrained is not listed separately: the evaluated model has no adapter, "
                         "so 'constrained' already is the zero-shot base model")
    timings["eval_setup_s"] = time.perf_counter() - tick

    identity = {"eval": {k: v for k, v in config_dict(eval_config).items() if k != "batch_size"},
                "model": model_fingerprint(model, include_adapter=True), "adapter": str(adapter_dir) if is_peft else None,
                "catalog": trie.fingerprint(), "dataset": data.name}
    tick = time.perf_counter()
    records = evaluate(recommenders, samples, output_dir, identity=identity)
    timings["evaluate_s"] = time.perf_counter() - tick
    if not state.is_main_process:
        return {}

    timings["total_s"] = time.perf_counter() - started
    results = {
        "command": "python experiments/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "dataset": {"name": data.name, "users": data.num_users, "items": len(data.titles),
                    "interactions": len(data.interactions), "eval_users": len(samples),
                    "split": {"protocol": split_config.protocol, "max_history": split_config.max_history}},
        "model": model_name,
        "adapter": str(adapter_dir) if is_peft else None,
        "train": train_summary,
        "config": {**config_dict(eval_config), "constrained": args.constrained, "baselines": args.baselines,
                   "train_samples": size.train_samples, "epochs": size.epochs, "device": str(device),
                   "processes": state.num_processes, "threads": torch.get_num_threads()},
        "seed": args.seed,
        "versions": library_versions(),
        "machine": machine_description(),
        "timings": timings,
        "notes": notes,
        "methods": method_metrics(records, eval_config, catalog_size=len(data.titles), popularity=popularity),
    }
    write_report(output_dir, results)
    print((output_dir / "report.md").read_text())
    print(f"results in {output_dir} ({timings['total_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()

"""The GPU-scale run (issue 13 item 3): train on ALL ml-100k training windows, evaluate all 943 test users.

    python experiments/gpu_run.py --output-dir runs/gpu-h200          # one H200: <= 8 minutes in all
    python experiments/gpu_run.py --tiny --output-dir /tmp/gpu-tiny   # the same code end to end on a CPU, ~2 min

Steps, all library calls: the leave-one-out splits with every training window (``make_splits``), LoRA training
(``constrained_rec.train.train``, bf16 autocast on CUDA), constrained top-K for every test user
(``ConstrainedRecommender`` -> ``constrained_rec.decode.recommend``), the user-signal control
(``constrained_rec.user_signal``), and, when ``constrained_rec.collaborative`` is installed, a collaborative
assistant (``--assistant``, default EASE) as its own method, as the LM's decoding prior
(``decode.recommend(item_log_prior=...)``, D3's fusion) and as the proposer of hard negatives for a second
user-signal control. ``metrics.json``, ``report.md`` and ``metrics.png`` come from
``constrained_rec.report.write_report``; the control is added to metrics.json (``user_signal``), appended to
report.md and drawn in ``user_signal.png``.

Sizing. Training gets a wall-clock budget (``--train-budget-s``, default 180 s): runs of 2 and 8 calibration steps
measure seconds per step on this machine, and ``max_steps`` is cut so that ``--epochs`` over all windows stops inside the budget
(the log says how far it got). On the project's CPU one thread trains about 0.5 samples/s and decodes about
0.45 users/s (README), so 3 epochs of the ~97k windows (290k samples) are out of reach there; on an H200 a
135M-parameter model at batch 64 does a few hundred to a thousand samples/s, which the budget turns into one to
three epochs. Decoding 943 users at 32 prompts a batch and the control (N = 50 candidates) take one to two
minutes; loading the embedded model the first time (GGUF -> safetensors) about 30 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="training samples per step")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-budget-s", type=float, default=None,
                        help="wall-clock cap of training, enforced through a calibrated max_steps; 0: no cap [default 180, --tiny 0]")
    parser.add_argument("--train-samples", type=int, default=None, help="draw this many windows [default all]")
    parser.add_argument("--eval-users", type=int, default=None, help="seeded test users [default all 943]")
    parser.add_argument("--validation-samples", type=int, default=256)
    parser.add_argument("--k", default="1,5,10,20")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--signal-candidates", type=int, default=50, help="N of the user-signal control")
    parser.add_argument("--assistant", default="ease", help="collaborative assistant (popularity, ease, sasrec) or none")
    parser.add_argument("--prior-weight", type=float, default=1.0, help="weight of the assistant as decoding prior")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast for training and evaluation [default: on CUDA]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke size: 16 windows, 1 epoch, no budget unless given, 2 users, K=1,5, N=3, popularity assistant")
    return parser


def apply_tiny(args) -> None:
    """The end-to-end test size: every step runs, on a CPU, in a couple of minutes."""
    args.train_samples, args.epochs, args.batch_size = 16, 1, 8
    args.train_budget_s = 0.0 if args.train_budget_s is None else args.train_budget_s
    args.eval_users, args.validation_samples, args.k = 2, 8, "1,5"
    args.eval_batch_size, args.signal_candidates = 2, 3
    args.assistant = "popularity" if args.assistant != "none" else "none"


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def calibrate(args, model, tokenizer, windows, config, output_dir: Path, device, bf16: bool) -> float:
    """Seconds per optimizer step on this machine: runs of 2 and 8 steps on a copy of the model and a few windows;
    their difference cancels the set-up (tokenizing, wrapping, the first CUDA kernels)."""
    import copy

    from constrained_rec.train import train

    subset = windows.select(range(min(len(windows), 8 * args.batch_size)))
    elapsed = {}
    for steps in (2, 8):
        tick = time.perf_counter()
        with autocast(device, bf16):
            train(copy.deepcopy(model), tokenizer, subset, config(steps, 10 ** 6), output_dir=output_dir / f"calibration-{steps}")
        elapsed[steps] = time.perf_counter() - tick
    per_step = (elapsed[8] - elapsed[2]) / 6
    return per_step if per_step > 0 else elapsed[8] / 8


def train_within_budget(args, model, tokenizer, trie, splits, output_dir: Path, device, bf16: bool) -> dict:
    """LoRA training for ``args.epochs`` over the windows, cut by ``max_steps`` to fit ``--train-budget-s``."""
    from constrained_rec.train import TrainConfig, train

    validation = splits["validation"].select(range(min(args.validation_samples, len(splits["validation"]))))
    steps_per_epoch = math.ceil(len(splits["train"]) / args.batch_size)
    wanted = steps_per_epoch * args.epochs

    def config(max_steps: int, checkpoint_every: int) -> TrainConfig:
        return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                           seed=args.seed, catalog_fingerprint=trie.fingerprint(), max_steps=max_steps,
                           warmup_steps=min(100, max(1, wanted // 20)), checkpoint_every=checkpoint_every,
                           log_every=10, eval_every=max(1, min(max_steps, steps_per_epoch)))

    seconds_per_step, max_steps = None, wanted
    if args.train_budget_s > 0:
        seconds_per_step = calibrate(args, model, tokenizer, splits["train"], config, output_dir, device, bf16)
        max_steps = min(wanted, max(1, int(args.train_budget_s / seconds_per_step)))
    print(f"training: {len(splits['train'])} windows, {steps_per_epoch} steps an epoch; calibrated "
          f"{seconds_per_step} s a step -> {max_steps} of {wanted} steps ({max_steps / steps_per_epoch:.2f} epochs)",
          flush=True)
    tick = time.perf_counter()
    with autocast(device, bf16):
        result = train(model, tokenizer, splits["train"], config(max_steps, max(50, max_steps // 4)),
                       eval_dataset=validation, output_dir=output_dir / "adapter")
    return {"model": result.model, "seconds": time.perf_counter() - tick, "steps": result.global_step,
            "planned_steps": wanted, "steps_per_epoch": steps_per_epoch, "epochs_done": result.global_step / steps_per_epoch,
            "seconds_per_step_calibration": seconds_per_step, "train_loss": result.train_loss,
            "best_eval_loss": result.best_eval_loss}


def load_assistant_or_none(args, data, split_config):
    """The fitted assistant, or ``None`` with a printed reason (module missing, or ``--assistant none``)."""
    if args.assistant == "none":
        print("collaborative assistant: off (--assistant none)")
        return None
    if importlib.util.find_spec("constrained_rec.collaborative") is None:
        print("collaborative assistant: skipped, constrained_rec.collaborative is not installed in this checkout")
        return None
    from constrained_rec.collaborative import fit_assistant

    return fit_assistant(args.assistant, data, split_config, seed=args.seed)


class PriorConstrainedRecommender:
    """Constrained beam search ranking titles by ``log p_LM(title) + w * log M(title)``, M the assistant (D3)."""

    def __init__(self, model, tokenizer, trie, config, assistant, histories, prior_weight: float):
        self.model, self.tokenizer, self.trie, self.config = model, tokenizer, trie, config
        self.assistant, self.histories, self.prior_weight = assistant, histories, prior_weight
        self.names = (f"constrained+{assistant.name}",)

    def __call__(self, samples):
        from constrained_rec.decode import recommend
        from constrained_rec.recommenders import prediction_record

        prior = self.assistant.item_log_probs([self.histories[s.index] for s in samples])
        exclude = [s.exclude for s in samples] if self.config.exclude_history else None
        result = recommend(self.model, self.tokenizer, [s.prompt for s in samples], self.trie, self.config.max_k,
                           num_beams=self.config.num_beams, exclude=exclude, batch_size=len(samples),
                           item_log_prior=prior, prior_weight=self.prior_weight)
        records = []
        for sample, recs in zip(samples, result.recommendations):
            items = [i for r in recs for i in r.item_ids][: self.config.max_k]
            titles = [r.title for r in recs for _ in r.item_ids][: self.config.max_k]
            scores = [r.score for r in recs for _ in r.item_ids][: self.config.max_k]
            records.append(prediction_record(sample, items, titles, scores, len(recs), len(recs)))
        return {self.names[0]: records}


def assistant_proposer(assistant, histories):
    """The user-signal proposer: the assistant's best ``N`` items outside ``banned`` (hard negatives)."""
    def proposer(sample, n, banned):
        scores = assistant.item_log_probs([histories[sample.index]])[0]
        ranked = [int(assistant.item_ids[j]) for j in np.argsort(-scores, kind="stable")]
        return [i for i in ranked if i not in banned][:n]
    proposer.__name__ = f"{assistant.name} top-N"
    return proposer


def evaluate_methods(args, model, tokenizer, trie, loaded, output_dir: Path, device, bf16: bool):
    """Constrained top-K for every test user, plus the assistant and the assistant-as-prior where available."""
    from constrained_rec.evaluate import EvalConfig, evaluate
    from constrained_rec.pipeline import RunConfig, evaluation_samples
    from constrained_rec.recommenders import ConstrainedRecommender

    data, test = loaded.data, loaded.splits["test"]
    evaluation = EvalConfig(ks=tuple(int(k) for k in args.k.split(",")), seed=args.seed, batch_size=args.eval_batch_size)
    inputs = evaluation_samples(RunConfig(constrained=True, seed=args.seed), loaded)
    recommenders = [ConstrainedRecommender(model, tokenizer, trie, evaluation)]
    assistant = load_assistant_or_none(args, data, loaded.split_config)
    histories = None
    if assistant is not None:
        from constrained_rec.collaborative import AssistantRecommender, histories_before, sample_rows

        histories = [h.tolist() for h in histories_before(data, sample_rows(data, test))]
        recommenders.append(AssistantRecommender(assistant, histories, data.titles, evaluation))
        recommenders.append(PriorConstrainedRecommender(model, tokenizer, trie, evaluation, assistant, histories,
                                                        args.prior_weight))
    with autocast(device, bf16):
        records = evaluate(recommenders, inputs.samples, output_dir / "evaluation",
                           identity={"catalog": trie.fingerprint(), "adapter": str(output_dir / "adapter")})
    return evaluation, inputs, records, assistant, histories


def run_controls(args, model, tokenizer, trie, samples, assistant, histories, device, bf16: bool) -> dict:
    """The user-signal control with uniform candidates, and with the assistant's top-N where there is one."""
    from constrained_rec.user_signal import user_signal

    options = {"num_candidates": args.signal_candidates, "seed": args.seed,
               "batch_size": 256 if device.type == "cuda" else 32}
    with autocast(device, bf16):
        signals = {"uniform": user_signal(model, tokenizer, samples, trie, **options)}
        if assistant is not None:
            proposer = assistant_proposer(assistant, histories)
            signals[assistant.name] = user_signal(model, tokenizer, samples, trie, proposer=proposer, **options)
    return signals


def write_outputs(output_dir: Path, results: dict) -> None:
    """The library's metrics.json / report.md / metrics.png, then the control's sections and user_signal.png."""
    from constrained_rec.report import write_report
    from constrained_rec.user_signal import signal_markdown

    write_report(output_dir, results)
    signals = results["user_signal"]
    with open(output_dir / "report.md", "a") as report:
        for name, signal in signals.items():
            report.write("\n" + signal_markdown(signal).replace("## User signal", f"## User signal ({name} candidates)"))
    plot_signals(signals, output_dir / "user_signal.png")


def run(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.tiny:
        apply_tiny(args)
    if args.train_budget_s is None:
        args.train_budget_s = 180.0
    started, timings = time.perf_counter(), {}
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    torch.set_num_threads(1 if device.type == "cpu" else min(8, os.cpu_count() or 1))
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    from transformers import set_seed

    from constrained_rec.catalog import catalog_trie
    from constrained_rec.data import SplitConfig, load_interactions, make_splits
    from constrained_rec.evaluate import config_dict, method_metrics
    from constrained_rec.model import load_model
    from constrained_rec.pipeline import LoadedData
    from constrained_rec.report import library_versions, machine_description

    set_seed(args.seed)
    tick = time.perf_counter()
    data = load_interactions("ml-100k")
    split_config = SplitConfig(train_samples=args.train_samples, eval_samples=args.eval_users, seed=args.seed)
    splits = make_splits(data, split_config)
    loaded = LoadedData(data, split_config, splits)
    model, tokenizer = load_model(args.model)
    trie = catalog_trie(data, tokenizer)
    model.to(device)
    timings["load_s"] = time.perf_counter() - tick

    trained = train_within_budget(args, model, tokenizer, trie, splits, output_dir, device, bf16)
    model = trained.pop("model").to(device).eval()
    timings["train_s"] = trained["seconds"]

    tick = time.perf_counter()
    evaluation, inputs, records, assistant, histories = evaluate_methods(args, model, tokenizer, trie, loaded,
                                                                         output_dir, device, bf16)
    timings["evaluate_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    signals = run_controls(args, model, tokenizer, trie, inputs.samples, assistant, histories, device, bf16)
    timings["user_signal_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started

    results = {
        "command": "python experiments/gpu_run.py " + " ".join(shlex.quote(a) for a in argv),
        "dataset": {"name": data.name, "users": data.num_users, "items": len(data.titles),
                    "interactions": len(data.interactions), "eval_users": len(inputs.samples),
                    "train_windows": len(splits["train"])},
        "model": args.model, "adapter": str(output_dir / "adapter"),
        "train": {k: v for k, v in trained.items() if k != "seconds"},
        "config": {**config_dict(evaluation), "constrained": True, "device": str(device), "bf16": bf16,
                   "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                   "train_budget_s": args.train_budget_s, "assistant": assistant.name if assistant else None},
        "seed": args.seed, "versions": library_versions(), "machine": machine_description(), "timings": timings,
        "notes": inputs.notes,
        "methods": method_metrics(records, evaluation, catalog_size=len(data.titles), popularity=inputs.popularity),
        "user_signal": signals,
    }
    write_outputs(output_dir, results)
    print((output_dir / "report.md").read_text())
    print(json.dumps(timings))
    return results


def plot_signals(signals: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from constrained_rec.user_signal import plot_user_signal

    figure, axes = plt.subplots(1, len(signals), figsize=(5 * len(signals), 4), squeeze=False)
    for axis, (name, signal) in zip(axes[0], signals.items()):
        plot_user_signal(axis, signal)
        axis.set_xlabel(f"candidates: {name}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    run()

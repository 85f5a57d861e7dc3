"""LoRA-tune a causal LM to write the next title (BIGRec's first step), from the command line.

    python experiments/train.py --output-dir runs/ml-100k                       # embedded model and data
    python experiments/train.py --output-dir runs/ml-100k --train-samples 1024 --epochs 5 --eval-every 20
    torchrun --nproc_per_node 4 experiments/train.py --output-dir runs/ml-100k  # data-parallel, unchanged

Killed and started again with the same arguments, it continues from the last checkpoint. The output
folder holds the adapter for :func:`constrained_rec.model.load_adapter`, and the fingerprint of the
catalog trie it was trained for.
"""

from __future__ import annotations

import argparse

from constrained_rec.experiment.run_config import DATA_FILE_OPTIONS, add_data_file_arguments
from constrained_rec.experiment.train_job import TrainJob, train_job
from constrained_rec.model import EMBEDDED_MODEL
from constrained_rec.training.train import LR_SCHEDULES, TrainConfig


def main(argv: list[str] | None = None):
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="embedded name, local folder or cached HF id")
    parser.add_argument("--data", default="ml-100k", help="a name or path accepted by load_interactions")
    add_data_file_arguments(parser)  # the data-file flags of run.py, e.g. --items (its error messages name them)
    parser.add_argument("--sep", default=None, help="field separator of the CSV/TSV files [default: tab for .tsv, "
                        "comma otherwise]")
    parser.add_argument("--train-samples", type=int, default=1024, help="0 keeps all sliding windows")
    parser.add_argument("--eval-samples", type=int, default=200, help="validation samples for the loss")
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=defaults.gradient_accumulation_steps)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--early-stopping-patience", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--lora-r", type=int, default=defaults.lora_r)
    parser.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha)
    parser.add_argument("--lora-dropout", type=float, default=defaults.lora_dropout)
    parser.add_argument("--lora-target-modules", nargs="+", default=list(defaults.lora_target_modules))
    parser.add_argument("--train-on-inputs", action="store_true")
    parser.add_argument("--history-loss-weight", type=float, default=defaults.history_loss_weight,
                        help="add this weight x the mean loss of the prompt's history titles 2..n to the response loss")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --output-dir")
    args = parser.parse_args(argv)
    config = TrainConfig(
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        lora_target_modules=tuple(args.lora_target_modules), train_on_inputs=args.train_on_inputs,
        history_loss_weight=args.history_loss_weight,
        batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate, epochs=args.epochs, max_steps=args.max_steps,
        lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps, seed=args.seed,
        eval_every=args.eval_every, early_stopping_patience=args.early_stopping_patience,
        checkpoint_every=args.checkpoint_every,
    )
    data_options = {name: getattr(args, name) for name in DATA_FILE_OPTIONS}
    result = train_job(TrainJob(output_dir=args.output_dir, model=args.model, data=args.data, data_options=data_options,
                                train_samples=args.train_samples or None, eval_samples=args.eval_samples,
                                template=args.template, train=config, resume=not args.no_resume))
    print(f"{result.global_step} steps, last training loss {result.train_loss:.4f}, best validation loss "
          f"{result.best_eval_loss:.4f}{' (stopped early)' if result.stopped_early else ''}; "
          f"adapter in {result.output_dir}")
    return result


if __name__ == "__main__":
    main()

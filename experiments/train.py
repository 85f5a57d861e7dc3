"""LoRA-tune a causal LM to write the next title (BIGRec's first step), from the command line.

    python experiments/train.py --output-dir runs/ml-100k                       # embedded model and data
    python experiments/train.py --output-dir runs/ml-100k --train-samples 1024 --epochs 5 --eval-every 20
    torchrun --nproc_per_node 4 experiments/train.py --output-dir runs/ml-100k  # data-parallel, unchanged

``--train-samples all`` trains on every sliding window (``0``, its old spelling, is refused naming it).
``--config FILE.yaml`` sets any option by name (``lora_r: 16``); flags given on the command line win.
Killed and started again with the same arguments, it continues from the last checkpoint; started on the folder
with other options it is refused, naming them (``run.json``; ``--no-resume`` starts over with the new ones). The output
folder holds the adapter for :func:`constrained_rec.model.load_adapter`, and the fingerprint of the
catalog trie it was trained for.
"""

from __future__ import annotations

import argparse

from constrained_rec.experiment.run_config import DATA_FILE_OPTIONS, RunConfig
from constrained_rec.experiment.train_job import TrainJob, train_job
from constrained_rec.options import OptionParser, add_options, option_fields
from constrained_rec.training.config import TrainConfig


def build_parser() -> OptionParser:
    """The flags of :class:`TrainJob`, the data-file flags of run.py and :class:`TrainConfig`'s training options
    (defaults and help live on the fields), and ``--config``."""
    parser = OptionParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_config_option()
    add_options(parser, TrainJob)
    add_options(parser, RunConfig, DATA_FILE_OPTIONS)  # the data-file flags of run.py, e.g. --items
    add_options(parser, TrainConfig, group=parser.add_argument_group("training", "the same options as run.py's"))
    return parser


def main(argv: list[str] | None = None):
    options = vars(build_parser().parse_args(argv))
    config = TrainConfig(**{spec.name: options.pop(spec.name) for spec in option_fields(TrainConfig)})
    data_options = {name: options.pop(name) for name in DATA_FILE_OPTIONS}
    result = train_job(TrainJob(**options, data_options=data_options, train=config))
    print(f"{result.global_step} steps, last training loss {result.train_loss:.4f}, best validation loss "
          f"{result.best_eval_loss:.4f}{' (stopped early)' if result.stopped_early else ''}; "
          f"adapter in {result.output_dir}")
    return result


if __name__ == "__main__":
    main()

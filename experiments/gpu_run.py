"""The GPU-scale run: train on ALL ml-100k training windows, evaluate all 943 test users.

    python experiments/gpu_run.py --output-dir runs/gpu-h200          # one H200: <= 8 minutes in all
    python experiments/gpu_run.py --tiny --output-dir /tmp/gpu-tiny   # the same code end to end on a CPU, ~2 min

LoRA training in bf16 (on CUDA) cut to a calibrated wall-clock budget, constrained top-K for every test user,
the collaborative assistant (default EASE) alone and as the LM's decoding prior, and the user-signal control
with uniform and with assistant-proposed candidates. ``metrics.json``, ``report.md``, ``metrics.png`` and
``user_signal.png`` land in ``--output-dir``. Sizing: see :mod:`constrained_rec.experiment.scale_run`.

Every flag is a field of :class:`~constrained_rec.experiment.scale_run.ScaleRunConfig` (default and help text
live there); ``--config FILE.yaml`` sets any of them by name (``epochs: 2``), flags given on the command line win.
The run itself is :func:`constrained_rec.experiment.scale_run.run_at_scale`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from constrained_rec.experiment.scale_run import ScaleRunConfig, run_at_scale
from constrained_rec.options import OptionParser, add_options


def build_parser() -> OptionParser:
    """The flags of :class:`ScaleRunConfig`'s fields (defaults and help live there) and ``--config``."""
    parser = OptionParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_config_option()
    add_options(parser, ScaleRunConfig)
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        config = ScaleRunConfig(**vars(parser.parse_args(argv)),
                                command="python experiments/gpu_run.py " + " ".join(shlex.quote(a) for a in argv))
    except ValueError as error:
        parser.error(str(error))
    return run_at_scale(config)


if __name__ == "__main__":
    main()

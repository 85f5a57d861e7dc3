"""The GPU-scale run: train on ALL ml-100k training windows, evaluate all 943 test users.

    python experiments/gpu_run.py --output-dir runs/gpu-h200          # one H200: <= 8 minutes in all
    python experiments/gpu_run.py --tiny --output-dir /tmp/gpu-tiny   # the same code end to end on a CPU, ~2 min

LoRA training in bf16 (on CUDA) cut to a calibrated wall-clock budget, constrained top-K for every test user,
the collaborative assistant (default EASE) alone and as the LM's decoding prior, and the user-signal control
with uniform and with assistant-proposed candidates. ``metrics.json``, ``report.md``, ``metrics.png`` and
``user_signal.png`` land in ``--output-dir``. Sizing: see :mod:`constrained_rec.experiment.scale_run`.

Everything below is argparse; the run itself is :func:`constrained_rec.experiment.scale_run.run_at_scale`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from constrained_rec.experiment.run_config import ASSISTANT_CHOICES
from constrained_rec.experiment.scale_run import SCALE, TINY, ScaleRunConfig, run_at_scale


def _sized(name: str, what: str = "") -> str:
    """Help text ending in the option's default and its ``--tiny`` default."""
    show = {k: ",".join(map(str, v)) if isinstance(v, tuple) else (what or "all") if v is None else v
            for k, v in (("scale", SCALE[name]), ("tiny", TINY[name]))}
    return f"[default {show['scale']}, --tiny {show['tiny']}]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--epochs", type=int, default=None, help=f"training epochs {_sized('epochs')}")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"training samples per step {_sized('batch_size')}")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-budget-s", type=float, default=None,
                        help=f"wall-clock cap of training, enforced through a calibrated max_steps; 0: no cap "
                             f"{_sized('train_budget_s')}")
    parser.add_argument("--train-samples", type=int, default=None,
                        help=f"draw this many windows {_sized('train_samples')}")
    parser.add_argument("--eval-users", type=int, default=None,
                        help=f"seeded test users {_sized('eval_users', 'all 943')}")
    parser.add_argument("--validation-samples", type=int, default=None, help=_sized("validation_samples"))
    parser.add_argument("--k", default=None, help=f"cut-offs K {_sized('k')}")
    parser.add_argument("--eval-batch-size", type=int, default=None,
                        help=f"prompts decoded together {_sized('eval_batch_size')}")
    parser.add_argument("--signal-candidates", type=int, default=None,
                        help=f"N of the user-signal control {_sized('signal_candidates')}")
    parser.add_argument("--assistant", choices=ASSISTANT_CHOICES, default=None,
                        help=f"collaborative assistant, or none {_sized('assistant')}")
    parser.add_argument("--prior-weight", default=1.0,
                        help="weight of the assistant as decoding prior (>= 0), or auto: chosen on validation users "
                             "[default 1.0]")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast for training and evaluation [default: on CUDA]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke size for every option not given: 16 windows, 1 epoch, no budget, 2 users, "
                             "K=1,5, N=3, popularity assistant")
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

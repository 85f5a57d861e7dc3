"""Compare two run folders' results field by field, timing fields aside; exit status 1 on any difference.

    python experiments/compare_runs.py /tmp/run-before /tmp/run-after
    python experiments/compare_runs.py A B --files 'predictions*.jsonl' --ignore 'seconds$|_s$|^timings$|^command$'

What it compares and skips: ``constrained_rec.experiment.compare.compare_runs``.
"""

from __future__ import annotations

import argparse
import sys

from constrained_rec.experiment.compare import RESULT_FILES, TIMING_KEYS, compare_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", help="a run folder (e.g. written by experiments/run.py --output-dir)")
    parser.add_argument("b", help="the run folder to compare it with")
    parser.add_argument("--files", nargs="+", default=list(RESULT_FILES),
                        help=f"globs of the result files in each folder [default: {' '.join(RESULT_FILES)}]")
    parser.add_argument("--ignore", default=TIMING_KEYS,
                        help=f"regular expression: keys it matches are skipped at any depth [default: {TIMING_KEYS}]")
    parser.add_argument("--show", type=int, default=50, help="differences printed at most [default: 50]")
    args = parser.parse_args(argv)
    result = compare_runs(args.a, args.b, args.files, args.ignore)
    for line in result.differences[: args.show]:
        print(line)
    if len(result.differences) > args.show:
        print(f"... and {len(result.differences) - args.show} more")
    verdict = f"{len(result.differences)} differences" if result.differences else "equal"
    print(f"{verdict}: {len(result.files)} files in both ({', '.join(result.files)}), {result.records} records, "
          f"keys matching {args.ignore!r} skipped")
    return 1 if result.differences else 0


if __name__ == "__main__":
    sys.exit(main())

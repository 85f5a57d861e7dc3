"""Data loading at scale: catalog and prompts for a synthetic 100k-item catalog with 1M interactions.

Writes synthetic files in two layouts into a temporary folder (not timed), then times, in this process:

* ``generic``: ``load_interactions`` of an interactions CSV + items CSV (the catalog), then ``make_splits``
  with every sample under leave-one-out (every prompt);
* ``given``: the same interactions as a D3 / MiniOneRec folder (sliding windows of up to 10 items ordered by
  time, cut 8:1:1, one CSV row per sample, histories as list literals), loaded and split with
  ``protocol="given"``.

Wall and CPU seconds per stage (CPU time is the steadier figure on a shared machine); peak memory is the
process's maximum resident set size after each stage (it only grows), next to the size of the files read.
Run by hand::

    python experiments/bench_data.py                       # 100k items, 1M interactions
    python experiments/bench_data.py --interactions 200000 # smaller
"""

from __future__ import annotations

import argparse
import csv
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("Pro Glue Tape Drill Saw Paper Kit Set Steel Brass Mini Clear Heavy Duty Inch Pack Red Blue "
         "Digital Gauge Level Filament Printer Clamp Flask Glass Screws Nails Brush").split()


def synthetic(num_items: int, num_interactions: int, seed: int = 0):
    """Users with 5-35 interactions each, items drawn by a Zipf-like law, titles of 4-9 words plus the id."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 36, size=num_interactions // 5)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), num_interactions) + 1]
    lengths[-1] -= lengths.sum() - num_interactions
    users = np.repeat(np.arange(len(lengths)), lengths)
    items = np.minimum(rng.zipf(1.2, size=num_interactions) - 1, num_items - 1)
    items = rng.permutation(num_items)[items]
    times = rng.integers(1_500_000_000, 1_600_000_000, size=num_interactions)
    words = rng.integers(0, len(WORDS), size=(num_items, 9))
    sizes = rng.integers(4, 10, size=num_items)
    titles = [" ".join(WORDS[w] for w in words[i, : sizes[i]]) + f" {i}" for i in range(num_items)]
    return users, items, times, titles


def write_generic(folder: Path, users, items, times, titles) -> tuple[Path, Path]:
    interactions, catalog = folder / "interactions.csv", folder / "items.csv"
    with open(interactions, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(zip(users.tolist(), items.tolist(), times.tolist()))
    with open(catalog, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title"])
        writer.writerows(enumerate(titles))
    return interactions, catalog


def write_given(folder: Path, users, items, times, titles) -> Path:
    """D3's process.py on these interactions: per user sorted by time, windows of <= 10, ordered, 8:1:1."""
    order = np.lexsort((times, users))
    users, items, times = users[order], items[order], times[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    start_of = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    targets = np.flatnonzero(np.arange(len(users)) != start_of)
    targets = targets[np.argsort(times[targets], kind="stable")]
    cuts = [0, int(len(targets) * 0.8), int(len(targets) * 0.9), len(targets)]
    (folder / "info").mkdir(parents=True)
    with open(folder / "info" / "Synthetic_5_2016-10-2018-11.txt", "w", encoding="utf-8") as handle:
        handle.writelines(f"<a_{i % 256}><b_{i // 256 % 256}>\t{t}\t{i}\n" for i, t in enumerate(titles))
    items_list = items.tolist()
    for name, low, high in (("train", 0, 1), ("valid", 1, 2), ("test", 2, 3)):
        (folder / name).mkdir()
        with open(folder / name / "Synthetic_5_2016-10-2018-11.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["user_id", "history_item_title", "item_title", "history_item_id", "item_id"])
            for row in targets[cuts[low]:cuts[high]].tolist():
                history = items_list[max(start_of[row], row - 10):row]
                writer.writerow([f"U{users[row]}", str([titles[i] for i in history]), titles[items_list[row]],
                                 str(history), items_list[row]])
    return folder


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, function, *args, **kwargs):
    tick, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    print(f"  {label:<36} {time.perf_counter() - tick:6.2f} s wall {time.process_time() - cpu:6.2f} s CPU   "
          f"peak RSS {peak_mib():6.0f} MiB")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--layouts", default="generic,given")
    args = parser.parse_args()

    from constrained_rec.data import SplitConfig, load_interactions, make_splits

    users, items, times, titles = synthetic(args.items, args.interactions)
    print(f"{args.items:,} items, {args.interactions:,} interactions, {users.max() + 1:,} users; "
          f"start peak RSS {peak_mib():.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "generic" in args.layouts:
            interactions, catalog = write_generic(folder, users, items, times, titles)
            size = (interactions.stat().st_size + catalog.stat().st_size) / 2**20
            print(f"generic CSV ({size:.0f} MiB of files):")
            data = timed("load_interactions (catalog)", load_interactions, interactions, items=catalog)
            splits = timed("make_splits leave_one_out (prompts)", make_splits, data)
            print(f"  {sum(len(s) for s in splits.values()):,} samples, {len(data.titles):,} catalog titles")
            del data, splits
        if "given" in args.layouts:
            given = write_given(folder / "given", users, items, times, titles)
            size = sum(p.stat().st_size for p in given.rglob("*") if p.is_file()) / 2**20
            print(f"D3 / MiniOneRec folder ({size:.0f} MiB of files):")
            data = timed("load_interactions (catalog, rows)", load_interactions, given)
            splits = timed("make_splits given (prompts)", make_splits, data, SplitConfig(protocol="given"))
            print(f"  {sum(len(s) for s in splits.values()):,} samples, {len(data.titles):,} catalog titles")


if __name__ == "__main__":
    main()

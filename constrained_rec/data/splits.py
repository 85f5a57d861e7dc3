"""Splits of interactions into training, validation and test samples (BIGRec prompts)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from constrained_rec.data.interactions import COLUMNS, InteractionData
from constrained_rec.prompts import TEMPLATES, build_prompt
from constrained_rec.tokenization import response_text

PROTOCOLS = ("leave_one_out", "global_time")


@dataclass
class SplitConfig:
    """How interactions become training, validation and test samples.

    Args:
        max_history (`int`, defaults to 10): At most this many previous titles in a sample's history.
        train_samples (`int`, *optional*): Draw this many training samples (BIGRec trains on 1,024);
            ``None`` keeps all sliding windows.
        eval_samples (`int`, *optional*): Draw this many validation and this many test samples; ``None``
            keeps all (one per user under leave-one-out).
        seed (`int`, defaults to 0): Seed of those draws.
        protocol (`str`, defaults to `"leave_one_out"`): ``"leave_one_out"`` (per user: last interaction
            test, second-last validation, the rest training; SASRec, RecBole) or ``"global_time"``
            (BIGRec: all samples ordered by target time, split by ``time_fractions``).
        time_fractions (`tuple`, defaults to `(0.8, 0.1, 0.1)`): Train/validation/test shares for
            ``"global_time"``.
        template (`str`, defaults to `"alpaca"`): Prompt template, see :func:`constrained_rec.prompts.build_prompt`.
    """

    max_history: int = 10
    train_samples: int | None = None
    eval_samples: int | None = None
    seed: int = 0
    protocol: str = "leave_one_out"
    time_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    template: str = "alpaca"

    def __post_init__(self):
        if not isinstance(self.max_history, int) or self.max_history < 1:
            raise ValueError(f"max_history must be an integer >= 1, got {self.max_history!r}")
        for name in ("train_samples", "eval_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None (keep all) or an integer >= 1, got {value!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown split protocol {self.protocol!r}; accepted: {list(PROTOCOLS)}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown prompt template {self.template!r}; accepted: {list(TEMPLATES)}")
        fractions = tuple(self.time_fractions)
        if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(f"time_fractions must be three positive shares summing to 1, got {self.time_fractions!r}")


def _user_bounds(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) row of each user's block in interactions sorted by user."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return starts, ends


def split_positions(data: InteractionData, config: SplitConfig) -> dict[str, np.ndarray]:
    """Row numbers (into ``data.interactions``) of each split's targets, before any sampling.

    A sample's history is the up to ``max_history`` rows of the same user just before its target.
    """
    users = data.interactions["user_id"].to_numpy()
    starts, ends = _user_bounds(users)
    if config.protocol == "leave_one_out":
        lengths = ends - starts
        if (lengths < 3).any():
            short = int((lengths < 3).sum())
            raise ValueError(
                f"leave-one-out needs 3 interactions per user; {short} users of {data.name} have fewer "
                f"(e.g. user {int(users[starts[np.argmax(lengths < 3)]])}); load with min_user_interactions=3"
            )
        # Training targets: every row of a user but the first (no history) and the last two.
        owner_start = np.repeat(starts, lengths)
        owner_end = np.repeat(ends, lengths)
        rows = np.arange(len(users))
        train = rows[(rows > owner_start) & (rows < owner_end - 2)]
        return {"train": train, "validation": ends - 2, "test": ends - 1}
    # global_time: every row with at least one earlier row of its user, ordered by target time.
    has_history = np.ones(len(users), dtype=bool)
    has_history[starts] = False
    rows = np.flatnonzero(has_history)
    times = data.interactions["timestamp"].to_numpy()[rows]
    rows = rows[np.lexsort((rows, times))]
    train_share, validation_share, _ = config.time_fractions
    cut_train = int(len(rows) * train_share)
    cut_validation = int(len(rows) * (train_share + validation_share))
    return {"train": rows[:cut_train], "validation": rows[cut_train:cut_validation], "test": rows[cut_validation:]}


def _draw(rows: np.ndarray, count: int | None, seed: int, split: str) -> np.ndarray:
    if count is None:
        return rows
    if count > len(rows):
        raise ValueError(
            f"asked for {count} {split} samples but the {split} split has only {len(rows)}; ask for at most "
            f"{len(rows)} or None to keep all"
        )
    # One stream per split, so changing eval_samples never changes which training samples are drawn.
    rng = np.random.default_rng([seed, ("train", "validation", "test").index(split)])
    return np.sort(rng.choice(rows, size=count, replace=False))


def _features():
    import datasets

    sequence = getattr(datasets, "List", datasets.Sequence)
    return datasets.Features(
        {
            "user_id": datasets.Value("int64"),
            "history_item_ids": sequence(datasets.Value("int64")),
            "history_titles": sequence(datasets.Value("string")),
            "target_item_id": datasets.Value("int64"),
            "target_title": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "response": datasets.Value("string"),
        }
    )


def _fingerprint(data: InteractionData, config: SplitConfig, tokenizer, split: str, rows: np.ndarray) -> str:
    """A content hash of a split (what ``datasets`` keys its caches on), from its inputs, not its rows."""
    digest = hashlib.sha256()
    for array in (data.interactions[c].to_numpy() for c in COLUMNS):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(sorted(data.titles.items()), ensure_ascii=False).encode())
    digest.update(repr((data.item_noun, dataclasses.asdict(config), split)).encode())
    digest.update(np.ascontiguousarray(rows).tobytes())
    if tokenizer is not None and config.template == "chat":
        digest.update(repr((tokenizer.name_or_path, tokenizer.chat_template)).encode())
    return digest.hexdigest()[:16]


def make_splits(data: InteractionData, config: SplitConfig | None = None, tokenizer=None):
    """Training, validation and test samples as a ``datasets.DatasetDict``.

    Each row is one sample: ``user_id``, ``history_item_ids`` / ``history_titles`` (up to
    ``config.max_history`` items just before the target, oldest first), ``target_item_id``,
    ``target_title``, ``prompt`` (:func:`constrained_rec.prompts.build_prompt`) and ``response``
    (:func:`constrained_rec.tokenization.response_text` of the target title). Training samples are sliding
    windows over each user's training interactions; no history ever contains its target's interaction or
    anything later.

    Args:
        data ([`InteractionData`]): From :func:`load_interactions`.
        config ([`SplitConfig`], *optional*): Protocol, history length, sampling, template.
        tokenizer (*optional*): Needed for ``template="chat"`` only.

    Example:

    ```python
    >>> from constrained_rec.data import SplitConfig, load_interactions, make_splits
    >>> splits = make_splits(load_interactions("ml-100k"), SplitConfig(train_samples=1024, seed=0))
    >>> {name: len(split) for name, split in splits.items()}
    {'train': 1024, 'validation': 943, 'test': 943}
    >>> splits["test"][0]["response"] == '"' + splits["test"][0]["target_title"] + '"'
    True

    ```
    """
    import datasets
    import pyarrow as pa

    config = config or SplitConfig()
    if config.template == "chat" and tokenizer is None:
        raise ValueError("template 'chat' renders prompts with the tokenizer's chat template; pass tokenizer=")
    frame = data.interactions
    users = frame["user_id"].tolist()
    items = frame["item_id"].tolist()
    titles = [data.titles[item] for item in items]
    starts, ends = _user_bounds(frame["user_id"].to_numpy())
    user_start = np.repeat(starts, ends - starts).tolist()
    positions = split_positions(data, config)
    features = _features()
    splits = {}
    for split, rows in positions.items():
        count = config.train_samples if split == "train" else config.eval_samples
        rows = _draw(rows, count, config.seed, split)
        columns = {name: [] for name in features}
        for row in rows.tolist():
            first = max(user_start[row], row - config.max_history)
            columns["user_id"].append(users[row])
            columns["history_item_ids"].append(items[first:row])
            columns["history_titles"].append(titles[first:row])
            columns["target_item_id"].append(items[row])
            columns["target_title"].append(titles[row])
            columns["prompt"].append(build_prompt(titles[first:row], data.item_noun, config.template, tokenizer))
            columns["response"].append(response_text(titles[row]))
        # Straight to Arrow: Dataset.from_dict would re-encode and re-hash every row, 3x slower.
        table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
        splits[split] = datasets.Dataset(table, fingerprint=_fingerprint(data, config, tokenizer, split, rows))
    return datasets.DatasetDict(splits)


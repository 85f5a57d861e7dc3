"""Splits of interactions into training, validation and test samples (BIGRec prompts)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from constrained_rec.data.given import SPLIT_FOLDERS
from constrained_rec.data.interactions import COLUMNS, InteractionData
from constrained_rec.prompts import ITEM_NOUNS, TEMPLATES, alpaca_affixes, build_prompt
from constrained_rec.validation import check_int

PROTOCOLS = ("leave_one_out", "global_time", "given")
# The command line's spellings (experiments/run.py --split) -> protocol names; each name also maps to itself.
PROTOCOL_ALIASES = {
    "leave-one-out": "leave_one_out",
    "temporal": "global_time",
    "given": "given",
    **{name: name for name in PROTOCOLS},
}
SPLITS = ("train", "validation", "test")
logger = logging.getLogger("constrained_rec.data")

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class SplitConfig:
    """How interactions become training, validation and test samples.

    Args:
        max_history (`int`, defaults to 10): At most this many previous titles in a sample's history (BIGRec's
            and D3's setting).
        train_samples (`int`, *optional*): Draw this many training samples (BIGRec trains on 1,024);
            ``None`` keeps all sliding windows.
        eval_samples (`int`, *optional*): Draw this many validation and this many test samples; ``None``
            keeps all (one per user under leave-one-out).
        seed (`int`, defaults to 0): Seed of those draws.
        protocol (`str`, defaults to `"auto"`): ``"leave_one_out"`` (per user: last interaction test,
            second-last validation, the rest training; SASRec, RecBole), ``"global_time"`` (BIGRec, D3: all
            samples ordered by target time, split by ``time_fractions``), ``"given"`` (the layout's own rows,
            for data sets that come with a split: D3 / MiniOneRec folders), or ``"auto"``: ``"given"`` where
            the data set has its own split, ``"leave_one_out"`` otherwise. The command line's spellings
            ``leave-one-out`` / ``temporal`` / ``given`` are accepted (:data:`PROTOCOL_ALIASES`) and stored
            as the names above.
        time_fractions (`tuple`, defaults to `(0.8, 0.1, 0.1)`): Train/validation/test shares for
            ``"global_time"``.
        template (`str`, defaults to `"alpaca"`): Prompt template, see :func:`constrained_rec.prompts.build_prompt`.
        item_noun (`str`, *optional*): The prompts' plural noun ("products", "books", ...); by default the
            data set's (``InteractionData.item_noun``). One of :data:`constrained_rec.prompts.ITEM_NOUNS`.
    """

    max_history: int = 10
    train_samples: int | None = None
    eval_samples: int | None = None
    seed: int = 0
    protocol: str = "auto"
    time_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    template: str = "alpaca"
    item_noun: str | None = None

    def __post_init__(self):
        check_int(self.max_history, "max_history", least=1)
        for name in ("train_samples", "eval_samples"):
            check_int(getattr(self, name), name, least=1, none=True, note=" (None: keep all)")
        if self.protocol != "auto" and self.protocol not in PROTOCOL_ALIASES:
            raise ValueError(f"unknown split protocol {self.protocol!r}; accepted: {['auto', *PROTOCOL_ALIASES]}")
        self.protocol = PROTOCOL_ALIASES.get(self.protocol, self.protocol)
        if self.item_noun is not None and self.item_noun not in ITEM_NOUNS:
            raise ValueError(f"unknown item noun {self.item_noun!r}; accepted: {sorted(ITEM_NOUNS)}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown prompt template {self.template!r}; accepted: {list(TEMPLATES)}")
        fractions = tuple(self.time_fractions)
        if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(f"time_fractions must be three positive shares summing to 1, got {self.time_fractions!r}")

    def resolve(self, data: InteractionData) -> "SplitConfig":
        """This config for ``data``: ``protocol`` and ``item_noun`` made concrete (what metrics should record).

        Example:

        ```python
        >>> import pandas as pd
        >>> from constrained_rec.data import InteractionData, SplitConfig
        >>> frame = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [7, 8, 7], "timestamp": [1, 2, 3]})
        >>> data = InteractionData("x", frame, {7: "Heat (1995)", 8: "Up (2009)"}, item_noun="movies")
        >>> config = SplitConfig(protocol="temporal").resolve(data)
        >>> config.protocol, config.item_noun, SplitConfig().resolve(data).protocol
        ('global_time', 'movies', 'leave_one_out')

        ```
        """
        protocol = self.protocol
        if protocol == "auto":
            protocol = "given" if data.given is not None else "leave_one_out"
        if protocol == "given" and data.given is None:
            raise ValueError(
                f"protocol 'given' keeps a data set's own split, but {data.name} has none (only D3/MiniOneRec "
                "folders do: info/*.txt + train|valid|test/*.csv); use leave_one_out or global_time"
            )
        return dataclasses.replace(self, protocol=protocol, item_noun=self.item_noun or data.item_noun)


def _user_bounds(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) row of each user's block in interactions sorted by user."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return starts, ends


def split_positions(data: InteractionData, config: SplitConfig) -> dict[str, np.ndarray]:
    """Row numbers (into ``data.interactions``) of each split's targets, before any sampling.

    A sample's history is the up to ``max_history`` rows of the same user just before its target. Under
    ``"given"`` the rows are those of the layout's samples, in file order (empty for a missing split).
    """
    config = config.resolve(data)
    if config.protocol == "given":
        return {split: _given_table(data, split)["row"].to_numpy(np.int64) for split in SPLITS}
    users = data.interactions["user_id"].to_numpy()
    starts, ends = _user_bounds(users)
    if config.protocol == "leave_one_out":
        return _leave_one_out_positions(data, users, starts, ends)
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


def _leave_one_out_positions(data: InteractionData, users, starts, ends) -> dict[str, np.ndarray]:
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


def _given_table(data: InteractionData, split: str):
    """The layout's samples of ``split``; an empty table (same columns) when its CSV is missing."""
    import pandas as pd

    table = data.given.samples.get(split)
    if table is None:
        empty = np.zeros(0, np.int64)
        return pd.DataFrame({name: empty for name in ("user_id", "history_length", "target_item_id", "row", "line")})
    return table


def draw_samples(rows: np.ndarray, count: int | None, seed: int, split: str) -> np.ndarray:
    """``count`` of ``rows`` (all with ``None``), sorted: the seeded draw of ``split`` that ``make_splits`` makes."""
    if count is None:
        return rows
    if count > len(rows):
        raise ValueError(
            f"asked for {count} {split} samples but the {split} split has only {len(rows)}; ask for at most "
            f"{len(rows)} or None to keep all"
        )
    # One stream per split, so changing eval_samples never changes which training samples are drawn.
    rng = np.random.default_rng([seed, SPLITS.index(split)])
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


def _fingerprint(data: InteractionData, config: SplitConfig, tokenizer, split: str, rows: np.ndarray,
                 lengths: np.ndarray) -> str:
    """A content hash of a split (what ``datasets`` keys its caches on), from its inputs, not its rows."""
    digest = hashlib.sha256()
    for array in (data.interactions[c].to_numpy() for c in COLUMNS):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(sorted(data.titles.items()), ensure_ascii=False).encode())
    digest.update(repr((data.item_noun, dataclasses.asdict(config), split)).encode())
    digest.update(np.ascontiguousarray(rows).tobytes())
    digest.update(np.ascontiguousarray(lengths).tobytes())
    if tokenizer is not None and config.template == "chat":
        digest.update(repr((tokenizer.name_or_path, tokenizer.chat_template)).encode())
    return digest.hexdigest()[:16]


def make_splits(data: InteractionData, config: SplitConfig | None = None, tokenizer=None,
                positions: dict[str, np.ndarray] | None = None):
    """Training, validation and test samples as a ``datasets.DatasetDict``.

    Each row is one sample: ``user_id``, ``history_item_ids`` / ``history_titles`` (up to
    ``config.max_history`` items just before the target, oldest first), ``target_item_id``,
    ``target_title``, ``prompt`` (:func:`constrained_rec.prompts.build_prompt`) and ``response``
    (:func:`constrained_rec.trie.tokenization.response_text` of the target title). Training samples are sliding
    windows over each user's training interactions; no history ever contains its target's interaction or
    anything later.

    Args:
        data ([`InteractionData`]): From :func:`load_interactions`.
        config ([`SplitConfig`], *optional*): Protocol, history length, sampling, template.
        tokenizer (*optional*): Needed for ``template="chat"`` only.
        positions (*optional*): :func:`split_positions` of ``data`` under ``config``, where the caller has them
            already (they are computed here otherwise).

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

    config = (config or SplitConfig()).resolve(data)
    if config.template == "chat" and tokenizer is None:
        raise ValueError("template 'chat' renders prompts with the tokenizer's chat template; pass tokenizer=")
    context = _SampleContext.build(data)
    positions = split_positions(data, config) if positions is None else positions
    splits = {}
    for split, rows in positions.items():
        count = config.train_samples if split == "train" else config.eval_samples
        if config.protocol == "given":
            rows, lengths = _given_rows(data, split, count, config)
        else:
            rows = draw_samples(rows, count, config.seed, split)
            lengths = np.full(len(rows), config.max_history)
        table = _samples_table(context, rows, lengths, config, tokenizer)
        splits[split] = datasets.Dataset(table, fingerprint=_fingerprint(data, config, tokenizer, split, rows, lengths))
    return datasets.DatasetDict(splits)


@dataclass
class _SampleContext:
    """Per interaction row: user, item, catalog position and the row where the user's block starts; the
    catalog's titles as Arrow strings."""

    users: np.ndarray
    items: np.ndarray
    positions: np.ndarray
    user_start: np.ndarray
    titles: pa.StringArray

    @classmethod
    def build(cls, data: InteractionData) -> "_SampleContext":
        import pyarrow as pa

        frame = data.interactions
        keys = np.fromiter(data.titles, dtype=np.int64, count=len(data.titles))
        order = np.argsort(keys)
        items = frame["item_id"].to_numpy()
        positions = order[np.searchsorted(keys, items, sorter=order)]
        # Validated once here, as build_prompt validates each history: the bulk join below does not.
        blank = next((item for item, title in data.titles.items() if not isinstance(title, str) or not title.strip()), None)
        if blank is not None:
            raise ValueError(f"{data.name}: catalog titles must be non-empty strings; item {blank} has "
                             f"{data.titles[blank]!r}")
        titles = pa.array(list(data.titles.values()), pa.string())
        starts, ends = _user_bounds(frame["user_id"].to_numpy())
        return cls(frame["user_id"].to_numpy(), items, positions, np.repeat(starts, ends - starts), titles)


def _given_rows(data: InteractionData, split: str, count: int | None, config: SplitConfig):
    """Target rows and history lengths of the layout's samples of ``split`` (file order), drawn if asked."""
    if split not in data.given.samples:
        if count is not None:
            data.given.require(split, f"drawing {count} {split} samples")
        logger.warning("%s: the %s split is empty: %s", data.name, split,
                       f"no {SPLIT_FOLDERS[split]}/*.csv in {data.given.folder}")
    table = _given_table(data, split)
    chosen = draw_samples(np.arange(len(table)), count, config.seed, split)
    lengths = table["history_length"].to_numpy(np.int64)
    return table["row"].to_numpy(np.int64)[chosen], np.minimum(lengths[chosen], config.max_history)


def _samples_table(context: _SampleContext, rows: np.ndarray, lengths: np.ndarray, config: SplitConfig, tokenizer):
    """The Arrow table of the samples whose targets are ``rows``, with histories of up to ``lengths`` items.

    Built column-wise (histories as offsets into the interactions, prompts joined by Arrow): a million
    samples take seconds, where a Python loop per sample took half a minute.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = np.asarray(rows, dtype=np.int64)
    first = np.maximum(context.user_start[rows], rows - np.asarray(lengths, dtype=np.int64))
    counts = rows - first
    if (counts < 1).any():
        raise ValueError(f"the sample of interaction row {int(rows[np.argmax(counts < 1)])} has no history")
    offsets = pa.array(np.r_[0, np.cumsum(counts)], pa.int32())
    # History element k of sample s is interaction row first[s] + k.
    history_rows = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts - first, counts)
    history_positions = pa.array(context.positions[history_rows])
    history_titles = pa.ListArray.from_arrays(offsets, context.titles.take(history_positions))
    target_titles = context.titles.take(pa.array(context.positions[rows]))
    if config.template == "alpaca":
        # quoted_titles(h) == '"' + '", "'.join(h) + '"': the quotes go into the affixes and the separator.
        prefix, suffix = alpaca_affixes(config.item_noun)
        prompts = pc.binary_join_element_wise(prefix + '"', pc.binary_join(history_titles, '", "'), '"' + suffix, "")
    else:
        prompts = pa.array([build_prompt(h, config.item_noun, config.template, tokenizer)
                            for h in history_titles.to_pylist()], pa.string())
    columns = {
        "user_id": pa.array(context.users[rows]),
        "history_item_ids": pa.ListArray.from_arrays(offsets, pa.array(context.items[history_rows])),
        "history_titles": history_titles,
        "target_item_id": pa.array(context.items[rows]),
        "target_title": target_titles,
        "prompt": prompts,
        # response_text(title) == '"' + title + '"' (tests hold every sample to it).
        "response": pc.binary_join_element_wise('"', target_titles, '"', ""),
    }
    return pa.table(columns).cast(_features().arrow_schema)

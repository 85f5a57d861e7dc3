"""The data side: samples from any data set the toolkit reads, or from item-id sequences, as Lightning loaders.

Training batches are the trainer's (:func:`constrained_rec.training.batching.epoch_batches` order, padded by
:func:`constrained_rec.training.batching.collate`), so a Lightning epoch sees the same batches as
:func:`constrained_rec.training.train.train` with the same seed. Validation and test batches are lists of
:class:`~constrained_rec.evaluation.evaluate.EvalSample` (prompt, target, the items never to recommend), what
:func:`constrained_rec.evaluation.evaluate.evaluate` runs on.

``max_source_length`` and ``max_target_length`` (tokens) have one meaning each, nothing is cut silently:

- ``max_source_length``: a prompt longer than this is rebuilt without its *oldest* history titles, one at a
  time, until it fits; a prompt that does not fit even with its newest title alone is an error;
- ``max_target_length``: every target title (its tokens as the trie holds them: quoted, EOS included) must
  fit; a longer one is an error naming it. Titles are never truncated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Iterable, Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from constrained_rec.evaluation.evaluate import EvalSample, consumed_items, samples_from_split
from constrained_rec.prompts import build_prompt
from constrained_rec.training.batching import Example, collate, epoch_batches
from constrained_rec.trie.tokenization import prompt_token_ids, title_token_ids
from constrained_rec.validation import check_int


@dataclass(frozen=True)
class PromptLimits:
    """Token limits of prompts and target titles (``None``: no limit), and how prompts are rendered."""

    max_source_length: int | None = None
    max_target_length: int | None = None
    item_noun: str = "movies"
    template: str = "alpaca"

    def __post_init__(self):
        for name in ("max_source_length", "max_target_length"):
            check_int(getattr(self, name), f"{name} (tokens)", least=1, none=True, note=" (None: no limit)")

    def prompt(self, tokenizer, history_titles: Sequence[str]) -> str:
        """The prompt of ``history_titles`` (oldest first), without its oldest titles where it is too long."""
        titles = list(history_titles)
        while True:
            prompt = build_prompt(titles, self.item_noun, self.template, tokenizer)
            if self.max_source_length is None or len(prompt_token_ids(tokenizer, prompt)) <= self.max_source_length:
                return prompt
            if len(titles) == 1:
                raise ValueError(
                    f"max_source_length={self.max_source_length}: the prompt with only the newest history title "
                    f"{titles[0]!r} has {len(prompt_token_ids(tokenizer, prompt))} tokens; raise the limit")
            titles = titles[1:]

    def check_target(self, tokenizer, title: str) -> None:
        if self.max_target_length is not None:
            length = len(title_token_ids(tokenizer, title))
            if length > self.max_target_length:
                raise ValueError(f"the target title {title!r} has {length} tokens (quotes and EOS included), more "
                                 f"than max_target_length={self.max_target_length}; raise the limit (titles are "
                                 "never truncated)")


class SequencePrompter:
    """A collator for sequential data: rows with ``item_seq`` (item ids, oldest first) and ``target`` (the next
    item id) become ``{"prompt", "target_title", "target_item_id", "user_id", "history_item_ids",
    "consumed_item_ids"}`` (the prompt's newest ``max_history`` ids, and every id of ``item_seq``).

    Args:
        titles (`Mapping[int, str]`): item id -> title; an id without a title is an error naming it.
        tokenizer: the model's tokenizer (for ``limits``' token counts and chat prompts).
        max_history (`int`, defaults to 10): at most this many of the newest ids of ``item_seq`` in a prompt.
        padding_item_id (`int`, *optional*): the id that pads ``item_seq`` (SASRec-style loaders pad with 0);
            those entries are left out. Without it every id must have a title.
        limits (`PromptLimits`, *optional*): token limits and the prompt's noun and template.

    A row may carry ``user_id`` (default: its position). Usable as a ``DataLoader`` ``collate_fn`` on a
    project's own sequential data set, or through :meth:`BigRecDataModule.from_sequences`.
    """

    def __init__(self, titles: Mapping[int, str], tokenizer, max_history: int = 10,
                 padding_item_id: int | None = None, limits: PromptLimits | None = None):
        check_int(max_history, "max_history", least=1)
        self.titles, self.tokenizer, self.max_history = titles, tokenizer, max_history
        self.padding_item_id, self.limits = padding_item_id, limits or PromptLimits(item_noun="items")

    def _title(self, item_id, row_number: int) -> str:
        try:
            return self.titles[int(item_id)]
        except KeyError:
            raise ValueError(f"row {row_number}: item {int(item_id)} has no title in the title map") from None

    def row(self, row: Mapping, row_number: int = 0) -> dict:
        missing = [key for key in ("item_seq", "target") if key not in row]
        if missing:
            raise ValueError(f"row {row_number} lacks {missing}; a row needs 'item_seq' (history ids, oldest first) "
                             "and 'target' (the next item id)")
        consumed = [int(i) for i in torch.as_tensor(row["item_seq"]).reshape(-1).tolist()]
        consumed = [i for i in consumed if i != self.padding_item_id]
        ids = consumed[-self.max_history:]
        if not ids:
            raise ValueError(f"row {row_number} has an empty history (item_seq holds only padding)")
        titles = [self._title(i, row_number) for i in consumed]  # every id is checked, shown or not
        history = titles[len(consumed) - len(ids):]
        target_title = self._title(row["target"], row_number)
        self.limits.check_target(self.tokenizer, target_title)
        user = row.get("user_id", row_number)
        return {"prompt": self.limits.prompt(self.tokenizer, history), "target_title": target_title,
                "target_item_id": int(row["target"]), "user_id": int(user), "history_item_ids": ids,
                "consumed_item_ids": consumed}

    def __call__(self, rows: Sequence[Mapping]) -> list[dict]:
        return [self.row(row, n) for n, row in enumerate(rows)]


class EpochBatchSampler(Sampler):
    """The trainer's batches of an epoch (:func:`epoch_batches`), this process's share of them: every
    ``world``-th batch from ``rank``, the last ones repeated so that every process has as many."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, length_group_batches: int = 64,
                 rank: int = 0, world: int = 1):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.length_group_batches, self.rank, self.world, self.epoch = length_group_batches, rank, world, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it at the start of every epoch
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        batches = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch, self.length_group_batches)
        batches += batches[:len(batches) % self.world and self.world - len(batches) % self.world]
        return batches[self.rank::self.world]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class _Picked(torch.utils.data.Dataset):
    """Examples indexed by a list of positions (one batch per sampler element)."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, indices):
        return [self.examples[i] for i in indices]


def _training_rows(rows: Sequence[Mapping], tokenizer, limits: PromptLimits, rebuild: bool) -> dict:
    """``{"prompt": [...], "target_title": [...]}`` (what :func:`tokenize_examples` reads), targets checked;
    with ``rebuild`` the prompts are rendered again from ``history_titles`` under ``limits``."""
    prompts, titles = [], []
    for row in rows:
        limits.check_target(tokenizer, row["target_title"])
        prompts.append(limits.prompt(tokenizer, row["history_titles"]) if rebuild else row["prompt"])
        titles.append(row["target_title"])
    return {"prompt": prompts, "target_title": titles}


class BigRecDataModule(pl.LightningDataModule):
    """Training rows and validation/test users as Lightning loaders.

    Args:
        tokenizer: the model's tokenizer.
        train (*optional*): rows with ``prompt`` and ``target_title`` (a ``datasets.Dataset`` of
            :func:`constrained_rec.data.make_splits`, or a dict of lists).
        validation, test (`Sequence[EvalSample]`, *optional*): the users to rank the catalog for.
        train_config (`TrainConfig`, *optional*): its ``batch_size``, ``seed``, ``length_group_batches``,
            ``train_on_inputs`` and ``share_prompt_prefix`` shape the batches, as in :func:`train`.
        eval_batch_size (`int`, defaults to 4): users per validation/test batch (prompts decoded together).

    Build it with :meth:`from_dataset` (any data set :func:`constrained_rec.data.load_interactions` reads) or
    :meth:`from_sequences` (item-id sequences and a title map, e.g. a sequential data module's splits).
    """

    def __init__(self, tokenizer, train=None, validation: Sequence[EvalSample] | None = None,
                 test: Sequence[EvalSample] | None = None, train_config=None, eval_batch_size: int = 4):
        from constrained_rec.training.train import TrainConfig

        super().__init__()
        check_int(eval_batch_size, "eval_batch_size", least=1)
        self.tokenizer, self.train, self.eval_batch_size = tokenizer, train, eval_batch_size
        self.validation, self.test = list(validation or []), list(test or [])
        self.train_config = train_config or TrainConfig()
        self.examples: list[Example] | None = None
        self.data = self.splits = self.split_config = None  # set by from_dataset

    @classmethod
    def from_dataset(cls, dataset: str, tokenizer, *, split_config=None, train_samples: int | None = None,
                     eval_users: int | None = None, exclude_history: bool = True, limits: PromptLimits | None = None,
                     data_dir: str | None = None, train_config=None, eval_batch_size: int = 4,
                     **file_options) -> "BigRecDataModule":
        """From a data set name or path: seeded ``train_samples`` training windows (0: none) and ``eval_users``
        validation and test users (all when ``None``) under ``split_config`` (:class:`constrained_rec.data.SplitConfig`),
        each user's consumed items excluded from the rankings when ``exclude_history``. ``file_options``
        (``items``, ``user_column``, ...) go to :func:`constrained_rec.data.load_interactions`."""
        from constrained_rec.data import SplitConfig, load_interactions, make_splits

        check_int(train_samples, "train_samples", least=0, none=True, note=" (0: no training rows; None: all)")
        data = load_interactions(dataset, data_dir=data_dir, **file_options)
        # SplitConfig has no "none": draw one training window and drop it
        split_config = replace(split_config or SplitConfig(), train_samples=train_samples or (None if train_samples
                               is None else 1), eval_samples=eval_users).resolve(data)
        splits = make_splits(data, split_config, tokenizer=tokenizer)
        limits = replace(limits or PromptLimits(), item_noun=split_config.item_noun, template=split_config.template)
        rebuild = limits.max_source_length is not None

        def users(split) -> list[EvalSample]:
            samples = samples_from_split(split, consumed_items(data.interactions, split) if exclude_history else None)
            for sample in samples:
                limits.check_target(tokenizer, sample.target_title)
            if not rebuild:
                return samples
            return [replace(s, prompt=limits.prompt(tokenizer, row["history_titles"]))
                    for s, row in zip(samples, split)]

        train = None
        if train_samples != 0 and len(splits["train"]):
            train = _training_rows(splits["train"], tokenizer, limits, rebuild)
        module = cls(tokenizer, train, users(splits["validation"]), users(splits["test"]), train_config,
                     eval_batch_size)
        module.data, module.splits, module.split_config = data, splits, split_config
        return module

    @classmethod
    def from_sequences(cls, titles: Mapping[int, str], tokenizer, train: Iterable[Mapping] | None = None,
                       validation: Iterable[Mapping] | None = None, test: Iterable[Mapping] | None = None, *,
                       max_history: int = 10, padding_item_id: int | None = None, exclude_history: bool = True,
                       limits: PromptLimits | None = None, train_config=None,
                       eval_batch_size: int = 4) -> "BigRecDataModule":
        """From rows with ``item_seq`` and ``target`` item ids (see :class:`SequencePrompter`), e.g. the splits of
        a project's sequential data module. A validation/test user's ranking excludes every id of its
        ``item_seq`` when ``exclude_history`` (padding aside)."""
        prompter = SequencePrompter(titles, tokenizer, max_history, padding_item_id, limits)

        def users(rows) -> list[EvalSample]:
            return [EvalSample(n, row["user_id"], row["prompt"], row["target_item_id"], row["target_title"],
                               frozenset(row["consumed_item_ids"]) if exclude_history else frozenset())
                    for n, row in enumerate(prompter(list(rows or [])))]

        rows = prompter(list(train)) if train is not None else []
        train_rows = {"prompt": [r["prompt"] for r in rows], "target_title": [r["target_title"] for r in rows]}
        return cls(tokenizer, train_rows if rows else None, users(validation), users(test), train_config,
                   eval_batch_size)

    def setup(self, stage: str | None = None) -> None:
        from constrained_rec.training.batching import tokenize_examples

        if self.examples is None and self.train is not None:
            self.examples = tokenize_examples(self.tokenizer, self.train)

    def _placement(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        if self.train is None:
            raise ValueError("this data module has no training rows (train_samples 0, or no train split)")
        self.setup("fit")
        config = self.train_config
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        rank, world = self._placement()
        sampler = EpochBatchSampler([len(e.ids) for e in self.examples], config.batch_size, config.seed,
                                    config.length_group_batches, rank, world)
        return DataLoader(_Picked(self.examples), sampler=sampler, batch_size=None,
                          collate_fn=partial(collate, pad_token_id=pad, train_on_inputs=config.train_on_inputs,
                                             share_prefix=config.share_prompt_prefix))

    def _users(self, samples: list[EvalSample], split: str) -> DataLoader:
        if not samples:
            raise ValueError(f"this data module has no {split} users")
        return DataLoader(samples, batch_size=self.eval_batch_size, shuffle=False, collate_fn=list)

    def val_dataloader(self) -> DataLoader:
        return self._users(self.validation, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._users(self.test, "test")

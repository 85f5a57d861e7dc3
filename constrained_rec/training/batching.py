"""Training samples and batches: tokenized examples, the seeded epoch order, and padded batches with target positions.

The order of samples is a function of ``(lengths, batch_size, seed, epoch)`` only, which is what makes
training resumable mid-epoch (:mod:`constrained_rec.training.checkpoint`) and identical under data parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from constrained_rec.trie.tokenization import example_token_ids, span_token_indices


@dataclass
class Example:
    """One tokenized sample: ``ids = prompt ids + title ids + EOS``; the first ``prompt_length`` are the prompt.
    ``history_targets``: indices of the prompt tokens that are history-title targets (see :func:`history_targets`).
    ``soft_positions``: the prompt's soft positions (collaborative tokens), ``soft_items`` their rows of the
    tokens' table (:class:`constrained_rec.training.collab_tokens.CollabTokens`)."""

    ids: list[int]
    prompt_length: int
    history_targets: tuple[int, ...] = ()
    soft_positions: tuple[int, ...] = ()
    soft_items: tuple[int, ...] = ()


def tokenize_examples(tokenizer, dataset, history: bool = False, collab=None) -> list[Example]:
    """Tokenize the ``prompt`` and ``target_title`` columns of ``dataset`` with ``example_token_ids``; with
    ``history``, also locate each prompt's history-title targets (:func:`history_targets`, from ``history_titles``);
    with ``collab`` (:class:`~constrained_rec.training.collab_tokens.CollabTokens`), insert a soft position after
    each history title (:func:`soft_examples`)."""
    needed = ("prompt", "target_title", "history_titles") if history else ("prompt", "target_title")
    needed += ("history_titles", "history_item_ids") if collab is not None else ()
    missing = [c for c in needed if c not in getattr(dataset, "column_names", dataset)]
    if missing:
        raise ValueError(
            f"the data set lacks the column(s) {missing}; training needs 'prompt' (str) and 'target_title' (str), "
            "and 'history_titles' (list of str) for the history-title loss, as built by constrained_rec.data.make_splits"
        )
    prompts, titles = dataset["prompt"], dataset["target_title"]
    if len(prompts) == 0:
        raise ValueError("the data set is empty; training needs at least one sample")
    examples = [Example(*example_token_ids(tokenizer, p, t)) for p, t in zip(prompts, titles)]
    if history:
        for example, prompt, history_titles in zip(examples, prompts, dataset["history_titles"]):
            example.history_targets = history_targets(tokenizer, prompt, history_titles)
    return examples if collab is None else soft_examples(tokenizer, dataset, examples, collab)


def soft_examples(tokenizer, dataset, examples: list[Example], collab) -> list[Example]:
    """``examples`` with one soft position after each history title (the ``collab`` tokens of the row's
    ``history_item_ids``); history-title targets move with the tokens they index."""
    from constrained_rec.training.collab_tokens import hybrid_prompt_ids

    out = []
    for example, prompt, titles, items in zip(examples, dataset["prompt"], dataset["history_titles"],
                                              dataset["history_item_ids"]):
        ids, positions = hybrid_prompt_ids(tokenizer, prompt, titles)
        moved = np.arange(len(ids))[np.isin(np.arange(len(ids)), positions, invert=True)]  # old index -> new
        if len(moved) != example.prompt_length:
            raise ValueError(f"the hybrid prompt's text ids differ from the prompt's ({prompt!r})")
        out.append(Example(ids + example.ids[example.prompt_length:], len(ids),
                           tuple(int(moved[i]) for i in example.history_targets), tuple(positions),
                           tuple(collab.columns(items).tolist())))
    return out


def history_targets(tokenizer, prompt: str, history_titles) -> tuple[int, ...]:
    """The prompt tokens a history-title loss predicts: for titles 2..n of ``history_titles``, every token holding
    a character of the title's text in ``prompt`` (:func:`constrained_rec.trie.tokenization.span_token_indices`), each
    predicted from the tokens before it; no EOS (the title goes on in the prompt). The first title has nothing
    before it to be predicted from but the instruction, so it is left out."""
    from constrained_rec.prompts import history_title_spans

    spans = history_title_spans(prompt, list(history_titles))[1:]
    indices = [i for title in span_token_indices(tokenizer, prompt, spans) for i in title]
    if len(set(indices)) != len(indices):
        raise ValueError(f"two history titles share a token in the prompt {prompt!r}; their targets would overlap")
    return tuple(indices)


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  length_group_batches: int = 64) -> list[list[int]]:
    """The batches of one epoch, as sample indices: a function of ``(lengths, batch_size, seed, epoch)`` only.

    Samples are shuffled, cut into groups of ``batch_size * length_group_batches``, sorted by length
    (longest first) inside each group and cut into batches; then the batches are shuffled. Every
    sample appears in exactly one batch.

    Example:

    ```python
    >>> from constrained_rec.training.batching import epoch_batches
    >>> batches = epoch_batches([5, 9, 3, 7, 4], batch_size=2, seed=0, epoch=0)
    >>> sorted(i for b in batches for i in b)
    [0, 1, 2, 3, 4]

    ```
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    group = batch_size * length_group_batches
    batches = []
    for start in range(0, len(order), group):
        chunk = order[start:start + group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class Batch:
    """Right-padded ids, the flat positions (into ``batch * length``) whose hidden state predicts a target,
    and the length of the token prefix that all rows share (computed once, see :class:`ResponseLoss`)."""

    input_ids: torch.Tensor  # (batch, length)
    attention_mask: torch.Tensor  # (batch, length)
    positions: torch.Tensor  # (targets,) flat index b * length + t: the token at t + 1 is the target
    targets: torch.Tensor  # (targets,)
    shared_prefix_length: int = 0
    history_positions: torch.Tensor | None = None  # as positions, for the history-title targets (collate(history=True))
    history_targets: torch.Tensor | None = None
    soft_positions: torch.Tensor | None = None  # flat b * length + t of each soft position (collaborative tokens)
    soft_items: torch.Tensor | None = None  # their rows of the tokens' table

    def tensors(self) -> tuple:
        """The arguments of :class:`ResponseLoss` (with the history-title targets and the soft tokens where the batch
        has them)."""
        base = (self.input_ids, self.attention_mask, self.positions, self.targets, self.shared_prefix_length)
        if self.history_positions is not None or self.soft_positions is not None:
            base += (self.history_positions, self.history_targets)
        return base if self.soft_positions is None else base + (self.soft_positions, self.soft_items)

    def to(self, device) -> "Batch":
        optional = [None if t is None else t.to(device) for t in (self.history_positions, self.history_targets,
                                                                   self.soft_positions, self.soft_items)]
        return Batch(*(t.to(device) for t in self.tensors()[:4]), self.shared_prefix_length, *optional)

    def labels(self) -> torch.Tensor:
        """transformers-style labels (-100 where there is no target), for the full-logits reference loss."""
        labels = torch.full_like(self.input_ids, -100)
        labels.view(-1)[self.positions + 1] = self.targets
        return labels


# Below this many shared tokens a second decoder call costs more than it saves.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens that all ``sequences`` start with, leaving every one at least one token of its own;
    0 for a single sequence or when fewer than ``MIN_SHARED_PREFIX`` would be shared."""
    if len(sequences) < 2:
        return 0
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def collate(examples: Sequence[Example], pad_token_id: int, train_on_inputs: bool = False,
            share_prefix: bool = True, history: bool = False) -> Batch:
    """Pad ``examples`` on the right to the longest of them and list their target positions.

    The targets of a sample are its response tokens (title + EOS), or all tokens after the first with
    ``train_on_inputs``. They are chosen by the sample's prompt length and length, never by comparing
    ids with ``pad_token_id`` (which may equal EOS). With ``share_prefix``, the batch records how many
    leading tokens all samples share (the instruction of a prompt template), so they are run once. With
    ``history``, the batch also lists each sample's ``history_targets`` (the history-title loss).
    """
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    positions, targets = [], []
    for row, example in enumerate(examples):
        n = len(example.ids)
        if not 0 < example.prompt_length < n:
            raise ValueError(f"a sample needs a prompt and a response, got prompt length "
                             f"{example.prompt_length} of {n} tokens")
        input_ids[row, :n] = torch.tensor(example.ids)
        attention_mask[row, :n] = 1
        first = 0 if train_on_inputs else example.prompt_length - 1
        positions.append(torch.arange(first, n - 1) + row * width)
        targets += example.ids[first + 1:]
    prefix = shared_prefix_length([e.ids for e in examples]) if share_prefix else 0
    soft = [(row, i, item) for row, e in enumerate(examples) for i, item in zip(e.soft_positions, e.soft_items)]
    if soft:  # soft tokens differ between rows whatever their placeholder id: the shared prefix stops before them
        prefix = min([prefix] + [i for _, i, _ in soft])
        prefix = prefix if prefix >= MIN_SHARED_PREFIX else 0
    batch = Batch(input_ids, attention_mask, torch.cat(positions), torch.tensor(targets, dtype=torch.long), prefix)
    if soft:
        batch.soft_positions = torch.tensor([row * width + i for row, i, _ in soft], dtype=torch.long)
        batch.soft_items = torch.tensor([item for _, _, item in soft], dtype=torch.long)
    if history:
        rows = [(row, i) for row, e in enumerate(examples) for i in e.history_targets]
        batch.history_positions = torch.tensor([row * width + i - 1 for row, i in rows], dtype=torch.long)
        batch.history_targets = torch.tensor([examples[row].ids[i] for row, i in rows], dtype=torch.long)
    return batch

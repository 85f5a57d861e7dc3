"""`ItemConstraints`: what each prompt may be recommended, validated once and then passed around unchanged.

Two kinds of per-prompt input shape the titles a prompt can get:

* **exclude**: catalog items it must never get (e.g. its history);
* **item_log_prior**: a log-probability per catalog item (a collaborative assistant's distribution),
  which re-weights the model's token scores inside the mask (D3, arXiv 2406.14900).

Both are the same thing at the trie: a *mass* per item position, zero for the excluded items. The mass
``M(h)`` of a prefix ``h`` is the prior mass of the items whose titles start with ``h``; every trie node
covers a contiguous range of item positions, so ``M(h)`` is the difference of two per-prompt prefix sums
(float64). An allowed token ``t`` after ``h`` scores ``s(t) + w * (log M(h + t) - log M(h))``; along a
title the increments telescope to ``w * log M(title)``, and a child of zero mass is masked. Every
increment is <= 0, so exact best-first search stays exact.

The prior is renormalised over the items a prompt may get, so ``M(root) = 1``. ``M`` is exact to about
1e-16 of that total (float64 prefix sums); a prefix holding less mass than that is scored at the
prompt's least positive item mass, never masked.

The processor (both kernels) and ``constrained_rec.decoding.recommend`` consume the same value; the torch kernel's
device copy is cached here, per device.
"""

from __future__ import annotations

import numbers
from typing import Collection, Sequence, Sized

import numpy as np
import torch

from constrained_rec.kernels import torch_mask, trie_walk
from constrained_rec.trie.trie import TitleTrie

# A finite log-prior further than this below its prompt's best item is clamped (exp would underflow to 0).
_MAX_LOG_RANGE = 700.0


class ItemConstraints:
    """Per prompt: the excluded items and, optionally, the item prior, checked against one `TitleTrie`.

    Build it with :meth:`build`; it is immutable afterwards.

    Example:

    ```python
    >>> import numpy as np
    >>> from constrained_rec import TitleTrie
    >>> from constrained_rec.decoding.constraints import ItemConstraints
    >>> trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=2, item_ids=[10, 11, 12])
    >>> prior = np.log(np.array([[0.5, 0.25, 0.25]]))  # column j: the j-th item id given to the builder
    >>> constraints = ItemConstraints.build(trie, exclude=[{12}], item_log_prior=prior)
    >>> constraints.num_prompts, constraints.has_prior
    (1, True)
    >>> np.exp(constraints.log_mass(0, *trie.item_range([0, 1], [1, 2]))).round(4)  # titles [5, 6], [5, 7]: renormalised
    array([0.6667, 0.3333])
    >>> constraints.allowed(0, *trie.item_range([0, 2], [2, 3]))  # under [5]; [8] (item 12, excluded)
    array([ True, False])

    ```
    """

    def __init__(self, trie: TitleTrie, num_prompts: int | None, excluded: np.ndarray, excluded_offsets: np.ndarray,
                 prior_cum: np.ndarray | None, prior_floor: np.ndarray | None, prior_weight: float,
                 requested: list[np.ndarray] | None = None):
        self.trie = trie
        # Per prompt, the positions `exclude` named (without the prior's zero-mass ones): what to blame.
        self._requested = requested
        self.num_prompts = num_prompts  # None: one set of constraints (none) for any number of rows
        self.prior_weight = float(prior_weight)
        kernel = trie_walk.MaskConstraints(
            excluded, excluded_offsets,
            prior_cum if prior_cum is not None else np.zeros((0, 1)),
            prior_floor if prior_floor is not None else np.zeros(0),
            self.prior_weight, np.zeros((0, 0)),
        )
        if prior_cum is not None:  # every row starts at the root: its children's increments once, not per step
            node, lo, hi = trie.root()
            _, _, los, his = trie.children(node, lo, hi, 0)
            child_lo, child_hi = trie.item_range(los, his)
            root_lo, root_hi = trie.item_range(np.array([lo]), np.array([hi]))
            root_increments = np.empty((len(prior_cum), len(los)))
            for p in range(len(prior_cum)):
                parent = trie_walk.range_log_mass(kernel, p, root_lo, root_hi)[0]
                child = trie_walk.range_log_mass(kernel, p, child_lo, child_hi)
                root_increments[p] = self.prior_weight * np.minimum(child - parent, 0.0)
            kernel = kernel._replace(root_increments=root_increments)
        for array in (kernel.excluded, kernel.excluded_offsets, kernel.prior_cum, kernel.prior_floor,
                      kernel.root_increments):
            array.flags.writeable = False
        self._kernel = kernel
        self._device: dict[torch.device, torch_mask.DeviceConstraints] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        trie: TitleTrie,
        num_prompts: int | None = None,
        exclude: Sequence[Collection[int]] | None = None,
        item_log_prior=None,
        prior_weight: float = 1.0,
    ) -> "ItemConstraints":
        """Validates the per-prompt inputs once.

        Args:
            trie: the catalog.
            num_prompts: how many prompts the inputs must cover; by default the length of `exclude` or the rows
                of `item_log_prior` (which must agree). With neither input and no `num_prompts`, nothing is
                constrained, for any number of prompts.
            exclude: one collection of catalog item ids (ints) per prompt that it must not get.
            item_log_prior: float array-like of shape (prompts, trie.num_items): column ``j`` is the ``j``-th item
                id the trie was built with (item ``j`` when none were given). Finite or -inf (zero mass); a prompt
                needs some positive mass on an item it does not exclude. Need not be normalised.
            prior_weight: ``w`` >= 0, finite: the weight of ``log M`` in the fused score.
        """
        if not isinstance(trie, TitleTrie):
            raise ValueError(f"`trie` has to be a TitleTrie, but is {type(trie).__name__}")
        if isinstance(prior_weight, bool) or not isinstance(prior_weight, numbers.Real) or not (
                np.isfinite(prior_weight) and prior_weight >= 0):
            raise ValueError(f"`prior_weight` has to be a finite number >= 0, but is {prior_weight!r}")
        prior = None if item_log_prior is None else _checked_prior(item_log_prior, trie)
        _check_exclude_container(exclude)
        sizes = {name: n for name, n in (("num_prompts", num_prompts), ("exclude", None if exclude is None else len(exclude)),
                                         ("item_log_prior", None if prior is None else prior.shape[0])) if n is not None}
        if num_prompts is not None and (isinstance(num_prompts, bool) or not isinstance(num_prompts, numbers.Integral)
                                        or num_prompts < 1):
            raise ValueError(f"`num_prompts` has to be None or a positive integer, but is {num_prompts!r}")
        if len(set(sizes.values())) > 1:
            detail = ", ".join(f"{name}: {n}" for name, n in sizes.items())
            raise ValueError(f"the inputs disagree on the number of prompts ({detail}); give one entry per prompt")
        count = next(iter(sizes.values()), None)
        excluded = [np.zeros(0, dtype=np.int64)] * (count or 1)
        if exclude is not None:
            excluded = [_excluded_positions(trie, p, items) for p, items in enumerate(exclude)]
        prior_cum = prior_floor = None
        requested = excluded
        if prior is not None:
            prior_cum, prior_floor, excluded = _prior_sums(trie, prior, excluded)
        for p, positions in enumerate(excluded):
            if len(positions) == trie.num_items:
                raise ValueError(f"`exclude[{p}]` excludes all {trie.num_items} catalog items: prompt {p} has no title "
                                 "left to generate")
        offsets = np.zeros(len(excluded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in excluded], out=offsets[1:])
        return cls(trie, count, np.concatenate(excluded).astype(np.int64), offsets, prior_cum, prior_floor,
                   prior_weight, requested)

    # ------------------------------------------------------------------ queries
    @property
    def has_prior(self) -> bool:
        return self._kernel.prior_cum.shape[0] > 0

    @property
    def kernel_arrays(self) -> trie_walk.MaskConstraints:
        """The arrays the Numba kernel reads."""
        return self._kernel

    def on_device(self, device) -> torch_mask.DeviceConstraints:
        """The torch kernel's copy on `device`, made once per device."""
        device = torch.device(device)
        if device not in self._device:
            self._device[device] = torch_mask.DeviceConstraints.from_constraints(self._kernel, self.trie.num_items, device)
        return self._device[device]

    def check_trie(self, trie: TitleTrie) -> None:
        """Raises unless these constraints were built for `trie` (the same catalog)."""
        if trie is not self.trie and trie.fingerprint() != self.trie.fingerprint():
            raise ValueError(f"these ItemConstraints were built for {self.trie!r}, not for {trie!r}")

    def rows_per_prompt(self, num_rows: int) -> int:
        """How many consecutive rows each prompt owns: row ``r`` belongs to prompt ``r // rows_per_prompt``."""
        if self.num_prompts is None:
            return max(num_rows, 1)
        if num_rows % self.num_prompts:
            raise ValueError(
                f"got {num_rows} rows for {self.num_prompts} prompts in `exclude`/`item_log_prior`; rows must be a "
                "multiple of the prompts (batch size x beams x returned sequences)"
            )
        return max(num_rows // self.num_prompts, 1)

    def _prompt(self, prompt: int) -> int:
        return 0 if self.num_prompts is None else prompt

    def allowed(self, prompt: int, item_lo: np.ndarray, item_hi: np.ndarray) -> np.ndarray:
        """Whether each item-position range item_lo:item_hi holds an item `prompt` may get (the kernels' rule)."""
        item_lo, item_hi = np.atleast_1d(item_lo).astype(np.int64), np.atleast_1d(item_hi).astype(np.int64)
        return trie_walk.range_allowed(self._kernel, self._prompt(prompt), item_lo, item_hi)

    def log_mass(self, prompt: int, item_lo: np.ndarray, item_hi: np.ndarray) -> np.ndarray:
        """log M of allowed item-position ranges for `prompt` (float64); 0 without a prior."""
        item_lo, item_hi = np.atleast_1d(item_lo).astype(np.int64), np.atleast_1d(item_hi).astype(np.int64)
        if not self.has_prior:
            return np.zeros(len(item_lo))
        return trie_walk.range_log_mass(self._kernel, self._prompt(prompt), item_lo, item_hi)

    def excluded_positions(self, prompt: int) -> np.ndarray:
        """The sorted item positions `prompt` may not get (excluded, or of zero prior mass)."""
        p = self._prompt(prompt)
        return self._kernel.excluded[self._kernel.excluded_offsets[p] : self._kernel.excluded_offsets[p + 1]]

    def allowed_items(self, prompt: int, seq: int) -> list[int]:
        """The item ids of trie sequence `seq` that `prompt` may get."""
        lo, hi = self.trie.item_range(seq, seq + 1)
        positions = np.arange(int(lo), int(hi))
        return self.trie.items_at(positions[~np.isin(positions, self.excluded_positions(prompt))])

    def titles_available(self, prompt: int) -> int:
        """How many distinct titles `prompt` can still get."""
        touched = np.unique(self.trie.sequence_at(self.excluded_positions(prompt)))  # titles with an excluded item
        return len(self.trie) - int(np.sum(~self.allowed(prompt, *self.trie.item_range(touched, touched + 1))))

    def removal_cause(self, prompt: int) -> str:
        """What took titles away from `prompt`, for messages: `exclude`, the prior's -inf entries, or both."""
        if not self.has_prior:
            return "after `exclude`"
        by_exclude = _titles_covered(self.trie, self._requested[self._prompt(prompt)])
        by_both = _titles_covered(self.trie, self.excluded_positions(prompt))
        if by_exclude == by_both:
            return "after `exclude`"
        prior = f"the -inf (zero-mass) entries of `item_log_prior[{prompt}]`"
        if by_exclude == 0:
            return f"{_titles(by_both)} removed by {prior}"
        return f"{_titles(by_exclude)} removed by `exclude`, {by_both - by_exclude} more by {prior}"

    def __repr__(self) -> str:
        return (f"ItemConstraints(prompts={self.num_prompts}, excluded={len(self._kernel.excluded)}, "
                f"prior={self.has_prior}, prior_weight={self.prior_weight})")


def _titles(count: int) -> str:
    return f"{count} title{'s' * (count != 1)}"


def _titles_covered(trie: TitleTrie, positions: np.ndarray) -> int:
    """How many titles have every one of their items among the item `positions` (sorted, distinct)."""
    seqs, counts = np.unique(trie.sequence_at(positions), return_counts=True)
    lo, hi = trie.item_range(seqs, seqs + 1)
    return int(np.sum(counts == hi - lo))


# ---------------------------------------------------------------------- validation
def _check_exclude_container(exclude) -> None:
    if exclude is None:
        return
    if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Sequence) or len(exclude) == 0:
        raise ValueError(
            f"`exclude` has to be None or a non-empty sequence with one collection of item ids per prompt, "
            f"but is {exclude!r}"
        )


def _excluded_positions(trie: TitleTrie, prompt: int, items) -> np.ndarray:
    if isinstance(items, (str, bytes, numbers.Number)) or not isinstance(items, Collection):
        raise ValueError(f"`exclude[{prompt}]` has to be a collection of item ids, but is {items!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise ValueError(f"`exclude[{prompt}]` holds {item!r} ({type(item).__name__}); item ids are ints")
    return trie.positions_of(items)


def _checked_prior(item_log_prior, trie: TitleTrie) -> np.ndarray:
    if isinstance(item_log_prior, torch.Tensor):
        if not item_log_prior.is_floating_point():
            raise ValueError(f"`item_log_prior` has to hold floats, but has dtype {item_log_prior.dtype}")
        prior = item_log_prior.detach().cpu().double().numpy()
    else:
        try:
            prior = np.asarray(item_log_prior)
        except ValueError:  # numpy's "inhomogeneous shape": rows of different lengths
            lengths = [len(row) if isinstance(row, Sized) else None for row in item_log_prior]
            raise ValueError(f"`item_log_prior` has to have shape (prompts, {trie.num_items}), but its rows have "
                             f"the lengths {lengths[:10]}; give one float per catalog item in every row") from None
        if prior.dtype.kind != "f":
            raise ValueError(f"`item_log_prior` has to hold floats, but has dtype {prior.dtype}")
        prior = prior.astype(np.float64)
    if prior.ndim != 2 or prior.shape[1] != trie.num_items or prior.shape[0] == 0:
        raise ValueError(f"`item_log_prior` has to have shape (prompts, {trie.num_items}) (one column per catalog "
                         f"item, in the order the trie was built with), but has shape {tuple(prior.shape)}")
    for bad, what in ((np.isnan(prior), "NaN"), (prior == np.inf, "+inf")):
        if bad.any():
            p, j = (int(x) for x in np.argwhere(bad)[0])
            raise ValueError(f"`item_log_prior[{p}, {j}]` is {what}; log-priors are finite or -inf (zero mass)")
    return prior


def _prior_sums(trie: TitleTrie, prior: np.ndarray, excluded: list[np.ndarray]):
    """Per prompt: cumulative mass over item positions (normalised), least positive mass, and zero-mass positions."""
    by_position = np.empty_like(prior)
    by_position[:, trie.positions_in_build_order()] = prior
    num_prompts, num_items = by_position.shape
    cum = np.zeros((num_prompts, num_items + 1))
    floor = np.empty(num_prompts)
    zero_mass = []
    for p in range(num_prompts):
        row = by_position[p]
        row[excluded[p]] = -np.inf
        best = row.max()
        if best == -np.inf:
            raise ValueError(f"`item_log_prior[{p}]` puts no mass on any item prompt {p} may get (every value is "
                             "-inf once `exclude` is applied); give it a finite log-prior on some allowed item")
        mass = np.exp(np.maximum(row - best, -_MAX_LOG_RANGE))
        mass[row == -np.inf] = 0.0
        np.cumsum(mass, out=cum[p, 1:])
        total = cum[p, -1]
        cum[p] /= total
        floor[p] = mass[mass > 0].min() / total
        zero_mass.append(np.union1d(excluded[p], np.flatnonzero(mass == 0)).astype(np.int64))
    return cum, floor, zero_mass

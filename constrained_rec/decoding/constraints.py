"""`ItemConstraints`: what each prompt may be recommended, validated once and then passed around unchanged.

Two kinds of per-prompt input shape the titles a prompt can get:

* **exclude**: catalog items it must never get (e.g. its history);
* **item_log_prior**: a log-probability per catalog item (a collaborative assistant's distribution),
  which re-weights the model's token scores inside the mask (D3, arXiv 2406.14900).

Both are the same thing at the trie: a *mass* per item position, zero for the excluded items. The mass
``M(h)`` of a prefix ``h`` is the prior mass of the items whose titles start with ``h`` (a title's mass is the
sum over its allowed items; several items may share a title). An allowed token ``t`` after ``h`` scores
``s(t) + w * (L(h + t) - L(h))``, where the *lookahead* ``L`` is one of

* ``"sum"``: ``L(h) = log M(h)``, the mass under ``h``; ``L(root) = 0``;
* ``"max"``: ``L(h) = log max_{titles t under h} M(t)``, the best single title under ``h``.

Both agree on a complete title (``L = log M(title)``), so along a title the increments telescope to
``w * (log M(title) - L(root))``: the fused score ``log p_LM + w log M(title)`` up to a per-prompt constant
(:meth:`ItemConstraints.prior_offset`, 0 for ``"sum"``), and only the order in which partial titles
compete changes. Every increment is <= 0 and ``L(h)`` bounds ``log M`` of every title under ``h``, so exact
best-first search stays exact with either; ``"max"`` is the tighter bound. A child of zero mass is masked.

**Exact for every prior.** ``L`` is kept per trie node (float64, one array ``(prompts, nodes)``), computed
once per prompt bottom-up in log space (``kernels.trie_walk.node_log_values``): masses are only ever added,
never a prefix sum subtracted, so a title of mass 1e-300 next to one of mass 1 keeps its exact log-mass.
The per-node array replaces the per-item prefix sums: trie nodes are about 1.3x the items on ml-100k.
A weight so large that ``w`` times a prompt's log-mass range leaves float32 is refused when the constraints
are built; the kernels also report a row whose fused score leaves the score dtype (float16) as an error.

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
from constrained_rec.validation import check_int

LOOKAHEADS = ("sum", "max")
# Fused scores live in float32 (the model's scores, and the searches' sums): w times a prompt's log-mass range
# must stay inside it.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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
    >>> [round(float(np.exp(constraints.title_log_mass(0, seq))), 4) for seq in (0, 1)]  # [5, 6], [5, 7]: renormalised
    [0.6667, 0.3333]
    >>> tokens, children = trie.children(trie.root())
    >>> tokens.tolist(), constraints.allowed(0, *trie.item_range(children))  # item 12, title [8], is excluded
    ([5, 8], array([ True, False]))

    ```
    """

    def __init__(self, trie: TitleTrie, num_prompts: int | None, excluded: np.ndarray, excluded_offsets: np.ndarray,
                 prior_node_log: np.ndarray | None, prior_weight: float, prior_lookahead: str = "sum",
                 requested: list[np.ndarray] | None = None):
        self.trie = trie
        # Per prompt, the positions `exclude` named (without the prior's zero-mass ones): what to blame.
        self._requested = requested
        self.num_prompts = num_prompts  # None: one set of constraints (none) for any number of rows
        self.prior_weight = float(prior_weight)
        self.prior_lookahead = prior_lookahead
        kernel = trie_walk.MaskConstraints(excluded, excluded_offsets,
                                           prior_node_log if prior_node_log is not None else np.zeros((0, 1)),
                                           self.prior_weight)
        for array in (kernel.excluded, kernel.excluded_offsets, kernel.prior_node_log):
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
        prior_lookahead: str = "sum",
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
            prior_weight: ``w`` >= 0, finite: the weight of ``log M`` in the fused score. ``w`` times a prompt's
                log-mass range (its best allowed title's log-mass minus its least one's) must stay below float32's
                largest value, so that fused scores stay finite.
            prior_lookahead: ``"sum"`` or ``"max"``, what a partial title's increments look ahead to (module
                docstring): the mass under it, or its best title's mass.
        """
        if not isinstance(trie, TitleTrie):
            raise ValueError(f"`trie` has to be a TitleTrie, but is {type(trie).__name__}")
        if isinstance(prior_weight, bool) or not isinstance(prior_weight, numbers.Real) or not (
                np.isfinite(prior_weight) and prior_weight >= 0):
            raise ValueError(f"`prior_weight` has to be a finite number >= 0, but is {prior_weight!r}")
        if prior_lookahead not in LOOKAHEADS:
            raise ValueError(f"`prior_lookahead` has to be one of {LOOKAHEADS}, but is {prior_lookahead!r}")
        prior = None if item_log_prior is None else _checked_prior(item_log_prior, trie)
        _check_exclude_container(exclude)
        sizes = {name: n for name, n in (("num_prompts", num_prompts), ("exclude", None if exclude is None else len(exclude)),
                                         ("item_log_prior", None if prior is None else prior.shape[0])) if n is not None}
        check_int(num_prompts, "`num_prompts`", least=1, none=True, numpy=True)
        if len(set(sizes.values())) > 1:
            detail = ", ".join(f"{name}: {n}" for name, n in sizes.items())
            raise ValueError(f"the inputs disagree on the number of prompts ({detail}); give one entry per prompt")
        count = next(iter(sizes.values()), None)
        excluded = [np.zeros(0, dtype=np.int64)] * (count or 1)
        if exclude is not None:
            excluded = [_excluded_positions(trie, p, items) for p, items in enumerate(exclude)]
        node_log = None
        requested = excluded
        if prior is not None:
            node_log, excluded = _prior_node_log(trie, prior, excluded, prior_lookahead)
            _check_weight(node_log, prior_weight)
        for p, positions in enumerate(excluded):
            if len(positions) == trie.num_items:
                raise ValueError(f"`exclude[{p}]` excludes all {trie.num_items} catalog items: prompt {p} has no title "
                                 "left to generate")
        offsets = np.zeros(len(excluded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in excluded], out=offsets[1:])
        return cls(trie, count, np.concatenate(excluded).astype(np.int64), offsets, node_log, prior_weight,
                   prior_lookahead, requested)

    # ------------------------------------------------------------------ queries
    @property
    def has_prior(self) -> bool:
        return self._kernel.prior_node_log.shape[0] > 0

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

    def node_log_prior(self, prompt: int, nodes) -> np.ndarray:
        """The lookahead ``L`` of trie nodes (the ``node`` of a ``TrieCursor``) for `prompt`; 0 without a prior."""
        nodes = np.atleast_1d(np.asarray(nodes, dtype=np.int64))
        if not self.has_prior:
            return np.zeros(len(nodes))
        return self._kernel.prior_node_log[self._prompt(prompt), nodes]

    def title_log_mass(self, prompt: int, seq: int) -> float:
        """``log M`` of trie sequence `seq` for `prompt`: its allowed items' renormalised mass (-inf: none); 0.0
        without a prior."""
        if not self.has_prior:
            return 0.0
        own_node = self.trie.walk(self.trie.suffix(seq, 0)).node  # the node that covers this title alone
        return float(self.node_log_prior(prompt, own_node)[0])

    def prior_offset(self, prompt: int) -> float:
        """``w * L(root)``: what a title's increments lack of ``w * log M(title)`` (0.0 with ``"sum"``)."""
        return self.prior_weight * float(self.node_log_prior(prompt, self.trie.root().node)[0])

    def excluded_positions(self, prompt: int) -> np.ndarray:
        """The sorted item positions `prompt` may not get (excluded, or of zero prior mass)."""
        p = self._prompt(prompt)
        return self._kernel.excluded[self._kernel.excluded_offsets[p] : self._kernel.excluded_offsets[p + 1]]

    def allowed_items(self, prompt: int, seq: int) -> list[int]:
        """The item ids of trie sequence `seq` that `prompt` may get."""
        lo, hi = self.trie.sequence_item_range(seq)
        positions = np.arange(int(lo), int(hi))
        return self.trie.items_at(positions[~np.isin(positions, self.excluded_positions(prompt))])

    def titles_available(self, prompt: int) -> int:
        """How many distinct titles `prompt` can still get."""
        touched = np.unique(self.trie.sequence_at(self.excluded_positions(prompt)))  # titles with an excluded item
        return len(self.trie) - int(np.sum(~self.allowed(prompt, *self.trie.sequence_item_range(touched))))

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
                f"prior={self.has_prior}, prior_weight={self.prior_weight}, prior_lookahead={self.prior_lookahead!r})")


def _titles(count: int) -> str:
    return f"{count} title{'s' * (count != 1)}"


def _titles_covered(trie: TitleTrie, positions: np.ndarray) -> int:
    """How many titles have every one of their items among the item `positions` (sorted, distinct)."""
    seqs, counts = np.unique(trie.sequence_at(positions), return_counts=True)
    lo, hi = trie.sequence_item_range(seqs)
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


def _prior_node_log(trie: TitleTrie, prior: np.ndarray, excluded: list[np.ndarray], lookahead: str):
    """Per prompt: the lookahead ``L`` of every trie node (float64), and the positions of zero mass."""
    by_position = np.empty_like(prior)
    by_position[:, trie.positions_in_build_order()] = prior
    seq_starts = trie.sequence_item_range(np.arange(len(trie)))[0]
    node_log = np.empty((len(prior), trie.num_nodes))
    zero_mass = []
    for p, row in enumerate(by_position):
        row[excluded[p]] = -np.inf
        best = row.max()
        if best == -np.inf:
            raise ValueError(f"`item_log_prior[{p}]` puts no mass on any item prompt {p} may get (every value is "
                             "-inf once `exclude` is applied); give it a finite log-prior on some allowed item")
        with np.errstate(over="ignore"):
            shifted = row - best  # the best item has mass 1, so no sum below overflows
        lost = np.flatnonzero(np.isinf(shifted) & np.isfinite(row))
        if len(lost):
            j = int(np.flatnonzero(trie.positions_in_build_order() == lost[0])[0])
            raise ValueError(f"`item_log_prior[{p}, {j}]` = {float(prior[p, j])!r} lies more than float64's range below "
                             f"the prompt's best value {float(best)!r}; give log-priors within 1e308 of each other")
        with np.errstate(divide="ignore"):
            seq_log = np.logaddexp.reduceat(shifted, seq_starts)  # a title's mass: the sum over its items
        seq_log -= np.log(np.sum(np.exp(seq_log)))  # normalised over the allowed items
        trie_walk.node_log_values(trie.arrays(), seq_log, lookahead == "max", node_log[p])
        if lookahead == "sum":
            node_log[p] -= node_log[p, 0]  # M(root) = 1 exactly, not to the last bit of a sum
        zero_mass.append(np.union1d(excluded[p], np.flatnonzero(row == -np.inf)).astype(np.int64))
    return node_log, zero_mass


def _check_weight(node_log: np.ndarray, prior_weight: float) -> None:
    """Refuses a weight that would push fused scores out of float32 (they would read as masked, -inf)."""
    finite = np.where(np.isfinite(node_log), node_log, np.inf)
    spans = node_log[:, 0] - finite.min(axis=1)  # the root's L is the largest, the least title's L the smallest
    p = int(np.argmax(spans))
    span = float(spans[p])
    if prior_weight * span > _FLOAT32_MAX:
        raise ValueError(
            f"`prior_weight` {prior_weight!r} times prompt {p}'s prior log-mass range ({span:.6g} nats between its "
            f"best and its least allowed title) is {prior_weight * span:.6g}, beyond float32's largest value "
            f"{_FLOAT32_MAX:.4g}: fused scores would become -inf and read as masked. Use prior_weight <= "
            f"{_FLOAT32_MAX / span:.6g}"
        )

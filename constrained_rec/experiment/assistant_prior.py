"""The assistant as a decoding prior: :class:`AssistantPrior` turns a collaborative assistant's item
log-probabilities into per-sample ``item_log_prior`` rows in the catalog trie's column order.

**The fused objective.** Decoding with ``item_log_prior`` and ``prior_weight = w`` ranks every title by
``log p_LM(title) + w * log M(title)``, where ``M(title)`` is the prior mass of the title's allowed items,
renormalised over the user's allowed items (the per-token increments telescope to exactly this; see
:mod:`constrained_rec.decoding.constraints`). The run's step that fits the assistant and weighs its prior is
:mod:`constrained_rec.experiment.assistant_step`; the search-error check is
:mod:`constrained_rec.experiment.search_error`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class AssistantPrior:
    """Per-sample item log-prior rows for decoding: the assistant's log-probabilities, in the trie's column order.

    ``decode.recommend(item_log_prior=...)`` reads column ``j`` as the ``j``-th item id the trie was built
    with; the assistant's column ``j`` is ``assistant.item_ids[j]``. The two orders are matched here by item
    id (they coincide for :func:`constrained_rec.experiment.catalog.catalog_trie`, which builds from sorted ids), and a
    catalog mismatch is an error.
    """

    def __init__(self, assistant, histories: Sequence[Sequence[int]], trie):
        from constrained_rec.collaborative.base import columns_of

        build_ids = trie.item_ids_in_build_order()
        assistant_ids = np.asarray(assistant.item_ids, dtype=np.int64)
        if len(build_ids) != len(assistant_ids) or set(build_ids.tolist()) != set(assistant_ids.tolist()):
            raise ValueError(f"the assistant's catalog ({len(assistant_ids)} items) is not the trie's "
                             f"({len(build_ids)} items): fit the assistant on the data set the trie was built from")
        self.columns = columns_of(assistant_ids, build_ids, "trie catalog")  # trie column j <- assistant column
        self.assistant, self.histories = assistant, histories

    def __call__(self, samples) -> np.ndarray:
        """float32 ``(len(samples), items)``: row ``i`` is sample ``i``'s log-prior, trie build order."""
        for sample in samples:
            if not 0 <= sample.index < len(self.histories):
                raise ValueError(f"sample {sample.index} has no history: {len(self.histories)} histories were given")
        log_probs = self.assistant.item_log_probs([self.histories[s.index] for s in samples])
        return np.ascontiguousarray(log_probs[:, self.columns])

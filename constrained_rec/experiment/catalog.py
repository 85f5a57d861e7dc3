"""The catalog trie of a data set, built in one fixed order by everyone who trains or evaluates on it.

Training records the trie's fingerprint beside the adapter and evaluation compares it
(:func:`constrained_rec.model.check_adapter`), so both must build the trie the same way: this function.
"""

from __future__ import annotations

from constrained_rec.trie.trie import TitleTrie


def catalog_trie(data, tokenizer) -> TitleTrie:
    """The :class:`TitleTrie` of every catalog title of ``data``, item ids in ascending order.

    Args:
        data (`InteractionData`):
            A loaded data set (:func:`constrained_rec.data.load_interactions`); ``data.titles`` maps item id -> title.
        tokenizer:
            The model's tokenizer (:func:`constrained_rec.model.load_tokenizer`).

    Example:

    ```python
    >>> from types import SimpleNamespace
    >>> from constrained_rec.experiment.catalog import catalog_trie
    >>> from constrained_rec.model import load_tokenizer
    >>> data = SimpleNamespace(titles={7: "Heat (1995)", 3: "Casino (1995)"})
    >>> trie = catalog_trie(data, load_tokenizer())
    >>> len(trie), trie.titles.title(7)
    (2, 'Heat (1995)')

    ```
    """
    item_ids = sorted(data.titles)
    if not item_ids:
        raise ValueError(f"the data set {getattr(data, 'name', '?')!r} has an empty catalog: no titles to decode")
    return TitleTrie.from_titles([data.titles[i] for i in item_ids], tokenizer, item_ids=item_ids)

"""`TrieCursor`: a named search position in a `TitleTrie`, what the Python searches move instead of loose ints."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class TrieCursor(NamedTuple):
    """A search position in a :class:`TitleTrie`: a prefix of ``depth`` tokens, which leads to trie node ``node``
    and can still become the sequences ``seq_lo:seq_hi``.

    :meth:`TitleTrie.root` gives the empty prefix's cursor, :meth:`TitleTrie.children` the cursors one token
    further as one cursor of int64 arrays (one entry per child; ``depth`` stays an int); :meth:`at` picks from
    such a cursor. ``node`` is what ``ItemConstraints.node_log_prior`` takes. A prefix with one completion (a
    *tail*) keeps its node: its one sequence ``seq_lo`` holds the rest (:meth:`TitleTrie.completion`).

    ```python
    >>> from constrained_rec import TitleTrie
    >>> trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=2)
    >>> tokens, children = trie.children(trie.root())
    >>> tokens.tolist(), children.seq_lo.tolist(), children.seq_hi.tolist(), children.depth
    ([5, 8], [0, 2], [2, 3], 1)
    >>> under_8 = children.at(1)
    >>> under_8.is_tail, trie.completion(under_8)
    (True, [2])

    ```
    """

    node: int | np.ndarray
    seq_lo: int | np.ndarray
    seq_hi: int | np.ndarray
    depth: int

    @property
    def is_tail(self):
        """Whether the prefix has a single completion (elementwise for a cursor of arrays)."""
        return self.seq_hi - self.seq_lo == 1

    def at(self, index) -> "TrieCursor":
        """Entry ``index`` of a cursor of arrays as a cursor of ints; an index array or a mask keeps arrays."""
        if isinstance(index, (int, np.integer)):
            return TrieCursor(int(self.node[index]), int(self.seq_lo[index]), int(self.seq_hi[index]), self.depth)
        return TrieCursor(self.node[index], self.seq_lo[index], self.seq_hi[index], self.depth)

    def repeat(self, count: int) -> "TrieCursor":
        """``count`` copies of a cursor of ints, as one cursor of arrays."""
        return TrieCursor(*(np.full(count, value, dtype=np.int64) for value in self[:3]), self.depth)

    @staticmethod
    def concatenate(cursors: Sequence["TrieCursor"]) -> "TrieCursor":
        """Cursors of arrays of one depth, end to end."""
        depths = {cursor.depth for cursor in cursors}
        if len(depths) != 1:
            raise ValueError(f"only cursors of one depth concatenate, got depths {sorted(depths)}")
        return TrieCursor(*(np.concatenate(column) for column in list(zip(*cursors))[:3]), depths.pop())

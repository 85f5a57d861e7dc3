"""The searches behind ``constrained_rec.decode.recommend``: model calls (`runner`), the shared step (`steps`),
beam search (`beam`) and exact best-first search (`exact`)."""

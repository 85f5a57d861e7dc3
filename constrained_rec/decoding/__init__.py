"""Constrained decoding over a :class:`~constrained_rec.trie.trie.TitleTrie`: the per-step masks (`constraints`,
`masking`), the transformers `processor`, the search front ``recommend.recommend`` with its model calls (`runner`),
shared step (`steps`), beam search (`beam`) and exact best-first search (`exact`), and `scoring` of given titles."""

"""The catalog as a prefix trie of tokenized titles: `trie` (:class:`TitleTrie`, :class:`TitleIndex`), its compiler
(`build`), the checks of a saved folder (`io`) and the tokenization every layer agrees on (`tokenization`)."""

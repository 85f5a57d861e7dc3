"""The catalog as a prefix trie of tokenized titles: `trie` (:class:`TitleTrie`), the search position it hands out
(`cursor`, :class:`TrieCursor`), its title text index (`titles`, :class:`TitleIndex`), its compiler (`build`), the
checks of a saved folder (`io`) and the tokenization every layer agrees on (`tokenization`)."""

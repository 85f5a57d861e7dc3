"""constrained-rec: generative recommendation whose decoder can only write catalog titles.

```python
from constrained_rec import TitleTrie, TitleTrieProcessor
```

The names are imported on first use, so that `python -m constrained_rec.data ...` and other light entry
points do not pay for importing torch, transformers and numba.
"""

from importlib import import_module

__version__ = "0.1.0"
_EXPORTS = {
    "TitleTrie": "constrained_rec.trie",
    "TitleTrieProcessor": "constrained_rec.processor",
    "response_text": "constrained_rec.tokenization",
    "title_token_ids": "constrained_rec.tokenization",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'constrained_rec' has no attribute {name!r}")

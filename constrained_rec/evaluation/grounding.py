"""BIGRec's post-hoc grounding: map the free text an unconstrained model wrote to catalog items.

This is the baseline that constrained decoding replaces. Two groundings, as published:

- **exact**: the generated title (quotes stripped) equals a catalog title; every item with that title
  is a match. Outputs without an exact match are invalid: they recommend nothing.
- **L2**: every text is embedded as the *base* model's last-layer hidden state at its last token (the
  LoRA adapter switched off), and the catalog is ranked by the L2 distance between the embedding of the
  generated text and the same embedding of every title. Every output maps to some item this way, valid
  or not. The title embeddings depend only on the base model and the catalog, so they are computed once
  and cached on disk under a key of both.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Collection, Mapping, Sequence

import numpy as np
import torch

from constrained_rec.hf import base_causal_lm, left_pad
from constrained_rec.hf import cache_dir as default_cache_dir
from constrained_rec.trie.titles import TitleIndex
from constrained_rec.validation import check_int


def parse_generated_title(text: str) -> str:
    """The title inside a generated response: whitespace and the surrounding double quotes removed.

    The inverse of :func:`constrained_rec.trie.tokenization.response_text` for well-formed outputs; an output
    cut off before its closing quote keeps what it has.

    Example:

    ```python
    >>> from constrained_rec.evaluation.grounding import parse_generated_title
    >>> parse_generated_title(' "Heat (1995)"\\n'), parse_generated_title('"Heat (19')
    ('Heat (1995)', 'Heat (19')

    ```
    """
    text = text.strip()
    if text.startswith('"'):
        text = text[1:]
    if text.endswith('"'):
        text = text[:-1]
    return text.strip()


@torch.no_grad()
def last_token_hidden_states(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """BIGRec's text embedding: the base model's last-layer hidden state at each text's last token.

    Texts are tokenized with the model's special tokens, left-padded in batches of similar length, with
    position ids that skip the padding, so a text's embedding does not depend on its batch. A peft
    adapter on ``model`` is switched off: the embedding is the base model's. Only the decoder runs (no
    LM head).

    Args:
        model (`PreTrainedModel` or `peft.PeftModel`):
            A causal LM whose decoder returns ``last_hidden_state`` (the final norm applied).
        tokenizer:
            Its tokenizer.
        texts (`Sequence[str]`):
            Non-empty strings.
        batch_size (`int`, defaults to 64):
            Texts per forward pass.

    Returns:
        `np.ndarray` of shape `(len(texts), hidden_size)`, float32.

    Example:

    ```python
    >>> from constrained_rec.evaluation.grounding import last_token_hidden_states
    >>> from constrained_rec.model import load_model
    >>> model, tokenizer = load_model()  # doctest: +SKIP
    >>> last_token_hidden_states(model, tokenizer, ["Heat (1995)", "Casino (1995)"]).shape  # doctest: +SKIP
    (2, 576)

    ```
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise ValueError(f"text {i} is {text!r}; only non-empty strings can be embedded")
    causal_lm, adapter_off = base_causal_lm(model)
    decoder = causal_lm.get_decoder()
    device = next(causal_lm.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    hidden = np.zeros((len(texts), causal_lm.config.hidden_size), dtype=np.float32)
    with adapter_off:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask = left_pad([encoded[i] for i in chunk], pad_id)
            position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
            output = decoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             position_ids=position_ids.to(device), use_cache=False)
            hidden[chunk] = output.last_hidden_state[:, -1, :].float().cpu().numpy()
    return hidden


def model_fingerprint(model, include_adapter: bool = False) -> str:
    """A hash of the base model's configuration and a strided sample of every base weight.

    Enough to tell checkpoints apart (two random initialisations, a fine-tuned copy) without hashing
    hundreds of megabytes. LoRA weights are left out unless ``include_adapter``: grounding embeds with
    the adapter off, so its cache key must not depend on them.
    """
    causal_lm, _ = base_causal_lm(model)
    digest = hashlib.sha256(causal_lm.config.to_json_string(use_diff=False).encode())
    for name, parameter in causal_lm.named_parameters():
        if "lora_" in name and not include_adapter:
            continue
        flat = parameter.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)]
        digest.update(str(tuple(parameter.shape)).encode())
        digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _catalog_fingerprint(tokenizer, item_ids: Sequence[int], titles: Sequence[str]) -> str:
    # the token ids, not only the text: a different tokenizer gives different embeddings
    digest = hashlib.sha256()
    for item, title in zip(item_ids, titles):
        ids = tokenizer(title, add_special_tokens=True)["input_ids"]
        digest.update(json.dumps([int(item), title, list(map(int, ids))]).encode())
    return digest.hexdigest()[:16]


class TitleGrounder:
    r"""
    Grounds generated texts in a catalog, as BIGRec does: exact title match, and L2-nearest items in the
    base model's embedding space.

    Args:
        catalog (`Mapping[int, str]`):
            Item id -> title. Several items may share a title.
        item_embeddings (`np.ndarray`, *optional*):
            Shape `(len(catalog), hidden)`, row ``i`` the embedding of the ``i``-th title of ``catalog``
            (in its iteration order). Needed by :meth:`nearest` only; :meth:`build` computes it.

    Examples:

    ```python
    >>> import numpy as np
    >>> from constrained_rec.evaluation.grounding import TitleGrounder
    >>> grounder = TitleGrounder({10: "Heat (1995)", 11: "Heat (1995)", 12: "Casino (1995)"},
    ...                          item_embeddings=np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32))
    >>> grounder.exact('"Heat (1995)"'), grounder.exact('"Heat"')
    ([10, 11], [])
    >>> items, distances = grounder.nearest(np.array([[3.0, 3.0]], dtype=np.float32), k=2, exclude=[{11}])
    >>> items, distances.round(3).tolist()
    ([[12, 10]], [[1.0, 4.243]])

    ```
    """

    def __init__(self, catalog: Mapping[int, str], item_embeddings: np.ndarray | None = None):
        if not catalog:
            raise ValueError("the catalog is empty: grounding needs at least one item")
        self.item_ids = np.array([int(i) for i in catalog], dtype=np.int64)
        self.titles = [catalog[i] for i in catalog]
        self.index = TitleIndex.build(self.titles, self.item_ids)
        self._position = {item: p for p, item in enumerate(self.item_ids.tolist())}
        if item_embeddings is not None:
            item_embeddings = np.asarray(item_embeddings, dtype=np.float32)
            if item_embeddings.ndim != 2 or len(item_embeddings) != len(self.item_ids):
                raise ValueError(
                    f"item_embeddings has shape {item_embeddings.shape}; expected ({len(self.item_ids)}, hidden), "
                    "one row per catalog item"
                )
        self.item_embeddings = item_embeddings

    @classmethod
    def build(cls, model, tokenizer, catalog: Mapping[int, str], cache_dir: str | os.PathLike | None = None,
              batch_size: int = 64) -> "TitleGrounder":
        """A grounder with the title embeddings of ``model``'s base, read from or written to the cache.

        Args:
            model, tokenizer:
                The (possibly LoRA-tuned) model; its adapter is switched off for embedding.
            catalog (`Mapping[int, str]`):
                Item id -> title.
            cache_dir (`str` or `os.PathLike`, *optional*):
                Where embeddings are cached, one ``.npz`` file per (base model, tokenizer, catalog);
                defaults to ``title-embeddings/`` in :func:`constrained_rec.hf.cache_dir`.
            batch_size (`int`, defaults to 64):
                Titles per forward pass when the embeddings are computed.
        """
        grounder = cls(catalog)
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "title-embeddings"
        key = f"{model_fingerprint(model)}-{_catalog_fingerprint(tokenizer, grounder.item_ids.tolist(), grounder.titles)}"
        path = folder / f"{key}.npz"
        if path.is_file():
            with np.load(path) as cached:
                if np.array_equal(cached["item_ids"], grounder.item_ids):
                    grounder.item_embeddings = cached["embeddings"]
                    return grounder
        embeddings = last_token_hidden_states(model, tokenizer, grounder.titles, batch_size=batch_size)
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".npz", dir=folder)
        with os.fdopen(handle, "wb") as file:
            np.savez(file, item_ids=grounder.item_ids, embeddings=embeddings)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
        grounder.item_embeddings = embeddings
        return grounder

    def exact(self, text: str, exclude: Collection[int] = ()) -> list[int]:
        """Items whose title equals the generated ``text`` (quotes stripped), minus ``exclude``."""
        return [i for i in self.index.items_for_title(parse_generated_title(text)) if i not in exclude]

    def title_of(self, item_id: int) -> str:
        """The catalog title of ``item_id``; a ``KeyError`` naming it if it is not in the catalog."""
        return self.index.title(item_id)

    def is_valid(self, text: str) -> bool:
        """Whether ``text`` is exactly a catalog title (before any exclusion)."""
        return bool(self.index.items_for_title(parse_generated_title(text)))

    def nearest(self, query_embeddings: np.ndarray, k: int,
                exclude: Sequence[Collection[int]] | None = None) -> tuple[list[list[int]], np.ndarray]:
        """For each query embedding, the ``k`` catalog items nearest in L2 distance, nearest first.

        Args:
            query_embeddings (`np.ndarray`):
                Shape `(queries, hidden)`, e.g. :func:`last_token_hidden_states` of generated texts.
            k (`int`):
                Items per query; at most the catalog size.
            exclude (`Sequence[Collection[int]]`, *optional*):
                Per query, item ids that must not be returned (e.g. the user's history).

        Returns:
            `(item_ids, distances)`: per query a list of ``k`` item ids (fewer when exclusion leaves fewer),
            and a `(queries, k)` array of their distances (``inf`` where there is no item).
        """
        if self.item_embeddings is None:
            raise ValueError("this grounder has no item embeddings; create it with TitleGrounder.build(model, ...)")
        check_int(k, "k", least=1, most=len(self.item_ids), note=" (the catalog size)")
        queries = np.asarray(query_embeddings, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.item_embeddings.shape[1]:
            raise ValueError(
                f"query embeddings have shape {queries.shape}; expected (queries, {self.item_embeddings.shape[1]})"
            )
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"got {len(exclude)} exclusion sets for {len(queries)} queries; give one per query")
        distances = torch.cdist(torch.from_numpy(queries).double(), torch.from_numpy(self.item_embeddings).double())
        for row, excluded in enumerate(exclude or []):
            positions = [self._position[i] for i in excluded if i in self._position]
            distances[row, positions] = float("inf")
        # stable order: equal distances (duplicate titles) keep catalog order
        order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
        top = torch.gather(distances, 1, order).numpy()
        items = [[int(self.item_ids[p]) for p, d in zip(row, dist) if np.isfinite(d)]
                 for row, dist in zip(order.tolist(), top)]
        return items, top

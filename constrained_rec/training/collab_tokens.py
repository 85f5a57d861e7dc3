"""Collaborative tokens: the assistant's item embeddings beside each history title (LLaRA / iLoRA's hybrid prompt).

The text-free assistant (SASRec) already knows the items; a hybrid prompt lets the LM read that knowledge. After
each history title of a prompt comes one *soft* position (:func:`constrained_rec.trie.tokenization.soft_token_ids`)
whose input embedding is ``projector(assistant item embedding)``: :class:`CollabTokens`, a linear map from the
assistant's dimension to the LM's hidden size, trained with the LoRA adapter (``train(..., collab=...)``) while the
assistant stays frozen. Decoding then works on :class:`~constrained_rec.trie.tokenization.SoftPrompt` s (ids plus
the soft rows, prefilled by ``inputs_embeds``) and still writes only catalog titles through the trie.

The adapter folder holds the projector (``collab_tokens.pt``) and what it needs (``collab_tokens.json``: the
assistant's kind, its fingerprint, sizes); :func:`load_collab_tokens` refuses another assistant, and an assistant
without item embeddings (popularity, EASE) is refused when the tokens are built.

The assistant's table is scaled to unit root-mean-square (stored with the fingerprint of the unscaled table), and
the projector starts with outputs of the LM's own token-embedding scale, so the soft tokens start as loud as words.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from constrained_rec.trie.tokenization import SoftPrompt, soft_token_ids

WEIGHTS_FILE = "collab_tokens.pt"
META_FILE = "collab_tokens.json"


def assistant_fingerprint(kind: str, item_ids, embeddings) -> str:
    """A hash of what the tokens read from an assistant: its kind, its item ids and its item embedding table."""
    digest = hashlib.sha256(str(kind).encode())
    digest.update(np.ascontiguousarray(item_ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


class CollabTokens(torch.nn.Module):
    """The projector from an assistant's item embeddings to the LM's input embeddings, and the frozen table.

    ``forward(columns)`` maps rows of the table (``columns(item_ids)``) to ``(n, hidden_size)`` input embeddings;
    only ``projector`` trains. Build it with :meth:`from_assistant`; read a saved one with :func:`load_collab_tokens`.
    """

    def __init__(self, kind: str, item_ids, embeddings, hidden_size: int, fingerprint: str | None = None):
        super().__init__()
        embeddings = np.asarray(embeddings, dtype=np.float32)
        self.kind, self.item_ids = kind, np.asarray(item_ids, dtype=np.int64)
        if embeddings.ndim != 2 or len(embeddings) != len(self.item_ids) or not np.isfinite(embeddings).all():
            raise ValueError(f"the {kind!r} assistant's item embeddings must be a finite (items, dim) table with one "
                             f"row per item ({len(self.item_ids)}), got shape {embeddings.shape}")
        self.fingerprint = fingerprint or assistant_fingerprint(kind, self.item_ids, embeddings)
        rms = float(np.sqrt((embeddings.astype(np.float64) ** 2).mean())) or 1.0
        self.register_buffer("table", torch.from_numpy(embeddings / rms))
        self.projector = torch.nn.Linear(embeddings.shape[1], int(hidden_size))

    @classmethod
    def from_assistant(cls, assistant, model, seed: int = 0) -> "CollabTokens":
        """New tokens for ``model`` from ``assistant``'s item embeddings (``Assistant.item_embeddings``: a clear
        error for an assistant without them); the projector is initialised under ``seed`` so its outputs have the
        root-mean-square of ``model``'s token embeddings."""
        embeddings = assistant.item_embeddings()
        words = model.get_input_embeddings().weight
        tokens = cls(assistant.name, assistant.item_ids, embeddings, words.shape[1])
        generator = torch.Generator().manual_seed(int(seed))
        scale = float(words.detach().float().pow(2).mean().sqrt()) / np.sqrt(embeddings.shape[1])
        with torch.no_grad():
            tokens.projector.weight.copy_(torch.randn(tokens.projector.weight.shape, generator=generator) * scale)
            tokens.projector.bias.zero_()
        return tokens

    def columns(self, item_ids) -> torch.Tensor:
        """Table rows of ``item_ids``; an id the assistant does not know is a ``ValueError`` naming it."""
        ids = np.asarray(list(item_ids), dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.item_ids, ids), len(self.item_ids) - 1)
        unknown = ids[self.item_ids[rows] != ids]
        if len(unknown):
            raise ValueError(f"item {int(unknown[0])} has no embedding in the {self.kind!r} assistant's catalog of "
                             f"{len(self.item_ids)} items")
        return torch.from_numpy(rows)

    def forward(self, columns: torch.Tensor) -> torch.Tensor:
        """``(len(columns), hidden_size)``: the projected embeddings of the table rows ``columns``."""
        return self.projector(self.table[columns.to(self.table.device)])

    def soft_prompt(self, tokenizer, prompt: str, history_item_ids: Sequence[int],
                    history_titles: Sequence[str]) -> SoftPrompt:
        """``prompt`` (rendered from ``history_titles``) with a soft token of each history item after its title."""
        ids, positions = hybrid_prompt_ids(tokenizer, prompt, history_titles)
        if len(history_item_ids) != len(history_titles):
            raise ValueError(f"{len(history_item_ids)} history items for {len(history_titles)} history titles")
        with torch.no_grad():
            embeds = self(self.columns(history_item_ids)).detach()
        return SoftPrompt(ids, positions, embeds, prompt, history_item_ids)

    def soft_samples(self, tokenizer, samples: Sequence, rows) -> list:
        """The evaluation samples with their prompts made hybrid: sample ``i`` from split row ``rows[i]`` (its
        ``prompt``, ``history_item_ids`` and ``history_titles``)."""
        rows = list(rows)
        if len(rows) != len(samples):
            raise ValueError(f"{len(rows)} split rows for {len(samples)} samples; give the rows the samples came from")
        return [replace(s, prompt=self.soft_prompt(tokenizer, r["prompt"], r["history_item_ids"], r["history_titles"]))
                for s, r in zip(samples, rows)]

    def describe(self) -> dict:
        """What an adapter trained with these tokens needs: the assistant (kind, fingerprint) and the sizes."""
        return {"assistant": self.kind, "fingerprint": self.fingerprint, "items": len(self.item_ids),
                "dim": int(self.table.shape[1]), "hidden_size": int(self.projector.out_features)}

    def load_projector(self, folder: str | Path) -> "CollabTokens":
        """Read the projector an adapter in ``folder`` was trained with into these tokens (in eval mode).

        Refused, naming both values: an adapter trained without tokens, or with those of another assistant (another
        kind, or the same kind fit to other item embeddings: another fingerprint) or for another hidden size.
        """
        saved = saved_collab_tokens(folder)
        if saved is None:
            raise ValueError(f"the adapter {folder} was trained without collaborative tokens (no {META_FILE}); "
                             "evaluate it with --collab-tokens none, or train a new adapter with --collab-tokens items")
        mine = self.describe()
        if (saved["assistant"], saved["fingerprint"]) != (mine["assistant"], mine["fingerprint"]):
            raise ValueError(f"the adapter {folder} was trained with the tokens of the {saved['assistant']!r} assistant "
                             f"of fingerprint {saved['fingerprint']}, but this assistant is {mine['assistant']!r} of "
                             f"fingerprint {mine['fingerprint']}: give the assistant it was trained with (the same "
                             "data, split and seed), or train a new adapter")
        if (saved["dim"], saved["hidden_size"]) != (mine["dim"], mine["hidden_size"]):
            raise ValueError(f"the adapter {folder}'s projector maps {saved['dim']} to {saved['hidden_size']} dims, "
                             f"these tokens {mine['dim']} to {mine['hidden_size']}: another base model")
        self.projector.load_state_dict(torch.load(Path(folder) / WEIGHTS_FILE, weights_only=True))
        return self.eval()

    def save(self, folder: str | Path) -> dict:
        """Write the projector and :meth:`describe` into ``folder`` (an adapter's); returns the description."""
        folder = Path(folder)
        torch.save({k: v.detach().cpu() for k, v in self.projector.state_dict().items()}, folder / WEIGHTS_FILE)
        (folder / META_FILE).write_text(json.dumps(self.describe(), indent=1))
        return self.describe()


def hybrid_prompt_ids(tokenizer, prompt: str, history_titles: Sequence[str]) -> tuple[list[int], list[int]]:
    """``(ids, soft positions)`` of ``prompt`` with one soft position after each history title."""
    from constrained_rec.prompts import history_title_spans

    return soft_token_ids(tokenizer, prompt, history_title_spans(prompt, list(history_titles)))


def saved_collab_tokens(folder: str | Path) -> dict | None:
    """The ``collab_tokens.json`` of an adapter folder, or ``None`` when the adapter was trained without tokens."""
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_collab_tokens(folder: str | Path, assistant) -> CollabTokens:
    """The tokens an adapter in ``folder`` was trained with, on ``assistant``'s table
    (:meth:`CollabTokens.load_projector`: another or no assistant is refused, naming both values)."""
    embeddings = assistant.item_embeddings()  # an assistant without them: a ValueError naming its kind
    saved = saved_collab_tokens(folder) or {}
    hidden = saved.get("hidden_size", 1)
    return CollabTokens(assistant.name, assistant.item_ids, embeddings, hidden).load_projector(folder)

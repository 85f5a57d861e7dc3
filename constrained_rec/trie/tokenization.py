"""The one place where titles and prompts become token ids.

The trie (what decoding may write) and the training targets (what the model learns to write) are
both built by :func:`title_token_ids`, so they are token-for-token identical.

Prompt and response are tokenized separately and concatenated. Tokenizing ``prompt + response`` as
one string would let BPE merge across the boundary (``'Response:\\n"'`` can become one token), so the
ids the model sees after the prompt at training time would differ from the ids it must produce at
generation time, where the prompt is encoded alone and the title is generated token by token. A title
whose first tokens only exist merged with the prompt's tail would then be unreachable under the trie.
"""

from __future__ import annotations

from typing import Sequence


def response_text(title: str) -> str:
    """The text the model writes for ``title``: the title in double quotes, as in BIGRec."""
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"a title must be a non-empty string, got {title!r}")
    return f'"{title}"'


def eos_token_id(tokenizer) -> int:
    """The tokenizer's EOS id, which ends every title; a clear error if it has none."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token_id; set tokenizer.eos_token "
            "so that generation can stop where a title ends"
        )
    return int(eos)


def title_token_ids(tokenizer, title: str, add_eos: bool = True) -> list[int]:
    """Token ids of ``response_text(title)``, without special tokens, followed by EOS."""
    ids = list(tokenizer(response_text(title), add_special_tokens=False)["input_ids"])
    if add_eos:
        ids.append(eos_token_id(tokenizer))
    return ids


def titles_token_ids(tokenizer, titles: Sequence[str], add_eos: bool = False) -> list[list[int]]:
    """:func:`title_token_ids` for many titles in one batched tokenizer call."""
    texts = [response_text(t) for t in titles]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    if add_eos:
        eos = eos_token_id(tokenizer)
        return [list(ids) + [eos] for ids in encoded]
    return [list(ids) for ids in encoded]


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt, with the model's own special tokens (BOS where it uses one)."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"a prompt must be a non-empty string, got {prompt!r}")
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def example_token_ids(tokenizer, prompt: str, title: str) -> tuple[list[int], int]:
    """A training example: ``prompt ids + title ids + EOS`` and the number of prompt ids."""
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    return prompt_ids + title_token_ids(tokenizer, title), len(prompt_ids)


def span_token_indices(tokenizer, prompt: str, spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Per character span of ``prompt``, the indices into :func:`prompt_token_ids` of the tokens that hold at
    least one of its characters (by the fast tokenizer's offset mapping), in order.

    In context a title's first and last characters may share a token with the quote or separator beside them
    (``')",'`` is one SmolLM2 token), so these are not the title's own token ids (:func:`title_token_ids`);
    such a boundary token counts as the title's, since leaving it out would leave title characters untaught.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: locating titles in a "
                         "prompt needs its character offsets (return_offsets_mapping)")
    encoded = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if list(encoded["input_ids"]) != prompt_token_ids(tokenizer, prompt):
        raise ValueError("the tokenizer gives other ids with offsets than without; cannot locate titles in the prompt")
    # special tokens (BOS) and tokens without text have empty spans and belong to no title
    return [[i for i, (a, b) in enumerate(offsets) if a < b and a < end and b > start] for start, end in spans]


class SoftPrompt:
    """A prompt as token ids of which some positions take a given input embedding instead of their token's.

    ``ids`` are the prompt's token ids (BOS included where the model uses one); ``positions`` (sorted, distinct)
    index the *soft* positions, whose input embedding is row ``j`` of ``embeds`` (``(len(positions), hidden)``)
    instead of the embedding of ``ids[positions[j]]``. The id stored at a soft position is a placeholder that no
    model reads (:func:`soft_token_ids` stores the EOS id): the positions are carried explicitly, so no text of
    the prompt, whatever it holds, can be taken for a soft token. Decoding (``decode.recommend``,
    ``score_titles``) takes a ``SoftPrompt`` wherever it takes a prompt's token ids, and prefills it by
    ``inputs_embeds``. ``text`` is the prompt's text, ``item_ids`` the items the soft tokens stand for (for
    reports and the evaluation's sample digest, ``str(prompt)``).
    """

    def __init__(self, ids, positions, embeds, text: str = "", item_ids=()):
        self.ids = tuple(int(t) for t in ids)
        self.positions = tuple(int(p) for p in positions)
        self.embeds, self.text, self.item_ids = embeds, text, tuple(int(i) for i in item_ids)
        if not self.ids or min(self.ids) < 0:
            raise ValueError(f"a soft prompt needs a non-empty list of token ids >= 0, got {list(self.ids)!r}")
        if list(self.positions) != sorted(set(self.positions)) or (self.positions and not (
                0 <= self.positions[0] and self.positions[-1] < len(self.ids))):
            raise ValueError(f"soft positions must be sorted, distinct indices into the {len(self.ids)} prompt ids, "
                             f"got {list(self.positions)!r}")
        shape = tuple(getattr(embeds, "shape", ()))
        if len(shape) != 2 or shape[0] != len(self.positions):
            raise ValueError(f"a soft prompt needs one embedding row per soft position ({len(self.positions)}), "
                             f"got embeds of shape {shape}")

    def __str__(self) -> str:
        import hashlib

        import numpy as np

        digest = hashlib.sha256(np.ascontiguousarray(self.embeds.detach().float().cpu().numpy()).tobytes())
        return (f"{self.text or list(self.ids)} [soft tokens of items {list(self.item_ids)} at "
                f"{list(self.positions)}, embeddings {digest.hexdigest()[:16]}]")

    __repr__ = __str__


def soft_token_ids(tokenizer, prompt: str, title_spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """A hybrid prompt's token ids: :func:`prompt_token_ids` of ``prompt`` with one placeholder position
    inserted after each history title, and the placeholders' indices.

    ``title_spans`` are the titles' character spans in ``prompt`` (``prompts.history_title_spans``: the text
    between the quotes). A placeholder goes right after the token holding the title's closing quote (in context
    the quote may share a token with the comma after it, ``')",'``: then after that token), so the text's ids are
    exactly :func:`prompt_token_ids`'s, in order, with placeholders between them. The placeholder's id is the
    tokenizer's EOS; its input embedding is always replaced (:class:`SoftPrompt`).
    """
    ids = prompt_token_ids(tokenizer, prompt)
    quotes = span_token_indices(tokenizer, prompt, [(end, end + 1) for _, end in title_spans])
    after = [tokens[-1] for tokens in quotes if tokens]
    if len(after) != len(title_spans) or after != sorted(set(after)):
        raise ValueError(f"cannot place one soft token after each of the {len(title_spans)} history titles of the "
                         f"prompt {prompt!r}: their closing quotes are in tokens {after}")
    out, positions, eos = [], [], eos_token_id(tokenizer)
    for index, token in enumerate(ids):
        out.append(token)
        if after and index == after[0]:
            positions.append(len(out))
            out.append(eos)
            after.pop(0)
    return out, positions

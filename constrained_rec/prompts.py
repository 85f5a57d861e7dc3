"""BIGRec's instruction prompts: one function renders them for training and evaluation alike.

The default ``"alpaca"`` template is BIGRec's (Bao et al., 2023) Alpaca-style prompt: an instruction
("Given a list of movies the user has watched before, please recommend a new movie that the user likes to
the user."), an input listing the user's history titles in double quotes, and an empty response section
that the model completes with the quoted target title (:func:`constrained_rec.trie.tokenization.response_text`).
BIGRec's own files carry a few stray spaces ("request. \\n", ``before:"Title"``, an input ending in
``"\\n "``); they are normalised here, which changes nothing a model learns about the task.

The ``"chat"`` template puts the same instruction and input in one user message and renders it with the
tokenizer's own ``apply_chat_template``, for instruct models trained on their chat format.

The prompt never contains the response: it ends where the model starts writing.
"""

from __future__ import annotations

from typing import Sequence

ALPACA_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)

# Plural noun -> (singular noun, what the user did with such items), as BIGRec words its data sets.
ITEM_NOUNS: dict[str, tuple[str, str]] = {
    "movies": ("movie", "watched"),
    "video games": ("video game", "played"),
    "games": ("game", "played"),
    "books": ("book", "read"),
    "toys": ("toy", "played with"),
    "songs": ("song", "listened to"),
    "albums": ("album", "listened to"),
    "products": ("product", "bought"),
    "items": ("item", "interacted with"),
}

TEMPLATES = ("alpaca", "chat")


def _noun_forms(item_noun: str) -> tuple[str, str]:
    if item_noun not in ITEM_NOUNS:
        raise ValueError(f"unknown item noun {item_noun!r}; accepted: {sorted(ITEM_NOUNS)}")
    return ITEM_NOUNS[item_noun]


def instruction_text(item_noun: str = "movies") -> str:
    """BIGRec's task instruction for a data set whose items are ``item_noun``.

    Example:

    ```python
    >>> from constrained_rec.prompts import instruction_text
    >>> instruction_text("video games")
    'Given a list of video games the user has played before, please recommend a new video game that the user likes to the user.'

    ```
    """
    singular, verb = _noun_forms(item_noun)
    return (
        f"Given a list of {item_noun} the user has {verb} before, please recommend a new {singular} "
        "that the user likes to the user."
    )


def _history_lead(item_noun: str) -> str:
    _, verb = _noun_forms(item_noun)
    return f"The user has {verb} the following {item_noun} before: "


def quoted_titles(history_titles: Sequence[str]) -> str:
    """The titles, oldest first, each in double quotes, separated by ``", "``; validated."""
    if isinstance(history_titles, str):
        raise TypeError(f"history_titles must be a sequence of titles, got the single string {history_titles!r}")
    if len(history_titles) == 0:
        raise ValueError("a prompt needs at least one history title, got an empty history")
    for position, title in enumerate(history_titles):
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"history title {position} must be a non-empty string, got {title!r}")
    return ", ".join(f'"{title}"' for title in history_titles)


def history_title_spans(prompt: str, history_titles: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of each history title's text inside ``prompt`` (quotes excluded).

    The prompt must hold the titles as :func:`quoted_titles` renders them, once: every template does. An error
    names the prompt otherwise (e.g. a prompt built from other titles).

    Example:

    ```python
    >>> from constrained_rec.prompts import build_prompt, history_title_spans
    >>> prompt = build_prompt(['Heat (1995)', 'Say "Anything"'])
    >>> [prompt[a:b] for a, b in history_title_spans(prompt, ['Heat (1995)', 'Say "Anything"'])]
    ['Heat (1995)', 'Say "Anything"']

    ```
    """
    block = quoted_titles(history_titles)
    start = prompt.find(block)
    if start < 0 or prompt.find(block, start + 1) >= 0:
        where = "does not hold" if start < 0 else "holds more than once"
        raise ValueError(f"the prompt {where} the quoted history titles {block!r}; prompt: {prompt!r}")
    spans, at = [], start + 1  # after the opening quote
    for title in history_titles:
        spans.append((at, at + len(title)))
        at += len(title) + len('", "')
    return spans


def alpaca_affixes(item_noun: str = "movies") -> tuple[str, str]:
    """``(prefix, suffix)`` of BIGRec's Alpaca prompt around the quoted history titles.

    ``build_prompt(titles, item_noun) == prefix + quoted_titles(titles) + suffix``: callers that render
    millions of prompts (``constrained_rec.data.make_splits``) join the quoted titles in bulk around them.

    Example:

    ```python
    >>> from constrained_rec.prompts import alpaca_affixes, build_prompt, quoted_titles
    >>> prefix, suffix = alpaca_affixes("books")
    >>> prefix + quoted_titles(["Emma"]) + suffix == build_prompt(["Emma"], "books")
    True
    >>> suffix
    '\\n\\n### Response:\\n'

    ```
    """
    prefix = f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction_text(item_noun)}\n\n### Input:\n{_history_lead(item_noun)}"
    return prefix, "\n\n### Response:\n"


def history_text(history_titles: Sequence[str], item_noun: str = "movies") -> str:
    """The prompt's input: the history titles, oldest first, each in double quotes.

    Example:

    ```python
    >>> from constrained_rec.prompts import history_text
    >>> history_text(["Toy Story (1995)", "Heat (1995)"])
    'The user has watched the following movies before: "Toy Story (1995)", "Heat (1995)"'

    ```
    """
    lead = _history_lead(item_noun)
    return lead + quoted_titles(history_titles)


def build_prompt(
    history_titles: Sequence[str],
    item_noun: str = "movies",
    template: str = "alpaca",
    tokenizer=None,
) -> str:
    """The prompt for a user whose recent history is ``history_titles`` (oldest first).

    Args:
        history_titles: Titles of the items the user interacted with, oldest first; at least one.
        item_noun: Plural noun for the data set's items, one of :data:`ITEM_NOUNS` ("movies", "video games",
            "books", ...).
        template: ``"alpaca"`` (BIGRec's prompt, ending in ``"### Response:\\n"``) or ``"chat"`` (the same
            instruction and input as one user message through ``tokenizer.apply_chat_template`` with
            ``add_generation_prompt=True``).
        tokenizer: Required for ``"chat"``; unused by ``"alpaca"``.

    Returns:
        The prompt text, without the response; the model's response is ``response_text(target_title)``.

    Example:

    ```python
    >>> from constrained_rec.prompts import build_prompt
    >>> print(build_prompt(["Toy Story (1995)", "Heat (1995)"]))
    Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.
    <BLANKLINE>
    ### Instruction:
    Given a list of movies the user has watched before, please recommend a new movie that the user likes to the user.
    <BLANKLINE>
    ### Input:
    The user has watched the following movies before: "Toy Story (1995)", "Heat (1995)"
    <BLANKLINE>
    ### Response:
    <BLANKLINE>

    ```
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; accepted: {list(TEMPLATES)}")
    if template == "alpaca":
        prefix, suffix = alpaca_affixes(item_noun)
        return prefix + quoted_titles(history_titles) + suffix
    instruction = instruction_text(item_noun)
    history = history_text(history_titles, item_noun)
    if tokenizer is None:
        raise ValueError("template 'chat' renders with the tokenizer's chat template; pass tokenizer=")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no chat_template; use template='alpaca' for base models"
        )
    messages = [{"role": "user", "content": f"{instruction}\n\n{history}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

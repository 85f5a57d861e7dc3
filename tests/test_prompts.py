"""BIGRec prompts: exact Alpaca text, item nouns, the chat variant with the real tokenizer, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constrained_rec.prompts import ITEM_NOUNS, build_prompt, history_text, instruction_text
from constrained_rec.trie.tokenization import prompt_token_ids, title_token_ids


def test_alpaca_prompt_is_bigrec_text():
    prompt = build_prompt(["Heat (1995)", "Up (2009)"], item_noun="movies")
    assert prompt == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n"
        "Given a list of movies the user has watched before, please recommend a new movie that the user likes "
        "to the user.\n\n"
        "### Input:\n"
        'The user has watched the following movies before: "Heat (1995)", "Up (2009)"\n\n'
        "### Response:\n"
    )


@pytest.mark.parametrize("noun", sorted(ITEM_NOUNS))
def test_every_item_noun(noun):
    singular, verb = ITEM_NOUNS[noun]
    assert instruction_text(noun) == (
        f"Given a list of {noun} the user has {verb} before, please recommend a new {singular} that the user "
        "likes to the user."
    )
    assert history_text(["X"], noun) == f'The user has {verb} the following {noun} before: "X"'
    assert f"\n{instruction_text(noun)}\n" in build_prompt(["X"], noun)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=8))
def test_history_lists_every_title_in_order(titles):
    prompt = build_prompt(titles)
    history_line = prompt.split("### Input:\n", 1)[1].split("\n\n### Response:\n")[0]
    assert history_line == "The user has watched the following movies before: " + ", ".join(f'"{t}"' for t in titles)
    assert prompt.endswith("### Response:\n")
    assert build_prompt(list(titles)) == prompt


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"history_titles": []}, ValueError, "at least one history title"),
        ({"history_titles": ["ok", " "]}, ValueError, "history title 1 must be a non-empty string, got ' '"),
        ({"history_titles": ["ok", 7]}, ValueError, "history title 1 must be a non-empty string, got 7"),
        ({"history_titles": "Heat"}, TypeError, "got the single string 'Heat'"),
        ({"history_titles": ["a"], "item_noun": "films"}, ValueError, "unknown item noun 'films'; accepted"),
        ({"history_titles": ["a"], "template": "vicuna"}, ValueError, "unknown prompt template 'vicuna'"),
        ({"history_titles": ["a"], "template": "chat"}, ValueError, "pass tokenizer="),
    ],
)
def test_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        build_prompt(**kwargs)


def test_chat_needs_a_chat_template():
    class BaseTokenizer:
        chat_template = None

    with pytest.raises(ValueError, match="BaseTokenizer has no chat_template; use template='alpaca'"):
        build_prompt(["a"], template="chat", tokenizer=BaseTokenizer())


@pytest.mark.slow
def test_chat_template_with_the_embedded_tokenizer(smollm2_tokenizer):
    prompt = build_prompt(["Heat (1995)"], template="chat", tokenizer=smollm2_tokenizer)
    expected = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction_text() + "\n\n" + history_text(["Heat (1995)"])}],
        tokenize=False, add_generation_prompt=True,
    )
    assert prompt == expected
    assert prompt.endswith("<|im_start|>assistant\n")
    assert '"Heat (1995)"' in prompt and "### Response" not in prompt
    # The assistant turn starts right after the prompt: the quoted title follows its tokens directly.
    ids = prompt_token_ids(smollm2_tokenizer, prompt) + title_token_ids(smollm2_tokenizer, "Up (2009)")
    assert smollm2_tokenizer.decode(ids).endswith('<|im_start|>assistant\n"Up (2009)"<|im_end|>')

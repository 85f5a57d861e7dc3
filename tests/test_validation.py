"""constrained_rec.validation and constrained_rec.options: the shared checks name the value and what is accepted; the
flags generated from a dataclass keep each default and help text on its field."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pytest

from constrained_rec.options import OptionParser, add_options, check_least, option, option_of
from constrained_rec.validation import check_int, check_keys, check_number, check_type, is_int, read_yaml_mapping


def test_is_int_refuses_bools_and_takes_numpy_only_when_asked():
    assert is_int(3) and not is_int(True) and not is_int(2.0) and not is_int("3")
    assert not is_int(np.int64(3)) and is_int(np.int64(3), numpy=True) and not is_int(np.bool_(True), numpy=True)


@pytest.mark.parametrize("value, kwargs, message", [
    (0, dict(least=1), "n must be an integer >= 1, got 0"),
    (True, dict(least=0), "n must be an integer >= 0, got True"),
    (2.5, dict(), "n must be an integer, got 2.5"),
    (None, dict(least=1), "n must be an integer >= 1, got None"),
    (-1, dict(least=1, none=True), "n must be an integer >= 1 or None, got -1"),
    (9, dict(least=1, most=5, note=" (the catalog size)"), r"n must be an integer in \[1, 5\] \(the catalog size\), got 9"),
    (7, dict(most=5), "n must be an integer <= 5, got 7"),
])
def test_check_int_names_the_value_and_the_range(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_int(value, "n", **kwargs)


def test_check_int_and_check_number_return_what_they_accept():
    assert check_int(5, "n", least=1, most=5) == 5 and check_int(None, "n", none=True) is None
    assert check_int(np.int32(2), "n", least=1, numpy=True) == 2
    assert check_number(0, "w", least=0) == 0 and check_number(0.5, "w", positive=True) == 0.5
    for value, kwargs, message in ((float("nan"), {}, "finite number, got nan"), (0.0, dict(positive=True), "> 0"),
                                   (-1, dict(least=0), ">= 0, got -1"), (True, {}, "got True"), ("1", {}, "got '1'")):
        with pytest.raises(ValueError, match=message):
            check_number(value, "w", **kwargs)


def test_check_keys_names_the_key_the_closest_and_the_accepted_ones():
    check_keys({"lora_r": 1}, ("lora_r", "epochs"), "f.yaml")
    with pytest.raises(ValueError, match=r"f.yaml: unknown key 'lora_rank'; did you mean 'lora_r'\? Known keys: "
                                         "lora_r, epochs"):
        check_keys({"lora_rank": 1}, ("lora_r", "epochs"), "f.yaml")


@pytest.mark.parametrize("annotation, good, bad", [
    ("int", [3], [True, 2.5, "3", None]), ("float", [1, 2.5], ["1e-3", True]), ("int | None", [None, 1], ["x"]),
    ("float | str", [1.0, "auto"], [None, [1]]), ("tuple[str, ...]", [["a"], ("a",)], ["a"]), ("bool", [False], [0]),
])
def test_check_type_reads_the_annotation(annotation, good, bad):
    for value in good:
        check_type("key", annotation, value)
    for value in bad:
        with pytest.raises(ValueError, match="key must be"):
            check_type("key", annotation, value)


def test_read_yaml_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\n")
    assert read_yaml_mapping(path) == {"a": 1}
    path.write_text("")
    assert read_yaml_mapping(path) == {}
    path.write_text("a: [1\n")
    with pytest.raises(ValueError, match="c.yaml is not valid YAML"):
        read_yaml_mapping(path)


@dataclass
class Options:
    size: int = option(4, "how many", least=1)
    name: str | None = option(None, "a name", choices=("a", "b"))
    words: tuple[str, ...] = option(("x",), "some words")
    fast: bool = option(False, "go fast")
    check: bool = option(True, "check")
    ratio: float = option(0.5, "a ratio")
    inner: int = 3  # no option: no flag


@dataclass
class Other:
    size: int = option_of(Options, "size", default=8)


def test_the_flags_of_a_dataclass():
    parser = OptionParser()
    add_options(parser, Options)
    assert vars(parser.parse_args([])) == {"size": 4, "name": None, "words": ["x"], "fast": False, "check": True,
                                           "ratio": 0.5}
    given = vars(parser.parse_args(["--size", "2", "--name", "b", "--words", "p", "q", "--fast", "--no-check",
                                    "--ratio", "2"]))
    assert given == {"size": 2, "name": "b", "words": ["p", "q"], "fast": True, "check": False, "ratio": 2.0}
    help_text = parser.format_help()
    assert "how many" in help_text and "--inner" not in help_text and "--config" not in help_text
    other = OptionParser()
    add_options(other, Other)
    assert other.parse_args([]).size == 8 and other._actions[-1].help == "how many"


def test_check_least_names_the_field_and_its_flag():
    check_least(Options(), ("size",))
    with pytest.raises(ValueError, match=r"Options.size \(--size\) must be an integer >= 1, got 0"):
        check_least(Options(size=0), ("size",))
    with pytest.raises(ValueError, match=r"Options has no options \['inner'\]"):
        check_least(Options(), ("inner",))


def test_a_flag_error_exits_naming_it(capsys):
    parser = OptionParser()
    add_options(parser, Options)
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", "0"])
    assert "argument --size: expected an integer >= 1, got '0'" in capsys.readouterr().err
    assert isinstance(parser, argparse.ArgumentParser)

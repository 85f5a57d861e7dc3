"""Command-line options from config dataclasses: each option's default, help text and parsing live once, on the field.

A field declared with :func:`option` becomes a flag of the same name (``lora_r`` -> ``--lora-r``) through
:func:`add_options`: a ``bool`` field is ``--x`` (default ``False``) or ``--x/--no-x`` (default ``True``), a
``tuple[str, ...]`` field takes one or more words, an int field with ``least`` is checked on the command line, and
``parse`` converts the text of anything else (``--prior-weight W|auto``). :class:`OptionParser` adds
``--config FILE.yaml``: a flat mapping of the same names fills the options, flags given on the command line win,
and an unknown or mistyped key is an error naming it and the accepted keys.

>>> from dataclasses import dataclass
>>> @dataclass
... class Example:
...     epochs: int = option(1, "training epochs", least=1)
...     user_signal: bool = option(True, "the control")
>>> parser = OptionParser()
>>> add_options(parser, Example)
>>> vars(parser.parse_args(["--epochs", "3", "--no-user-signal"]))
{'epochs': 3, 'user_signal': False}
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable

from constrained_rec.validation import check_int, check_keys, check_type, read_yaml_mapping

OPTION = "option"  # the key of a field's metadata that makes it a flag


def option(default=dataclasses.MISSING, help: str = "", *, flag: str | None = None, parse=None, choices=None,
           least: int | None = None, action: str | None = None, metavar: str | None = None,
           aliases: tuple[str, ...] = ()):
    """A dataclass field that is also a command-line option (see the module docstring).

    ``default`` ``MISSING`` makes the flag required; a list or tuple default is stored as a tuple. ``flag``
    overrides the spelling, ``action="store_false"`` makes a ``--no-x`` flag of a field that defaults to ``True``.
    ``aliases`` are other spellings of the flag (``("--data",)``); ``--config`` accepts them as keys too (``data``).
    """
    metadata = {OPTION: {"help": help, "flag": flag, "parse": parse, "choices": choices, "least": least,
                         "action": action, "metavar": metavar, "aliases": tuple(aliases)}}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default=tuple(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_of(cls, name: str, **changes):
    """The option ``name`` of the dataclass ``cls`` for another dataclass: same default, help and parsing, except
    ``changes`` (``default=``, ``help=``, ...)."""
    spec = {field.name: field for field in dataclasses.fields(cls)}[name]
    settings = {**spec.metadata[OPTION], "default": spec.default, **changes}
    return option(settings.pop("default"), **settings)


def flag_of(spec: dataclasses.Field) -> str:
    """The flag of an option field: its own ``flag`` or ``--`` and the name with dashes."""
    return spec.metadata[OPTION]["flag"] or "--" + spec.name.replace("_", "-")


def option_fields(cls, names: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """The option fields of ``cls`` (all, or those ``names`` in the class's order)."""
    chosen = [spec for spec in dataclasses.fields(cls) if OPTION in spec.metadata]
    if names is None:
        return chosen
    names = set(names)
    unknown = names - {spec.name for spec in chosen}
    if unknown:
        raise ValueError(f"{cls.__name__} has no options {sorted(unknown)}")
    return [spec for spec in chosen if spec.name in names]


def command_line_type(parse):
    """An argparse ``type`` that reports ``parse``'s ``ValueError`` message as the flag's error."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def int_at_least(least: int):
    """An argparse ``type``: an integer >= ``least``, or an error naming the text."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise ValueError(f"expected an integer >= {least}, got {text!r}")
        return value
    parse.__name__ = "int"
    return command_line_type(parse)


def _arguments(spec: dataclasses.Field) -> dict:
    """The ``add_argument`` keywords of an option field."""
    meta, annotation = spec.metadata[OPTION], str(spec.type)
    kwargs = {"dest": spec.name, "help": meta["help"]}
    if spec.default is dataclasses.MISSING:
        kwargs["default"] = None
    else:
        kwargs["default"] = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    if meta["action"]:  # with its choices and metavar where given (an "append" flag of names)
        given = {key: meta[key] for key in ("choices", "metavar") if meta[key] is not None}
        return {**kwargs, **given, "action": meta["action"]}
    if annotation == "bool":
        return {**kwargs, "action": argparse.BooleanOptionalAction if spec.default else "store_true"}
    if meta["parse"] is not None:
        kwargs["type"] = command_line_type(meta["parse"])
    elif annotation.startswith("tuple["):
        kwargs["nargs"] = "+"
    elif annotation.startswith("int"):
        kwargs["type"] = int if meta["least"] is None else int_at_least(meta["least"])
    elif annotation.startswith("float"):
        kwargs["type"] = float
    if meta["choices"] is not None:
        kwargs["choices"] = meta["choices"]
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    return kwargs


def add_options(parser: argparse.ArgumentParser, cls, names: Iterable[str] | None = None, group=None) -> None:
    """Add the flags of ``cls``'s option fields (all, or ``names``) to ``parser`` (or to its argument ``group``)."""
    target = group if group is not None else parser
    for spec in option_fields(cls, names):
        aliases = spec.metadata[OPTION]["aliases"]
        target.add_argument(flag_of(spec), *aliases, **_arguments(spec))
        if isinstance(parser, OptionParser):
            parser.annotations[spec.name] = str(spec.type)
            parser.key_aliases.update({alias[2:].replace("-", "_"): spec.name for alias in aliases})
            if spec.default is dataclasses.MISSING:
                parser.required_options.append(spec.name)


class OptionParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``--config FILE.yaml`` (when :meth:`add_config_option` added it) fills every
    option the command line does not give; the namespace holds the options only (no ``config``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.annotations: dict[str, str] = {}
        self.required_options: list[str] = []
        self.key_aliases: dict[str, str] = {}  # --config key of a flag's alias -> the option's name

    def add_config_option(self) -> None:
        self.add_argument("--config", metavar="FILE.yaml", default=None,
                          help="a YAML mapping of option names (as in this help, with underscores: lora_r, "
                               "train_samples) to values; flags given on the command line override it")

    def parse_known_args(self, args=None, namespace=None):
        unset = object()
        options = [action for action in self._actions if action.dest not in ("help", "config")]
        # an "append" flag adds to the namespace's value: it starts at its default (a list), not given while it is that
        appended = {action.dest: action.default for action in options if isinstance(action, argparse._AppendAction)}
        prefilled = argparse.Namespace(**{action.dest: appended.get(action.dest, unset) for action in options})
        if namespace is not None:
            vars(prefilled).update(vars(namespace))
        parsed, rest = super().parse_known_args(args, prefilled)
        path = vars(parsed).pop("config", None)
        from_file = self._read_config(path, options) if path is not None else {}
        for action in options:
            value = getattr(parsed, action.dest)
            if value is unset or (action.dest in appended and value is appended[action.dest]):
                setattr(parsed, action.dest, from_file.get(action.dest, action.default))
        missing = [action for action in options if action.dest in self.required_options
                   and getattr(parsed, action.dest) is None]
        if missing:
            self.error("the following arguments are required: " + ", ".join(a.option_strings[0] for a in missing))
        return parsed, rest

    def _read_config(self, path: str, options: list[argparse.Action]) -> dict:
        """The options of the YAML file ``path``, each checked as its flag would be; errors exit naming the key."""
        by_name = {action.dest: action for action in options}
        try:
            values = self._dealias(read_yaml_mapping(path), path)
            check_keys(values, by_name, path)
            return {key: self._config_value(by_name[key], value, path) for key, value in values.items()}
        except (OSError, ValueError) as error:
            self.error(str(error))

    def _dealias(self, values: dict, path: str) -> dict:
        """The file's keys with each alias (``data``) replaced by its option's name (``dataset``); an error where
        a file gives both."""
        named, keys = {}, {}
        for key, value in values.items():
            name = self.key_aliases.get(key, key)
            if name in named:
                raise ValueError(f"{path}: {keys[name]} and {key} set the same option ({name}); give one")
            named[name], keys[name] = value, key
        return named

    def _config_value(self, action: argparse.Action, value, path: str):
        """A value of the file, as the flag reads it: text through the flag's own type, lists of words for a
        multi-word flag, a name or a list of names for a repeatable one, other values checked against the field's
        type."""
        where = f"{path}: {action.dest}"
        if isinstance(action, argparse._AppendAction):  # a repeatable flag: one name or a list of names
            names = [value] if isinstance(value, str) else value
            if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names)):
                raise ValueError(f"{where} must be a name or a non-empty list of names, got {value!r}")
            unknown = [name for name in names if action.choices is not None and name not in action.choices]
            if unknown:
                raise ValueError(f"{where}: {unknown[0]!r} is not one of {list(action.choices)}")
            return names
        if isinstance(value, str) and callable(action.type):
            try:
                value = action.type(value)  # as the flag reads it: "1e-3", "tab", "all", "1,5,10"
            except (argparse.ArgumentTypeError, ValueError) as error:
                raise ValueError(f"{where}: {error}") from None
        elif action.nargs == "+":
            if not (isinstance(value, list) and value and all(isinstance(word, str) for word in value)):
                raise ValueError(f"{where} must be a non-empty list of names, got {value!r}")
        else:
            check_type(where, self.annotations.get(action.dest, "str | None"), value)
            if isinstance(value, list):
                value = tuple(value)  # the config's own checks (bounds of numbers, ...) follow when it is built
        if action.choices is not None and value is not None and value not in action.choices:
            raise ValueError(f"{where} must be one of {list(action.choices)}, got {value!r}")
        return value


def check_least(config, names: Iterable[str]) -> None:
    """The int options ``names`` of ``config`` are integers >= their field's ``least`` (``None`` where the default
    is ``None``), with an error naming the field and its flag."""
    for spec in option_fields(type(config), names):
        value = getattr(config, spec.name)
        if value is None and spec.default is None:  # "the default", resolved by the config
            continue
        check_int(value, f"{type(config).__name__}.{spec.name} ({flag_of(spec)})", least=spec.metadata[OPTION]["least"])

"""The checks every config and entry point shares: integers and numbers in range, known keys, values of a field's type.

Each error names the value and what is accepted, e.g. ``ValueError("epochs (--epochs) must be an integer >= 1,
got 0")``. Imports nothing heavy (no torch, numpy or transformers), so reading options stays cheap.

>>> check_int(3, "epochs", least=1)
3
>>> check_int(None, "eval_every", least=1, none=True) is None
True
>>> check_int(True, "epochs", least=1)
Traceback (most recent call last):
...
ValueError: epochs must be an integer >= 1, got True
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable


def is_int(value, numpy: bool = False) -> bool:
    """An ``int`` (never a ``bool``); with ``numpy``, a numpy integer too."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) if numpy else isinstance(value, int)


def check_int(value, name: str, least: int | None = None, most: int | None = None, none: bool = False,
              numpy: bool = False, note: str = "") -> int | None:
    """``value`` if it is an integer in ``[least, most]`` (``None`` too where ``none``), else a ``ValueError`` naming
    ``name``, the value and the range (``note`` is added after the range, e.g. why it is bounded)."""
    if value is None and none:
        return None
    if is_int(value, numpy) and (least is None or value >= least) and (most is None or value <= most):
        return value
    if least is not None and most is not None:
        accepted = f"an integer in [{least}, {most}]"
    else:
        accepted = "an integer" + (f" >= {least}" if least is not None else f" <= {most}" if most is not None else "")
    raise ValueError(f"{name} must be {accepted}{' or None' if none else ''}{note}, got {value!r}")


def check_number(value, name: str, least: float | None = None, positive: bool = False, none: bool = False):
    """``value`` if it is a finite number (never a ``bool``), ``>= least`` or ``> 0`` (``positive``) where asked;
    ``None`` too where ``none``; else a ``ValueError`` naming ``name``, the value and what is accepted."""
    if value is None and none:
        return None
    number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if number and (least is None or value >= least) and (not positive or value > 0):
        return value
    bound = " > 0" if positive else f" >= {least}" if least is not None else ""
    raise ValueError(f"{name} must be a finite number{bound}{' or None' if none else ''}, got {value!r}")


def check_keys(keys: Iterable, accepted: Iterable[str], where: str) -> None:
    """Every key is one of ``accepted``; else a ``ValueError`` naming the key, the closest accepted one and where
    it came from (a file, ``--set``), and listing what is accepted."""
    accepted = list(accepted)
    for key in keys:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint} Known keys: {', '.join(accepted)}")


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,), "tuple": (list, tuple)}


def check_type(name: str, annotation: str, value) -> None:
    """``value`` is of the field's type, read from its annotation text (``"int | None"``, ``"float | str"``,
    ``"tuple[str, ...]"``; ``None`` where the annotation allows it), else a ``ValueError`` naming the key, the value
    and the type. YAML reads ``1e-3`` as text: the error says to write ``1.0e-3``."""
    kinds = [kind.strip() for kind in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    accepted = tuple(t for kind in kinds for t in _TYPES.get(kind.split("[")[0], ()))
    if isinstance(value, bool) and bool not in accepted or not isinstance(value, accepted):
        raise ValueError(f"{name} must be {' or '.join(kinds)}, got {value!r} ({type(value).__name__})"
                         + ("; YAML reads 1e-3 as text, write 1.0e-3" if isinstance(value, str) else ""))


def read_yaml_mapping(path) -> dict:
    """The mapping a YAML file holds (an empty file: ``{}``); a ``ValueError`` naming the file otherwise."""
    from pathlib import Path

    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of keys to values, got a {type(values).__name__}")
    return values

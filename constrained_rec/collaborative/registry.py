"""The assistants, registered here only: name -> its class (``"module:Class"``, imported when first used, so that
reading the names imports no torch). :func:`constrained_rec.collaborative.fit_assistant` and
:func:`~constrained_rec.collaborative.load_assistant` resolve them; ``--assistant`` (run.py, gpu_run.py) and the
Lightning config accept these names and ``none``. A new assistant is its class (an
:class:`~constrained_rec.collaborative.base.Assistant`) plus one entry here.
"""

from __future__ import annotations

from importlib import import_module

ASSISTANTS = {"popularity": "constrained_rec.collaborative.closed_form:Popularity",
              "ease": "constrained_rec.collaborative.closed_form:EASE",
              "sasrec": "constrained_rec.collaborative.sasrec:SASRec"}


def assistant_class(name: str):
    """The class registered as ``name``; a ``ValueError`` naming the registered ones otherwise.

    Example:

    ```python
    >>> from constrained_rec.collaborative.registry import assistant_class
    >>> assistant_class("ease").__name__
    'EASE'

    ```
    """
    if name not in ASSISTANTS:
        raise ValueError(f"unknown assistant {name!r}; accepted: {sorted(ASSISTANTS)}")
    module, cls = ASSISTANTS[name].split(":")
    return getattr(import_module(module), cls)

"""`cached_njit`: ``numba.njit`` with an on-disk cache that never stops the library from importing.

``@numba.njit(cache=True)`` raises ``RuntimeError: cannot cache function ...: no locator available`` at
import time when none of numba's cache locations is writable: ``$NUMBA_CACHE_DIR``, the ``__pycache__``
next to the source, ``~/.cache/numba`` (a read-only site-packages in a container with a read-only home).
`cached_njit` tries numba's own locations first (so ``NUMBA_CACHE_DIR`` keeps working), then
``$CONSTRAINED_REC_CACHE/numba`` (default ``~/.cache/constrained-rec/numba``), and if none is writable
compiles without a cache (the JIT then runs in every new process) after one warning.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numba
from numba.core import config

from constrained_rec.hf import CACHE_ENV_VAR, cache_dir  # the library's cache folder (converted models too)

_warned = False


def fallback_cache_dir() -> Path:
    """Our own numba cache folder: ``$CONSTRAINED_REC_CACHE/numba`` or ``~/.cache/constrained-rec/numba``."""
    return cache_dir() / "numba"


@contextmanager
def _numba_cache_dir(path: Path):
    # numba's first locator reads config.CACHE_DIR when the cache is created, i.e. inside enable_caching().
    saved = config.CACHE_DIR
    config.CACHE_DIR = str(path)
    try:
        yield
    finally:
        config.CACHE_DIR = saved


def _enable_cache(dispatcher) -> None:
    global _warned
    try:
        dispatcher.enable_caching()  # numba's locators: NUMBA_CACHE_DIR, __pycache__, ~/.cache/numba
        return
    except RuntimeError as err:
        if "no locator available" not in str(err):
            raise
    try:
        with _numba_cache_dir(fallback_cache_dir()):
            dispatcher.enable_caching()
        return
    except RuntimeError:
        pass
    if not _warned:
        _warned = True
        warnings.warn(
            f"no writable numba cache folder (tried NUMBA_CACHE_DIR, the package's __pycache__, ~/.cache/numba "
            f"and {fallback_cache_dir()}): the kernels compile without a cache, so each new process pays the "
            f"JIT once. Set {CACHE_ENV_VAR} or NUMBA_CACHE_DIR to a writable folder to cache them.",
            RuntimeWarning,
            stacklevel=3,
        )


def cached_njit(**options):
    """``numba.njit(**options)`` with a disk cache wherever one can be written; see the module docstring."""
    if "cache" in options:
        raise ValueError("cached_njit chooses the cache itself; do not pass cache=")

    def decorate(func):
        dispatcher = numba.njit(**options)(func)
        if hasattr(dispatcher, "enable_caching"):  # NUMBA_DISABLE_JIT=1 returns the plain function
            _enable_cache(dispatcher)
        return dispatcher

    return decorate

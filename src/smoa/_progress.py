"""Whether progress bars are shown: the one switch for every bar of the library.

Bars go to stderr and are on when stderr is a terminal, so tests, pipes and log files stay quiet. ``SMOA_PROGRESS=0``
turns every bar off, ``SMOA_PROGRESS=1`` turns them on even without a terminal; a recipe's ``progress: false`` turns
them off for the code run inside :func:`progress_bars`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

PROGRESS_ENV = "SMOA_PROGRESS"
_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")
_requested: ContextVar[bool] = ContextVar("smoa_progress", default=True)


def progress_enabled(requested: bool = True) -> bool:
    """``False`` if ``requested`` is false, a :func:`progress_bars` block turned bars off, or ``SMOA_PROGRESS`` is
    ``0``; ``True`` if ``SMOA_PROGRESS`` is ``1``; otherwise whether stderr is a terminal."""
    if not (requested and _requested.get()):
        return False
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    return sys.stderr.isatty()


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Within the block, bars are shown only if ``enabled`` (and :func:`progress_enabled` allows them); for code that
    takes no ``progress`` argument, such as ``peft.get_peft_model``."""
    token = _requested.set(enabled and _requested.get())
    try:
        yield
    finally:
        _requested.reset(token)

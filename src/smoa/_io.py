"""Atomic file writes: the one way this project writes a file a user keeps.

The data goes to a temporary file in the same folder, is flushed and fsync-ed, gets mode 0644, and is moved into
place with ``os.replace``; a reader sees the old file or the new one, never a half-written one, and a failed write
leaves no temporary behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_bytes_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text)


class NonFiniteResultError(ValueError):
    """A result that is NaN or infinite: it is not a number anyone can use, and not valid JSON either."""


def first_non_finite(value: Any, where: str = "") -> str | None:
    """The key path (``results.val_loss``, ``curve[3]``) of the first NaN or infinite float in a JSON-like value."""
    if isinstance(value, float):
        return (where or "the value") if not math.isfinite(value) else None
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for key, item in items if (found := first_non_finite(item, key))), None)


def write_json_atomic(path: str | os.PathLike[str], value: Any, *, non_finite: str = "refuse", **dumps: Any) -> Path:
    """:func:`write_bytes_atomic` of ``json.dumps(value, **dumps)`` (default: indent 1, sorted keys, ``str`` for
    other types) plus a final newline.

    No file this project writes holds NaN or Infinity: by default a non-finite float raises
    :class:`NonFiniteResultError` naming the file and the key; ``non_finite="null"`` writes them as ``null``, for
    files where a value is undefined by design (an empty region, a diverged sweep point)."""
    if non_finite not in ("refuse", "null"):
        raise ValueError(f"non_finite={non_finite!r}: choose 'refuse' or 'null'")
    found = first_non_finite(value)
    if found is not None:
        if non_finite == "refuse":
            raise NonFiniteResultError(
                f"{path}: {found} is not a finite number (NaN or infinite); nothing was written. The computation "
                "that produced it overflowed or had nothing to average: see the error before this one, or the inputs"
            )
        value = _nulled(value)
    options = {"indent": 1, "sort_keys": True, "default": str, "allow_nan": False, **dumps}
    return write_bytes_atomic(path, json.dumps(value, **options) + "\n")


def _nulled(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulled(v) for v in value]
    return value


class OutputPathError(ValueError):
    """An output path that cannot take what the command will write: named before any work starts."""


def check_output_path(path: str | os.PathLike[str], option: str, *, folder: bool = False) -> Path:
    """Make sure ``path`` (a file, or with ``folder=True`` a folder) can be written, creating the folder that will
    hold it, before a command spends minutes on a result it could not save.

    Raises:
        OutputPathError: naming ``option`` (``--output``) and why (a folder where a file goes, or the reverse, a
            parent that cannot be created, a folder without write permission).
    """
    path = Path(path).expanduser()
    if not folder and path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give a file path for the result")
    if folder and path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is a file, not a folder; give a folder")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(
            f"{option} {path}: cannot create {parent} ({error.strerror}); choose a writable place"
        ) from None
    target = path if folder and path.is_dir() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {path}: {target} is not writable; choose a writable place")
    return path

"""Atomic file writes: the one way this project writes a file a user keeps.

The data goes to a temporary file in the same folder, is flushed and fsync-ed, gets mode 0644, and is moved into
place with ``os.replace``; a reader sees the old file or the new one, never a half-written one, and a failed write
leaves no temporary behind.
"""

from __future__ import annotations

import json
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


def write_json_atomic(path: str | os.PathLike[str], value: Any, **dumps: Any) -> Path:
    """:func:`write_bytes_atomic` of ``json.dumps(value, **dumps)`` (default: indent 1, sorted keys, ``str`` for
    other types) plus a final newline."""
    options = {"indent": 1, "sort_keys": True, "default": str, **dumps}
    return write_bytes_atomic(path, json.dumps(value, **options) + "\n")

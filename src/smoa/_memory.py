"""Peak memory of this process: CUDA's allocator statistics, or the resident-set high-water mark on Linux CPU."""

from __future__ import annotations

import os

import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def process_memory_kib(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` in KiB (``VmRSS`` now, ``VmHWM`` its high-water mark), or ``None``
    where the file or the field is missing (not Linux)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_process_peak() -> bool:
    """Reset ``VmHWM`` to the current resident size (Linux >= 4.0); whether it could."""
    if not os.path.exists(_CLEAR_REFS):
        return False
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_memory_reset() -> None:
    """Start a new peak: CUDA's peak statistics when a GPU is present, else the process's ``VmHWM``."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_process_peak()


def peak_memory_mib() -> float | None:
    """Peak GPU memory allocated (CUDA) or the process's peak resident memory (CPU, Linux) since the last reset."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = process_memory_kib("VmHWM")
    return None if peak is None else peak / 1024

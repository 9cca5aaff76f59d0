"""Reusable scratch memory for the SMoA kernels' large temporaries on CPU.

A fresh CPU tensor of a few MiB or more is mapped from the operating system on allocation and returned to it when
freed, so every use pays a page fault per 4 KiB page: building a 4096×4096 float32 ``W0 + ΔW`` into new memory costs
about 15 ms in page faults alone, more than the arithmetic. The kernels therefore carve their temporaries out of one
flat buffer per thread and dtype that is kept between calls (CUDA's caching allocator already does this on GPUs, so
other devices get ordinary allocations). The buffer grows to the largest request seen; :func:`release_scratch` frees
it.

Views handed out by :class:`Scratch` are valid until the next kernel call on the same thread; nothing returned to
autograd or to the caller may alias them.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

_LOCAL = threading.local()


def _buffer(numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if device.type != "cpu" or torch.compiler.is_compiling():
        return torch.empty(numel, dtype=dtype, device=device)
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        buffers = _LOCAL.buffers = {}
    key = (dtype, torch.is_inference_mode_enabled())
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffers.pop(key, None)  # free the old one before allocating the larger one
        buffer = buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buffer


class Scratch:
    """A bump allocator over one flat scratch buffer: ``take(shape)`` returns consecutive contiguous views.

    Args:
        shapes: every shape that will be taken (their total sizes the buffer).
        dtype, device: of the views.
    """

    def __init__(self, shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device) -> None:
        self._buffer = _buffer(max(1, sum(math.prod(s) for s in shapes)), dtype, torch.device(device))
        self._offset = 0

    def take(self, *shape: int) -> Tensor:
        numel = math.prod(shape)
        view = self._buffer[self._offset : self._offset + numel].view(shape)
        self._offset += numel
        return view


def release_scratch() -> None:
    """Free this thread's SMoA scratch buffers (they are allocated again on the next kernel call)."""
    _LOCAL.buffers = {}

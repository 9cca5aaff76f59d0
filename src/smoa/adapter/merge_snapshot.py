"""The original base weight ``W0`` an SMoA layer keeps while adapters are merged into it.

Merging writes ``W = W0 + Σ_a ΔW_a`` over the base weight, but every ``ΔW_a`` is anchored on ``W0`` itself
(``ΔW[R_k, C_k] = s·(B_k A_k) ⊙ W0[R_k, C_k]``), not on the merged ``W``. So the first merge keeps ``W0`` and later
merges anchor on the kept one: merging adapters one after another gives exactly the batch merge. Unmerging puts the
kept ``W0`` back and forgets it: the base weight is restored bit for bit, whatever rounding the merge did.

What is kept depends on the base: a CPU copy of the float weight (:class:`smoa.adapter.layer.Linear`), or the
original quantised parameter itself, packed codes and all (:mod:`smoa.adapter.bnb`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class MergeSnapshot(Generic[T]):
    """Holds ``W0`` from the first merge until the unmerge; empty while nothing is merged.

    A plain object, not a module, buffer or parameter: the snapshot is never saved with the adapter, never moved by
    ``.to(...)`` and never registered as a parameter of the layer (a kept ``nn.Parameter`` would otherwise be).
    """

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: T | None = None

    @property
    def taken(self) -> bool:
        """Whether ``W0`` is kept (some adapter is merged)."""
        return self._kept is not None

    @property
    def original(self) -> T | None:
        """The kept ``W0``, or ``None`` while nothing is merged (the base weight is ``W0`` then)."""
        return self._kept

    def keep_first(self, take: Callable[[], T]) -> None:
        """Keep ``take()`` as ``W0`` unless a previous merge already kept one (``take`` is then not called)."""
        if self._kept is None:
            self._kept = take()

    def release(self) -> T:
        """The kept ``W0``, forgotten by the snapshot (for the unmerge to put back)."""
        if self._kept is None:
            raise RuntimeError("no original weight is kept: nothing was merged")
        kept, self._kept = self._kept, None
        return kept

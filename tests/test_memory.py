"""The process memory readers (:mod:`smoa._memory`) the trainer and the benchmarks share."""

from __future__ import annotations

import sys

import pytest

from smoa import _memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux's")
def test_status_fields_and_peak_reset():
    rss, peak = _memory.process_memory_kib("VmRSS"), _memory.process_memory_kib("VmHWM")
    assert rss is not None and peak is not None and 0 < rss <= peak
    assert _memory.process_memory_kib("NoSuchField") is None
    if _memory.reset_process_peak():
        assert _memory.process_memory_kib("VmHWM") <= peak


def test_peak_memory_mib_on_cpu(monkeypatch):
    monkeypatch.setattr(_memory.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_memory, "process_memory_kib", lambda field: 2048 if field == "VmHWM" else None)
    assert _memory.peak_memory_mib() == 2.0
    monkeypatch.setattr(_memory, "process_memory_kib", lambda field: None)
    assert _memory.peak_memory_mib() is None

"""One switch for progress bars: off by SMOA_PROGRESS=0 or a progress_bars(False) block, on by SMOA_PROGRESS=1,
otherwise on only when stderr is a terminal."""

from __future__ import annotations

import io

import pytest

from smoa._progress import progress_bars, progress_enabled


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [(None, False, False), (None, True, True), ("0", True, False), ("off", True, False), ("1", False, True)],
)
def test_env_and_terminal(monkeypatch, env, tty, expected):
    if env is None:
        monkeypatch.delenv("SMOA_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("SMOA_PROGRESS", env)
    monkeypatch.setattr("sys.stderr", Terminal() if tty else io.StringIO())
    assert progress_enabled() is expected
    assert progress_enabled(requested=False) is False


def test_progress_bars_block_turns_bars_off_and_nests(monkeypatch):
    monkeypatch.setenv("SMOA_PROGRESS", "1")
    with progress_bars(False):
        assert not progress_enabled()
        with progress_bars(True):  # an inner block cannot turn back on what a recipe turned off
            assert not progress_enabled()
    with progress_bars(True):
        assert progress_enabled()
    assert progress_enabled()

"""The one atomic writer: the old file or the new one, never a partial one, and no temporary left behind."""

from __future__ import annotations

import json

import pytest

from smoa._io import write_bytes_atomic, write_json_atomic


def test_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "x.txt"
    write_bytes_atomic(target, "first")
    write_bytes_atomic(target, b"second")
    assert target.read_text() == "second" and [p.name for p in target.parent.iterdir()] == ["x.txt"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()}, default=None)  # not serialisable: fails before the move
    assert json.loads(target.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_non_finite_numbers_are_refused_or_written_as_null(tmp_path):
    from smoa._io import NonFiniteResultError
    from smoa.tasks.records import write_json, write_jsonl

    target = tmp_path / "r.json"
    value = {"ok": 1.5, "runs": [{"val_loss": 0.5}, {"val_loss": float("nan")}]}
    for write in (write_json_atomic, write_json, lambda p, v: write_jsonl(p, [v])):
        with pytest.raises(NonFiniteResultError, match=r"runs\[1\]\.val_loss is not a finite number"):
            write(target, value)
        assert not target.exists()
    write_json_atomic(target, {**value, "inf": float("-inf")}, non_finite="null")
    assert json.loads(target.read_text()) == {"inf": None, "ok": 1.5, "runs": [{"val_loss": 0.5}, {"val_loss": None}]}

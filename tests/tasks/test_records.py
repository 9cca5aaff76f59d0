"""JSON / JSONL readers report file, line and field on bad input; writes are atomic."""

import gzip
import json

import pytest

from smoa.tasks import commonsense
from smoa.tasks.records import (
    DataFormatError,
    Record,
    read_json_records,
    read_jsonl,
    require,
    split_validation,
    write_json,
    write_jsonl,
)


def test_jsonl_reports_line_of_malformed_json(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n')
    with pytest.raises(DataFormatError, match=r"data\.jsonl, line 3: not valid JSON"):
        list(read_jsonl(path))


def test_jsonl_rejects_non_objects_and_reads_gzip(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataFormatError, match="line 2: expected a JSON object, got list"):
        list(read_jsonl(path))
    packed = tmp_path / "data.jsonl.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write('{"a": 1}\n{"a": 2}\n')
    assert [obj["a"] for _, obj in read_jsonl(packed)] == [1, 2]


def test_json_list_and_missing_field(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"query": "q", "response": "r"}, {"query": "q2"}]))
    rows = read_json_records(path)
    assert [location for location, _ in rows] == ["item 0", "item 1"]
    with pytest.raises(DataFormatError, match=r"train\.json, item 1: missing field 'response'"):
        require(rows[1][1], "response", str, path, rows[1][0])
    with pytest.raises(DataFormatError, match="field 'query' should be int, got str"):
        require(rows[0][1], "query", int, path, rows[0][0])


def test_broken_json_list_reports_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n  {"query": "q"},\n  {"query": }\n]')
    with pytest.raises(DataFormatError, match=r"train\.json, line 3"):
        read_json_records(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_json_records(tmp_path / "absent.json")


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    write_jsonl(tmp_path / "out" / "r.jsonl", [Record("i", "o", "a").to_json()])
    write_json(tmp_path / "out" / "r.json", {"x": 1})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.json", "r.jsonl"]
    assert json.loads((tmp_path / "out" / "r.jsonl").read_text()) == {
        "instruction": "i",
        "input": "",
        "output": "o",
        "answer": "a",
    }


def test_non_utf8_bytes_are_named_with_the_file_and_line(tmp_path):
    from smoa.tasks.records import DataFormatError, read_json_records, read_jsonl

    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataFormatError, match=r"data.jsonl, line 2: not UTF-8 text"):
        list(read_jsonl(path))
    with pytest.raises(DataFormatError, match=r"data.jsonl, line \d+: not UTF-8 text"):
        read_json_records(path)


def test_split_validation_is_seeded_and_disjoint():
    records = [commonsense.make_record("boolq", f"q{i}", (), i % 2, i) for i in range(1000)]
    train, held = split_validation(records, 120, seed=3)
    again_train, again_held = split_validation(records, 120, seed=3)
    assert len(held) == 120 and len(train) == 880
    assert held == again_held and train == again_train
    assert not {r.uid for r in held} & {r.uid for r in train}
    assert held != split_validation(records, 120, seed=4)[1]

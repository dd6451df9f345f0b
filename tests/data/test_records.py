"""Lazy reading of LLaVA JSON and JSON Lines files."""

from __future__ import annotations

import json
import pickle

import pytest

from alignkd.data.problems import ProblemKind, SampleProblem
from alignkd.data.records import LlavaRecords
from alignkd.errors import DataError

RECORDS = [{"id": "a", "n": 1}, {"id": "b", "text": "naïve café ✓"}, {"id": "c", "n": [1, 2]}]


@pytest.mark.parametrize("name", ["data.json", "data.jsonl"])
def test_records_round_trip(write_data, name):
    records = LlavaRecords(write_data(RECORDS, name))

    assert len(records) == len(RECORDS)
    assert [records[row] for row in range(len(records))] == RECORDS


def test_json_list_detected(write_data):
    assert LlavaRecords(write_data(RECORDS, "data.json")).format == "json"


def test_jsonl_detected_by_content(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"id": "a"}\n{"id": "b"}\n', encoding="utf-8")

    records = LlavaRecords(path)

    assert records.format == "jsonl"
    assert records[1] == {"id": "b"}


def test_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"}\n\n   \n{"id": "b"}\n', encoding="utf-8")

    records = LlavaRecords(path)

    assert len(records) == 2
    assert records[1] == {"id": "b"}
    assert records.locate(1) == "line 4 of data.jsonl"


def test_jsonl_last_line_without_newline(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}', encoding="utf-8")

    assert LlavaRecords(path)[1] == {"id": "b"}


def test_jsonl_invalid_line_is_problem(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b",\n{"id": "c"}\n', encoding="utf-8")

    records = LlavaRecords(path)

    assert records[2] == {"id": "c"}
    with pytest.raises(SampleProblem) as raised:
        records[1]
    assert raised.value.kind is ProblemKind.INVALID_RECORD
    assert "line 2 of data.jsonl" in str(raised.value)


def test_jsonl_reads_lazily(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n', encoding="utf-8")
    records = LlavaRecords(path)

    # Rewriting the second line in place shows that records are read on access, not at open.
    path.write_text('{"id": "a"}\n{"id": "z"}\n', encoding="utf-8")

    assert records[1] == {"id": "z"}


def test_records_survive_pickle(write_data):
    records = LlavaRecords(write_data(RECORDS, "data.jsonl"))
    assert records[0] == RECORDS[0]

    copy = pickle.loads(pickle.dumps(records))

    assert copy[2] == RECORDS[2]


def test_missing_file_raises(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        LlavaRecords(tmp_path / "absent.json")


def test_empty_file_raises(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("  \n", encoding="utf-8")

    with pytest.raises(DataError, match="is empty"):
        LlavaRecords(path)


def test_json_object_file_raises(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"data": [1, 2]', encoding="utf-8")

    with pytest.raises(SampleProblem, match="not valid JSON"):
        LlavaRecords(path)[0]


def test_multiline_json_object_raises(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"name": "task", "samples": 3}, indent=2), encoding="utf-8")

    with pytest.raises(DataError, match=r"is one JSON object \(keys: name, samples\), not LLaVA data"):
        LlavaRecords(path)


def test_invalid_json_list_raises(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"id": "a"},', encoding="utf-8")

    with pytest.raises(DataError, match="not valid JSON"):
        LlavaRecords(path)


def test_unknown_format_raises(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("id,image\n", encoding="utf-8")

    with pytest.raises(DataError, match="starts with"):
        LlavaRecords(path)

"""Sample keys from LLaVA ids, and token hashes of collated samples."""

import json

import torch

from alignkd.cache.keys import batch_sample_hashes, sample_hash, sample_keys
from alignkd.data.records import LlavaRecords


def _records(tmp_path, samples, name="data.json"):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(sample) + "\n" for sample in samples))
    else:
        path.write_text(json.dumps(samples))
    return LlavaRecords(path)


def test_unique_ids_are_keys(tmp_path):
    records = _records(tmp_path, [{"id": "a"}, {"id": 7}, {"id": "c"}])
    assert sample_keys(records) == ["a", "7", "c"]


def test_repeated_ids_get_occurrence(tmp_path):
    records = _records(tmp_path, [{"id": "a"}, {"id": "b"}, {"id": "a"}, {"id": "a"}])
    assert sample_keys(records) == ["a", "b", "a#2", "a#3"]


def test_missing_ids_use_row(tmp_path):
    records = _records(tmp_path, [{"id": "a"}, {}, {"conversations": []}], name="data.jsonl")
    assert sample_keys(records) == ["a", "row:1", "row:2"]


def test_generated_key_avoids_real_id(tmp_path):
    records = _records(tmp_path, [{"id": "a#2"}, {"id": "a"}, {"id": "a"}, {"id": "row:3"}, {}])
    keys = sample_keys(records)
    assert keys[:4] == ["a#2", "a", "a#2#", "row:3"]
    assert len(set(keys)) == len(keys)


def test_unreadable_record_gets_row_key(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"}\n{not json\n{"id": "b"}\n')
    assert sample_keys(LlavaRecords(path)) == ["a", "row:1", "b"]


def test_sample_hash_ignores_padding():
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]]),
        "labels": torch.tensor([[-100, 6, 7, -100], [-100, 6, -100, -100]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
    }
    hashes = batch_sample_hashes(batch)
    assert hashes[0] == sample_hash(torch.tensor([5, 6, 7]), torch.tensor([-100, 6, 7]))
    assert hashes[1] == sample_hash(torch.tensor([5, 6]), torch.tensor([-100, 6]))
    assert hashes[0] != hashes[1]


def test_sample_hash_sees_label_change():
    ids = torch.tensor([1, 2, 3])
    assert sample_hash(ids, torch.tensor([-100, 2, 3])) != sample_hash(ids, torch.tensor([-100, -100, 3]))


def test_sample_hash_uses_teacher_pixels():
    pixels = torch.zeros(1, 3, 2, 2)
    teacher_pixels = torch.ones(1, 3, 2, 2)
    batch = {
        "input_ids": torch.tensor([[5, 6], [5, 7]]),
        "labels": torch.tensor([[-100, 6], [-100, 7]]),
        "attention_mask": torch.ones(2, 2, dtype=torch.long),
        "image_mask": torch.tensor([False, True]),
        "pixel_values": pixels,
    }

    hashes = batch_sample_hashes(batch)
    with_teacher_pixels = batch_sample_hashes({**batch, "teacher_pixel_values": teacher_pixels})

    # Row 0 has no image; row 1 owns the only pixel row, and the teacher's pixels take precedence.
    assert hashes[0] == sample_hash(torch.tensor([5, 6]), torch.tensor([-100, 6]))
    assert hashes[1] == sample_hash(torch.tensor([5, 7]), torch.tensor([-100, 7]), pixels[0])
    assert with_teacher_pixels[1] == sample_hash(torch.tensor([5, 7]), torch.tensor([-100, 7]), teacher_pixels[0])
    assert with_teacher_pixels[1] != hashes[1]

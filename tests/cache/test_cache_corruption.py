"""Damaged shards and index files are detected when read, with an error naming the file."""

import json
import logging
import shutil

import pytest
from cache_helpers import build_live_run, write_cache, write_config

from alignkd.cache.format import CacheError, CorruptShardError, read_manifest
from alignkd.cache.keys import sample_keys
from alignkd.cache.reader import CachedTeacher
from alignkd.cli import main

SHARD = "shard-b0000001.safetensors"


def batch_of_shard(run, folder, shard):
    """A batch of the samples stored in `shard` (a shard file name)."""
    index = json.loads((folder / "finetune" / shard.replace(".safetensors", ".index.json")).read_text())
    keys = sample_keys(run.dataset.records)
    positions = [position for position, row in enumerate(run.dataset.rows) if keys[row] in index["keys"]]
    return run.dataset.collator()([run.dataset[position] for position in positions])


@pytest.fixture
def damaged(full_cache, tmp_path):
    """A copy of the full cache, the run that reads it, and the batch held by shard SHARD."""
    config, reference = full_cache
    folder = tmp_path / "cache"
    shutil.copytree(reference, folder)
    run = build_live_run(config)
    return config, folder, run, batch_of_shard(run, folder, SHARD)


def _read(config, folder, run, batch, verify="sha256"):
    teacher = CachedTeacher.open(folder, config=config, verify=verify)
    teacher.bind("finetune", config.finetune, run.dataset, run.student.tokenizer)
    return teacher(batch, run.settings)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_truncated_shard_names_shard(damaged):
    config, folder, run, batch = damaged
    shard = folder / "finetune" / SHARD
    _truncate(shard)
    with pytest.raises(CorruptShardError) as error:
        _read(config, folder, run, batch)
    message = str(error.value)
    assert str(shard) in message
    assert "truncated" in message
    assert "rerun `alignkd cache-teacher`" in message


def test_truncation_found_by_size_check(damaged):
    config, folder, run, batch = damaged
    _truncate(folder / "finetune" / SHARD)
    with pytest.raises(CorruptShardError, match="truncated"):
        _read(config, folder, run, batch, verify="size")


def test_flipped_byte_names_shard(damaged):
    config, folder, run, batch = damaged
    shard = folder / "finetune" / SHARD
    _flip_last_byte(shard)
    with pytest.raises(CorruptShardError, match=f"{shard}.*SHA-256"):
        _read(config, folder, run, batch)


def test_undamaged_shards_still_read(damaged):
    config, folder, run, _ = damaged
    _flip_last_byte(folder / "finetune" / SHARD)
    output = _read(config, folder, run, batch_of_shard(run, folder, "shard-b0000000.safetensors"))
    assert output.topk_logits.rows > 0


def test_damaged_index_names_index(damaged):
    config, folder, run, _ = damaged
    index = folder / "finetune" / "shard-b0000002.index.json"
    _flip_last_byte(index)
    teacher = CachedTeacher.open(folder, config=config)
    with pytest.raises(CorruptShardError, match=f"{index}.*truncated or corrupt"):
        teacher.bind("finetune", config.finetune, run.dataset, run.student.tokenizer)


def test_deleted_shard_names_shard(damaged):
    config, folder, run, batch = damaged
    (folder / "finetune" / SHARD).unlink()
    with pytest.raises(CorruptShardError, match=f"{SHARD} is missing"):
        _read(config, folder, run, batch)


def test_rerun_repairs_damaged_shard(damaged, full_cache):
    config, folder, _, _ = damaged
    _, reference = full_cache
    shard = folder / "finetune" / SHARD
    _flip_last_byte(shard)
    write_cache(config, folder, top_k=1000, shard_megabytes=0.01)
    assert shard.read_bytes() == (reference / "finetune" / SHARD).read_bytes()
    assert read_manifest(folder / "finetune") == read_manifest(reference / "finetune")


def test_incomplete_cache_is_error(damaged):
    config, folder, _, _ = damaged
    manifest_file = folder / "finetune" / "manifest.json"
    manifest_file.write_text(manifest_file.read_text().replace('"complete": true', '"complete": false'))
    with pytest.raises(CacheError, match="incomplete: 3 of 3 batches"):
        CachedTeacher.open(folder, config=config)


def test_verify_command_names_shard(damaged, capsys, caplog):
    _, folder, _, _ = damaged
    assert main(["cache-verify", str(folder)]) == 0
    assert "All shards intact; complete" in capsys.readouterr().out

    _truncate(folder / "finetune" / SHARD)
    with caplog.at_level(logging.ERROR):
        assert main(["cache-verify", str(folder)]) == 1
    assert SHARD in caplog.text


def test_missing_cache_folder_is_error(full_cache, cache_setup, tmp_path, caplog):
    config = write_config(cache_setup, tmp_path / "run")
    with caplog.at_level(logging.ERROR):
        assert main(["distill", str(config), f"teacher_cache={tmp_path / 'nowhere'}"]) == 1
    assert "teacher cache folder not found" in caplog.text

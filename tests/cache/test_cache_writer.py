"""`cache-teacher` writing: manifest contents, sample selection, and resuming after a kill."""

import shutil

import pytest
from cache_helpers import build_live_run, distill_config, write_cache
from cache_helpers import FULL_VOCABULARY_K

import alignkd.cache.writer as writer_module
from alignkd.cache.format import CacheMismatchError, read_manifest
from alignkd.cache.keys import sample_keys
from alignkd.cache.reader import CachedTeacher

SHARD_OPTIONS = {"top_k": FULL_VOCABULARY_K, "shard_megabytes": 0.01}


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the writer catches it."""


def _files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_manifest_records_sizes(full_cache):
    _, folder = full_cache
    manifest = read_manifest(folder / "finetune")
    summary = manifest.summary
    vocabulary = manifest.teacher.vocab_size

    assert manifest.complete
    assert manifest.selected_samples == 12
    assert [shard.file for shard in manifest.shards] == [f"shard-b000000{n}.safetensors" for n in range(3)]
    assert summary["samples"] == 12
    # Per row: fp32 log-probability and uint16 id per kept token, fp32 tail, int32 target.
    assert summary["logit_bytes_per_row"] == vocabulary * (4 + 2) + 4 + 4
    assert summary["dense_fp16_bytes_per_row"] == 2 * vocabulary
    assert summary["top_k_mass_mean"] == pytest.approx(1.0)
    for shard in manifest.shards:
        assert (folder / "finetune" / shard.file).stat().st_size == shard.bytes
    assert manifest.fingerprint["template"] == "v1"
    assert manifest.teacher.heads == 4
    assert manifest.teacher.width == 48


def test_default_k_fits_budget(cache_setup, tmp_path):
    config = distill_config(cache_setup, tmp_path / "run", loss={"preset": "vanilla-kd"})
    folder = write_cache(config, tmp_path / "cache")
    manifest = read_manifest(folder / "finetune")

    # vanilla-kd distils logits only, so nothing else is stored.
    assert manifest.write_settings.outputs == ["logits"]
    assert manifest.write_settings.top_k == 64
    assert manifest.summary["logit_bytes_per_row"] == 64 * (4 + 2) + 4 + 4
    assert manifest.summary["attention_bytes"] == 0
    assert manifest.summary["vision_tokens_bytes"] == 0
    assert 0 < manifest.summary["top_k_mass_mean"] < 1


def test_min_length_selects_long_samples(cache_setup, tmp_path):
    config = distill_config(cache_setup, tmp_path / "run")
    run = build_live_run(config)
    keys = sample_keys(run.dataset.records)
    threshold = int(sorted(run.dataset.lengths)[len(run.dataset) // 2])
    long_keys = {keys[row] for row, length in zip(run.dataset.rows, run.dataset.lengths) if length >= threshold}
    assert 0 < len(long_keys) < len(run.dataset)

    folder = write_cache(config, tmp_path / "cache", min_length=threshold)
    manifest = read_manifest(folder / "finetune")
    store = CachedTeacher.open(folder, config=config).stores["finetune"]
    store.load_index()

    assert manifest.is_partial
    assert manifest.complete
    assert manifest.selected_samples == len(long_keys)
    assert {key for key in keys if store.locate(key) is not None} == long_keys


@pytest.mark.parametrize("kill_point", ["shard_write", "before_manifest"])
def test_killed_writer_resumes_to_same_cache(full_cache, cache_setup, tmp_path, monkeypatch, kill_point):
    config, reference = full_cache
    calls = {"count": 0}

    if kill_point == "shard_write":
        original = writer_module.write_bytes_atomic

        def write_then_die(path, data):
            # The second shard dies half-written under its temporary name.
            if path.suffix == ".safetensors":
                calls["count"] += 1
                if calls["count"] == 2:
                    path.with_name(path.name + ".tmp").write_bytes(data[: len(data) // 2])
                    raise Killed
            original(path, data)

        monkeypatch.setattr(writer_module, "write_bytes_atomic", write_then_die)
    else:
        original = writer_module.write_manifest

        def die_before_manifest(folder, manifest):
            # The first call writes the empty manifest; the third would list the second shard.
            calls["count"] += 1
            if calls["count"] == 3:
                raise Killed
            original(folder, manifest)

        monkeypatch.setattr(writer_module, "write_manifest", die_before_manifest)

    folder = tmp_path / "cache"
    with pytest.raises(Killed):
        write_cache(config, folder, **SHARD_OPTIONS)
    interrupted = read_manifest(folder / "finetune")
    assert not interrupted.complete
    assert len(interrupted.shards) == 1

    monkeypatch.undo()
    write_cache(config, folder, **SHARD_OPTIONS)
    assert _files(folder / "finetune") == _files(reference / "finetune")


def test_resume_with_other_k_is_error(full_cache, tmp_path):
    config, _ = full_cache
    folder = write_cache(config, tmp_path / "cache", top_k=8)
    with pytest.raises(CacheMismatchError, match="top_k: 8 in the cache, 16 now"):
        write_cache(config, folder, top_k=16)


def test_rerun_of_complete_cache_writes_nothing(full_cache, tmp_path):
    config, reference = full_cache
    folder = tmp_path / "cache"
    shutil.copytree(reference, folder)
    before = _files(folder / "finetune")
    summaries = writer_module.write_teacher_cache(config, writer_module.CacheOptions(out=folder, batch_size=4, **SHARD_OPTIONS))
    assert summaries[0].written_shards == 0
    assert _files(folder / "finetune") == before

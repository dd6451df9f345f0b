"""Weight files: layouts found, shards read and written, strict key checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from alignkd.errors import ModelError
from alignkd.models.weights import check_state_dict, find_weight_files, read_state_dict, write_state_dict


def test_safetensors_preferred_over_bin(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert find_weight_files(tmp_path) == [tmp_path / "model.safetensors"]
    assert torch.equal(read_state_dict(tmp_path)["a"], torch.zeros(2))


def test_no_weights_rejected(tmp_path):
    with pytest.raises(ModelError, match="no weights found"):
        find_weight_files(tmp_path)


def test_missing_shard_rejected(tmp_path):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file({"a": torch.zeros(1)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    with pytest.raises(ModelError, match="model-00002-of-00002.safetensors"):
        find_weight_files(tmp_path)


def test_sharded_write_round_trip(tmp_path):
    state = {f"layer{index}.weight": torch.full((10,), float(index)) for index in range(5)}
    # Each tensor is 40 bytes, so at most two fit in a shard of 100 bytes.
    paths = write_state_dict(state, tmp_path, max_shard_bytes=100)
    assert [path.name for path in paths] == [f"model-0000{n}-of-00003.safetensors" for n in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 200
    loaded = read_state_dict(tmp_path)
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key])


def test_rewrite_removes_old_shards(tmp_path):
    write_state_dict({"a": torch.zeros(10), "b": torch.zeros(10)}, tmp_path, max_shard_bytes=40)
    write_state_dict({"a": torch.ones(10)}, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.safetensors"]


def test_dtype_cast_on_read(tmp_path):
    save_file({"w": torch.zeros(2, dtype=torch.float16), "ids": torch.arange(2)}, str(tmp_path / "model.safetensors"))
    state = read_state_dict(tmp_path, dtype=torch.bfloat16)
    assert state["w"].dtype == torch.bfloat16
    assert state["ids"].dtype == torch.int64


def test_check_state_dict_optional_key():
    expected = {"embed.weight": torch.Size([4, 2]), "lm_head.weight": torch.Size([4, 2])}
    check_state_dict({"embed.weight": torch.zeros(4, 2)}, expected, optional={"lm_head.weight"}, source="x")
    with pytest.raises(ModelError, match=r"x does not match .* missing keys \(1\): lm_head.weight"):
        check_state_dict({"embed.weight": torch.zeros(4, 2)}, expected, source="x")

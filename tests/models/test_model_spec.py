"""init_model: strict specs, vocabulary from the tokenizer, seeded weights, a copied tokenizer."""

from __future__ import annotations

import pytest
import torch
from vlm_test_helpers import tiny_spec

from alignkd.config import ConfigError
from alignkd.constants import IMAGE_PLACEHOLDER_TEXT
from alignkd.models.adapters import get_vlm_adapter
from alignkd.models.spec import init_model


def test_vocabulary_from_tokenizer(llama_tokenizer):
    loaded = init_model(tiny_spec(), llama_tokenizer)
    adapter = get_vlm_adapter(loaded.model)
    assert adapter.vocab_size == len(llama_tokenizer)
    assert loaded.model.config.pad_token_id == llama_tokenizer.pad_token_id
    assert loaded.model.config.eos_token_id == llama_tokenizer.eos_token_id


def test_sizes_follow_spec(llama_tokenizer):
    spec = tiny_spec()
    spec["language"]["num_layers"] = 3
    adapter = get_vlm_adapter(init_model(spec, llama_tokenizer).model)
    assert len(adapter.decoder.layers) == 3
    assert adapter.num_vision_tokens == 4
    assert adapter.hidden_size == 32
    assert adapter.num_attention_heads == 4
    assert adapter.vision_tower.config.intermediate_size == 4 * 32


def test_same_seed_same_weights(llama_tokenizer):
    first = init_model(tiny_spec(), llama_tokenizer, seed=3).model.state_dict()
    again = init_model(tiny_spec(), llama_tokenizer, seed=3).model.state_dict()
    other = init_model(tiny_spec(), llama_tokenizer, seed=4).model.state_dict()
    key = "model.mm_projector.mlp.mlp.0.weight"
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first[key], other[key])


def test_llava_gets_image_token_on_a_copy(llama_tokenizer):
    loaded = init_model(tiny_spec("llava", "mlp2x_gelu"), llama_tokenizer)
    assert IMAGE_PLACEHOLDER_TEXT not in llama_tokenizer.get_vocab()
    assert IMAGE_PLACEHOLDER_TEXT in loaded.tokenizer.get_vocab()
    image_token_id = loaded.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER_TEXT)
    assert loaded.model.config.image_token_id == image_token_id
    assert get_vlm_adapter(loaded.model).vocab_size == len(llama_tokenizer) + 1


def test_llava_cls_patch_keeps_cls_token(llama_tokenizer):
    adapter = get_vlm_adapter(
        init_model(tiny_spec("llava", "mlp2x_gelu", select_feature="cls_patch"), llama_tokenizer).model
    )
    assert adapter.num_vision_tokens == 16 + 1


def test_unknown_key_rejected(llama_tokenizer):
    spec = tiny_spec()
    spec["language"]["hidden_sise"] = 32
    with pytest.raises(ConfigError, match="unknown config key 'language.hidden_sise'"):
        init_model(spec, llama_tokenizer)


def test_llava_needs_mlp_projector(llama_tokenizer):
    with pytest.raises(ConfigError, match="LLaVA uses 'mlp2x_gelu'"):
        init_model(tiny_spec("llava", "ldpnetv2"), llama_tokenizer)


@pytest.mark.parametrize(("family", "expected"), [("mobilevlm", "ldpnetv2"), ("llava", "mlp2x_gelu")])
def test_projector_defaults_per_family(llama_tokenizer, family, expected):
    spec = tiny_spec(family)
    del spec["projector"]

    adapter = get_vlm_adapter(init_model(spec, llama_tokenizer).model)

    assert adapter.projector_type == expected


def test_small_vocabulary_rejected(llama_tokenizer):
    spec = tiny_spec()
    spec["language"]["vocab_size"] = 10
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        init_model(spec, llama_tokenizer)


def test_bad_vision_sizes_rejected(llama_tokenizer):
    spec = tiny_spec()
    spec["vision"]["image_size"] = 30
    with pytest.raises(ConfigError, match="vision: image_size 30 must be a multiple of patch_size 8"):
        init_model(spec, llama_tokenizer)


def test_bad_projector_type_named(llama_tokenizer):
    spec = tiny_spec()
    spec["projector"]["type"] = "ldpnet3"
    with pytest.raises(ConfigError, match="projector: type: unknown projector type 'ldpnet3'"):
        init_model(spec, llama_tokenizer)


def test_vision_token_count_from_config(tmp_path, llama_tokenizer):
    from alignkd.models.loading import read_num_vision_tokens, save_vlm
    from alignkd.models.spec import init_model

    for family, projector, expected in (("mobilevlm", "ldpnetv2", 4), ("mobilevlm", "mlp2x_gelu", 16), ("llava", "mlp2x_gelu", 16)):
        spec = {
            "family": family,
            "vision": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "patch_size": 8, "image_size": 32},
            "projector": {"type": projector, "grid_size": 2},
            "language": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        }
        loaded = init_model(spec, llama_tokenizer, seed=0)
        folder = tmp_path / f"{family}-{projector}"
        save_vlm(loaded.model, loaded.tokenizer, loaded.image_processor, folder)
        assert read_num_vision_tokens(folder) == expected, folder.name

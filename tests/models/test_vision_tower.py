"""Vision tower: hidden-state selection, the missing-hidden-states error, and local config lookup."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from alignkd.errors import ModelError
from alignkd.models.vision import (
    KNOWN_VISION_TOWERS,
    clip_hidden_state,
    resolve_clip_vision_config,
    select_vision_features,
)

TINY_CLIP = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8
)


def tiny_clip() -> CLIPVisionModel:
    return CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).eval()


def test_clip_returns_all_hidden_states():
    # Pinned to the installed transformers: some 5.x releases returned None here.
    tower = tiny_clip()
    with torch.no_grad():
        outputs = tower(torch.randn(1, 3, 16, 16), output_hidden_states=True)
    assert outputs.hidden_states is not None, f"transformers {transformers.__version__}"
    assert len(outputs.hidden_states) == TINY_CLIP["num_hidden_layers"] + 1


def test_penultimate_layer_matches_manual_run():
    tower = tiny_clip()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = select_vision_features(tower, pixels, select_layer=-2, drop_cls=True)
        hidden = tower.pre_layrnorm(tower.embeddings(pixels))
        hidden = tower.encoder.layers[0](hidden, None)
    # 2 x 2 patches, CLS dropped.
    assert features.shape == (2, 4, TINY_CLIP["hidden_size"])
    torch.testing.assert_close(features, hidden[:, 1:])


def test_keeping_cls_token():
    tower = tiny_clip()
    with torch.no_grad():
        features = select_vision_features(tower, torch.randn(1, 3, 16, 16), select_layer=-1, drop_cls=False)
    assert features.shape == (1, 5, TINY_CLIP["hidden_size"])


class _TowerWithoutHiddenStates(CLIPVisionModel):
    """A CLIP model whose output lacks hidden states, as in the transformers 5 releases that dropped them."""

    def forward(self, pixel_values, **kwargs):
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=hidden[:, 0])


def test_missing_hidden_states_rejected():
    tower = _TowerWithoutHiddenStates(CLIPVisionConfig(**TINY_CLIP))
    with pytest.raises(ModelError, match="vision tower returned no hidden states"):
        select_vision_features(tower, torch.randn(1, 3, 16, 16), select_layer=-2, drop_cls=True)


def test_known_tower_config():
    config = resolve_clip_vision_config("openai/clip-vit-large-patch14-336", None)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 24, 16)
    assert (config.intermediate_size, config.patch_size, config.image_size) == (4096, 14, 336)
    assert config.hidden_act == "quick_gelu"


def test_local_tower_folder(tmp_path):
    tiny_clip().save_pretrained(tmp_path / "my-clip")
    config = resolve_clip_vision_config("my-clip", None, model_dir=tmp_path)
    assert config.hidden_size == TINY_CLIP["hidden_size"]
    assert config.image_size == TINY_CLIP["image_size"]


def test_stored_config_wins():
    config = resolve_clip_vision_config("openai/clip-vit-large-patch14-336", TINY_CLIP)
    assert config.hidden_size == TINY_CLIP["hidden_size"]


def test_unknown_tower_rejected(tmp_path):
    with pytest.raises(ModelError, match="'someone/vit-tiny'"):
        resolve_clip_vision_config("someone/vit-tiny", None, model_dir=tmp_path)


def test_known_towers_have_square_grids():
    for name, sizes in KNOWN_VISION_TOWERS.items():
        assert sizes["image_size"] % sizes["patch_size"] == 0, name


@pytest.mark.parametrize("select_layer", [0, 1, -2, -1])
def test_direct_hidden_state_matches_output(select_layer):
    tower = tiny_clip()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        direct = clip_hidden_state(tower, pixels, select_layer)
        reported = tower(pixels, output_hidden_states=True).hidden_states[select_layer]
    torch.testing.assert_close(direct, reported)


def test_tower_features_survive_llama_output_capture(build_vlm):
    # Asking the MobileVLM decoder for hidden states installs transformers' capture hooks on
    # every submodel, the nested CLIP included; the tower's features must not change.
    model = build_vlm().model
    tower = model.model.vision_tower
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = tower(pixels)
        model.model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True, output_attentions=False)
        after = tower(pixels)
    torch.testing.assert_close(after, before)

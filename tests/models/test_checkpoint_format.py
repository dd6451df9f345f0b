"""MobileVLM checkpoint format: hand-built checkpoints load strictly; save and load round trips."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from vlm_test_helpers import random_images

from alignkd.constants import IMAGE_PLACEHOLDER_ID
from alignkd.errors import ModelError
from alignkd.models.forward import forward_vlm
from alignkd.models.loading import load_projector_weights, load_vlm, save_vlm

IMG = IMAGE_PLACEHOLDER_ID
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)
HIDDEN = 32
VOCAB = 300


def mobilevlm_v2_config(tower: str) -> dict:
    """A config.json as MobileVLM V2's training code writes it (transformers 4 field names)."""
    return {
        "architectures": ["MobileLlamaForCausalLM"],
        "model_type": "mobilevlm",
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "vocab_size": VOCAB,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "mm_vision_tower": tower,
        "vision_tower_type": "clip",
        "mm_hidden_size": VISION["hidden_size"],
        "mm_projector_type": "ldpnetv2",
        "mm_projector_grid_size": 2,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
    }


def hand_built_state() -> dict[str, torch.Tensor]:
    """Weights under MobileVLM's key names, assembled without alignkd's model classes."""
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB
        )
    )
    state = {key: tensor.half() for key, tensor in llama.state_dict().items()}

    clip = CLIPVisionModel(CLIPVisionConfig(**VISION))
    for key, tensor in clip.state_dict().items():
        state[f"model.vision_tower.vision_tower.vision_model.{key}"] = tensor.half()

    width = VISION["hidden_size"]
    projector = {
        "mlp.mlp.0.weight": torch.randn(HIDDEN, width),
        "mlp.mlp.0.bias": torch.randn(HIDDEN),
        "mlp.mlp.2.weight": torch.randn(HIDDEN, HIDDEN),
        "mlp.mlp.2.bias": torch.randn(HIDDEN),
        "peg.peg.0.weight": torch.randn(HIDDEN, 1, 3, 3),
        "peg.peg.0.bias": torch.randn(HIDDEN),
    }
    state.update({f"model.mm_projector.{key}": tensor.half() for key, tensor in projector.items()})

    # Buffers that transformers 4.30 and older saved.
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    state["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    return state


def write_checkpoint(folder, state, tokenizer, config=None, sharded_bin=False):
    folder.mkdir(parents=True, exist_ok=True)
    CLIPVisionModel(CLIPVisionConfig(**VISION)).config.save_pretrained(folder / "clip-local")
    (folder / "config.json").write_text(json.dumps(config or mobilevlm_v2_config("clip-local")))
    if sharded_bin:
        keys = sorted(state)
        halves = {
            "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
            "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
        }
        for name, shard_keys in halves.items():
            torch.save({key: state[key] for key in shard_keys}, folder / name)
        index = {"metadata": {}, "weight_map": {key: name for name, shard_keys in halves.items() for key in shard_keys}}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    else:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(str(folder))


@pytest.mark.parametrize("sharded_bin", [False, True], ids=["safetensors", "sharded-bin"])
def test_hand_built_checkpoint_loads(tmp_path, llama_tokenizer, sharded_bin):
    state = hand_built_state()
    write_checkpoint(tmp_path / "ckpt", state, llama_tokenizer, sharded_bin=sharded_bin)

    loaded = load_vlm(tmp_path / "ckpt")
    model = loaded.model
    assert loaded.family == "mobilevlm"
    assert model.dtype == torch.float16
    loaded_state = model.state_dict()
    for key in ("model.layers.1.mlp.down_proj.weight", "model.mm_projector.peg.peg.0.bias", "lm_head.weight"):
        assert torch.equal(loaded_state[key], state[key])
    assert torch.equal(
        loaded_state["model.vision_tower.vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight"],
        state["model.vision_tower.vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight"],
    )

    model.float()
    input_ids = torch.tensor([[1, 5, IMG, 7, 8]])
    with torch.no_grad():
        output = forward_vlm(
            model, input_ids, torch.ones_like(input_ids), None, random_images(1), logit_positions="all"
        )
    assert output.logits.shape == (2 + 4 + 2 - 1, VOCAB)
    assert torch.isfinite(output.logits).all()


def test_missing_and_unexpected_keys_listed(tmp_path, llama_tokenizer):
    state = hand_built_state()
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.mm_projector.extra.weight"] = torch.zeros(2)
    write_checkpoint(tmp_path / "ckpt", state, llama_tokenizer)
    with pytest.raises(ModelError) as error:
        load_vlm(tmp_path / "ckpt")
    assert "missing keys (1): model.layers.1.mlp.up_proj.weight" in str(error.value)
    assert "unexpected keys (1): model.mm_projector.extra.weight" in str(error.value)


def test_shape_mismatch_listed(tmp_path, llama_tokenizer):
    state = hand_built_state()
    state["model.mm_projector.peg.peg.0.bias"] = torch.zeros(HIDDEN + 1)
    write_checkpoint(tmp_path / "ckpt", state, llama_tokenizer)
    with pytest.raises(ModelError, match=r"model.mm_projector.peg.peg.0.bias: checkpoint \(33,\) vs model \(32,\)"):
        load_vlm(tmp_path / "ckpt")


def test_projector_type_conflict_names_both(tmp_path, llama_tokenizer):
    write_checkpoint(tmp_path / "ckpt", hand_built_state(), llama_tokenizer)
    with pytest.raises(ModelError, match="projector type 'ldpnetv2' but projector type 'ldpnet' was requested"):
        load_vlm(tmp_path / "ckpt", projector_type="ldpnet")


def test_dtype_override(tmp_path, llama_tokenizer):
    write_checkpoint(tmp_path / "ckpt", hand_built_state(), llama_tokenizer)
    model = load_vlm(tmp_path / "ckpt", dtype=torch.float32).model
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


@pytest.mark.parametrize("projector", ["ldpnetv2", "ldpnet", "mlp2x_gelu", "linear"])
def test_save_load_identical_logits(tmp_path, build_vlm, projector):
    original = build_vlm("mobilevlm", projector)
    save_vlm(original.model, original.tokenizer, original.image_processor, tmp_path / "saved")
    loaded = load_vlm(tmp_path / "saved")

    input_ids = torch.tensor([[1, 5, IMG, 7, 8], [1, 9, 9, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    images = random_images(1)
    with torch.no_grad():
        before = forward_vlm(original.model, input_ids, attention_mask, None, images, logit_positions="all")
        after = forward_vlm(loaded.model, input_ids, attention_mask, None, images, logit_positions="all")
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)
    assert loaded.tokenizer.get_vocab() == original.tokenizer.get_vocab()
    assert loaded.image_processor.crop_size == original.image_processor.crop_size


def test_sharded_save_round_trip(tmp_path, build_vlm):
    original = build_vlm()
    save_vlm(original.model, original.tokenizer, original.image_processor, tmp_path / "saved", max_shard_bytes=20_000)
    shards = sorted(path.name for path in (tmp_path / "saved").glob("model-*.safetensors"))
    assert len(shards) > 1
    assert (tmp_path / "saved" / "model.safetensors.index.json").is_file()

    loaded = load_vlm(tmp_path / "saved")
    for key, tensor in original.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], tensor), key


def test_saved_config_is_mobilevlm_format(tmp_path, build_vlm):
    original = build_vlm()
    save_vlm(original.model.half(), original.tokenizer, original.image_processor, tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "mobilevlm"
    assert config["architectures"] == ["MobileLlamaForCausalLM"]
    assert config["rope_theta"] == 10000.0
    assert config["rope_scaling"] is None
    assert config["torch_dtype"] == "float16"
    assert config["mm_projector_type"] == "ldpnetv2"
    assert config["mm_projector_grid_size"] == 2
    assert config["mm_vision_config"]["hidden_size"] == 32
    assert "rope_parameters" not in config
    assert "dtype" not in config

    keys = set(load_file(str(tmp_path / "saved" / "model.safetensors")))
    assert keys == set(original.model.state_dict())
    assert load_vlm(tmp_path / "saved").model.dtype == torch.float16


def test_tied_embeddings_round_trip(tmp_path, build_vlm):
    original = build_vlm(tie=True)
    model = original.model
    assert model.lm_head.weight is model.get_input_embeddings().weight
    save_vlm(model, original.tokenizer, original.image_processor, tmp_path / "saved")
    assert "lm_head.weight" not in load_file(str(tmp_path / "saved" / "model.safetensors"))

    loaded = load_vlm(tmp_path / "saved").model
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight, atol=0, rtol=0)


def test_student_saved_under_own_keys(tmp_path, build_vlm):
    student = build_vlm(seed=1)
    teacher = build_vlm(seed=2)
    holder = torch.nn.ModuleDict({"teacher": teacher.model, "student": student.model})

    with pytest.raises(ModelError, match="got ModuleDict"):
        save_vlm(holder, student.tokenizer, student.image_processor, tmp_path / "wrong")

    save_vlm(holder["student"], student.tokenizer, student.image_processor, tmp_path / "student")
    keys = set(load_file(str(tmp_path / "student" / "model.safetensors")))
    assert keys == set(student.model.state_dict())
    assert not any(key.startswith(("teacher", "student")) for key in keys)
    loaded = load_vlm(tmp_path / "student").model
    assert torch.equal(loaded.lm_head.weight, student.model.lm_head.weight)


def test_projector_weights_load(tmp_path, build_vlm):
    source = build_vlm(seed=1).model
    target = build_vlm(seed=2).model
    projector_state = {
        f"model.mm_projector.{key}": tensor for key, tensor in source.model.mm_projector.state_dict().items()
    }
    torch.save(projector_state, tmp_path / "mm_projector.bin")

    load_projector_weights(target, tmp_path / "mm_projector.bin")
    for key, tensor in source.model.mm_projector.state_dict().items():
        assert torch.equal(target.model.mm_projector.state_dict()[key], tensor), key


def test_projector_weights_strict(build_vlm):
    model = build_vlm().model
    state = dict(model.model.mm_projector.state_dict())
    del state["peg.peg.0.bias"]
    with pytest.raises(ModelError, match=r"missing keys \(1\): peg.peg.0.bias"):
        load_projector_weights(model, state)


def test_missing_folder_rejected(tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        load_vlm(tmp_path / "nowhere")


def test_unsupported_model_type_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_llama"}))
    with pytest.raises(ModelError, match="model_type 'llava_llama' is not supported"):
        load_vlm(tmp_path)


def test_llava_round_trip(tmp_path, build_vlm):
    original = build_vlm("llava", "mlp2x_gelu")
    save_vlm(original.model, original.tokenizer, original.image_processor, tmp_path / "llava")
    loaded = load_vlm(tmp_path / "llava")
    assert loaded.family == "llava"

    input_ids = torch.tensor([[1, 5, IMG, 7, 8]])
    images = random_images(1)
    with torch.no_grad():
        before = forward_vlm(original.model, input_ids, torch.ones_like(input_ids), None, images, logit_positions="all")
        after = forward_vlm(loaded.model, input_ids, torch.ones_like(input_ids), None, images, logit_positions="all")
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)
    assert loaded.image_processor.crop_size == original.image_processor.crop_size

    with pytest.raises(ModelError, match="projector type 'mlp2x_gelu' but projector type 'ldpnetv2' was requested"):
        load_vlm(tmp_path / "llava", projector_type="ldpnetv2")


def test_llava_missing_weights_rejected(tmp_path, build_vlm):
    original = build_vlm("llava", "mlp2x_gelu")
    save_vlm(original.model, original.tokenizer, original.image_processor, tmp_path / "llava")
    path = tmp_path / "llava" / "model.safetensors"
    from safetensors.torch import save_file

    state = load_file(str(path))
    dropped = next(key for key in state if "multi_modal_projector" in key)
    del state[dropped]
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="missing keys"):
        load_vlm(tmp_path / "llava")

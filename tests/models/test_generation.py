"""Greedy generation: batched results equal single-prompt results and a cache-free recomputation."""

from __future__ import annotations

import pytest
import torch
from vlm_test_helpers import random_images, sharpen

from alignkd.constants import IMAGE_PLACEHOLDER_ID
from alignkd.errors import ModelError
from alignkd.models.forward import forward_vlm
from alignkd.models.generation import greedy_generate

IMG = IMAGE_PLACEHOLDER_ID
EOS = 2
PAD = 0
PROMPTS = [
    [1, 5, IMG, 7, 8, 9],
    [1, 4, 6, IMG, 20],
    [1, 30, 31, 32, 33, 34, 35, 36, 37],
    [1, IMG, 9],
]


def images_for(prompts):
    pictures = random_images(len(prompts))
    return [pictures[index] if IMG in prompt else None for index, prompt in enumerate(prompts)]


@pytest.fixture
def sharp_vlm(build_vlm):
    def build(family="mobilevlm", projector="ldpnetv2"):
        model = build_vlm(family, projector).model
        sharpen(model)
        return model

    return build


@pytest.mark.parametrize("family, projector", [("mobilevlm", "ldpnetv2"), ("llava", "mlp2x_gelu")])
def test_batched_equals_single(sharp_vlm, family, projector):
    model = sharp_vlm(family, projector)
    images = images_for(PROMPTS)
    options = dict(max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD)

    batched = greedy_generate(model, PROMPTS, images, **options)
    in_pairs = greedy_generate(model, PROMPTS, images, batch_size=2, **options)
    singles = [greedy_generate(model, [prompt], [image], **options)[0] for prompt, image in zip(PROMPTS, images)]

    assert batched == singles
    assert in_pairs == singles
    assert all(len(answer) > 0 for answer in singles)


def test_matches_recomputation_without_cache(sharp_vlm):
    model = sharp_vlm()
    prompt = PROMPTS[0]
    image = random_images(1)
    (answer,) = greedy_generate(model, [prompt], [image[0]], max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD)

    # Re-run the whole sequence without a cache: each generated token is the argmax of the
    # logits at the position before it.
    input_ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        output = forward_vlm(model, input_ids, torch.ones_like(input_ids), None, image, logit_positions="all")
    predicted = output.logits.argmax(-1)[-len(answer) :].tolist()
    assert predicted == answer


def test_stops_at_eos_and_drops_it(sharp_vlm):
    model = sharp_vlm()
    prompt, image = PROMPTS[2], None
    (free,) = greedy_generate(model, [prompt], [image], max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD)

    (stopped,) = greedy_generate(model, [prompt], [image], max_new_tokens=4, eos_token_id=[free[1]], pad_token_id=PAD)
    assert stopped == free[:1]
    (empty,) = greedy_generate(model, [prompt], [image], max_new_tokens=4, eos_token_id=free[0], pad_token_id=PAD)
    assert empty == []


def test_restores_training_mode(sharp_vlm):
    model = sharp_vlm()
    model.train()
    greedy_generate(model, [PROMPTS[2]], [None], max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD)
    assert model.training


def test_placeholder_without_image_rejected(sharp_vlm):
    model = sharp_vlm()
    with pytest.raises(ModelError, match="prompt 1 contains an image placeholder but its image is None"):
        greedy_generate(
            model, [PROMPTS[2], PROMPTS[0]], [None, None], max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD
        )


def test_image_without_placeholder_rejected(sharp_vlm):
    model = sharp_vlm()
    with pytest.raises(ModelError, match="prompt 0 has an image but no image placeholder"):
        greedy_generate(
            model, [PROMPTS[2]], [random_images(1)[0]], max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD
        )

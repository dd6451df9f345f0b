"""Greedy decoding for MobileVLM and LLaVA, batched with left padding and a KV cache."""

from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache

from alignkd.constants import IMAGE_PLACEHOLDER_ID
from alignkd.errors import ModelError
from alignkd.models.adapters import VLMAdapter, get_vlm_adapter
from alignkd.models.forward import prepare_inputs

logger = logging.getLogger(__name__)


def _check_prompts(prompts: list[list[int]], images: list[torch.Tensor | None]) -> None:
    if len(prompts) != len(images):
        raise ModelError(f"got {len(prompts)} prompts but {len(images)} images; pass one entry (or None) per prompt")
    for index, (prompt, image) in enumerate(zip(prompts, images)):
        if len(prompt) == 0:
            raise ModelError(f"prompt {index} is empty")
        placeholders = sum(1 for token in prompt if token == IMAGE_PLACEHOLDER_ID)
        if placeholders > 1:
            raise ModelError(f"prompt {index} contains {placeholders} image placeholders; at most one is supported")
        if placeholders == 1 and image is None:
            raise ModelError(f"prompt {index} contains an image placeholder but its image is None")
        if placeholders == 0 and image is not None:
            raise ModelError(f"prompt {index} has an image but no image placeholder ({IMAGE_PLACEHOLDER_ID})")
        if image is not None and image.dim() != 3:
            raise ModelError(f"image {index} must be a preprocessed [3, H, W] tensor, got shape {tuple(image.shape)}")


def _left_pad(prompts: list[list[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
        attention_mask[row, length - len(prompt) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def _generate_batch(
    adapter: VLMAdapter,
    prompts: list[list[int]],
    images: list[torch.Tensor | None],
    max_new_tokens: int,
    eos_ids: set[int],
    pad_token_id: int,
) -> list[list[int]]:
    device = adapter.input_embeddings.weight.device
    input_ids, attention_mask = _left_pad(prompts, pad_token_id, device)
    image_mask = torch.tensor([image is not None for image in images], device=device)
    present = [image for image in images if image is not None]
    pixel_values = torch.stack(present).to(device) if present else None

    batch = prepare_inputs(adapter, input_ids, attention_mask, None, pixel_values, image_mask, padding_side="left")
    mask = batch.attention_mask
    cache = DynamicCache(config=adapter.decoder.config)
    outputs = adapter.decoder(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=mask,
        position_ids=batch.position_ids,
        cache=cache,
        use_cache=True,
    )
    next_position = batch.position_ids[:, -1:] + 1

    steps: list[torch.Tensor] = []
    step_is_answer: list[torch.Tensor] = []
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_ids), device=device)
    for _ in range(max_new_tokens):
        logits = adapter.lm_head(outputs.last_hidden_state[:, -1])
        next_tokens = logits.argmax(dim=-1)
        finished_now = torch.isin(next_tokens, eos)
        steps.append(next_tokens)
        step_is_answer.append(~finished & ~finished_now)
        finished |= finished_now
        if bool(finished.all()):
            break

        # Finished rows keep decoding a pad token; their outputs are discarded.
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        outputs = adapter.decoder(
            inputs_embeds=adapter.input_embeddings(next_tokens[:, None]),
            attention_mask=mask,
            position_ids=next_position,
            cache=outputs.cache,
            use_cache=True,
        )
        next_position = next_position + 1

    # One transfer at the end instead of one per step and row.
    tokens = torch.stack(steps, dim=1).cpu()
    keep = torch.stack(step_is_answer, dim=1).cpu()
    return [row_tokens[row_keep].tolist() for row_tokens, row_keep in zip(tokens, keep)]


def greedy_generate(
    model: nn.Module,
    prompts: list[list[int]],
    images: list[torch.Tensor | None],
    *,
    max_new_tokens: int,
    eos_token_id: int | list[int],
    pad_token_id: int,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Generate greedily for each prompt; return the new token ids without the prompt and the EOS.

    Args:
        model: a MobileVLM or LLaVA model.
        prompts: unexpanded token ids, with IMAGE_PLACEHOLDER_ID where the image goes.
        images: per prompt, a preprocessed [3, H, W] tensor or None for a text-only prompt.
        max_new_tokens: upper bound on the tokens generated per prompt.
        eos_token_id: id or ids that end a prompt's answer.
        pad_token_id: id used for left padding (masked out, so any valid id works).
        batch_size: prompts per forward; all at once when None. Prompts are grouped by length
            to limit padding, and the results are returned in the input order.

    The model runs in eval mode, restored afterwards. The generated ids do not depend on the
    batch composition: prompts are left-padded, position ids count real tokens only, and padding is
    masked out of attention.
    """
    _check_prompts(prompts, images)
    if max_new_tokens < 0:
        raise ModelError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]

    adapter = get_vlm_adapter(model)
    eos_ids = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    batch_size = batch_size or len(prompts)
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]), reverse=True)

    answers: list[list[int]] = [[] for _ in prompts]
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    was_training = adapter.model.training
    adapter.model.eval()
    try:
        for indices in tqdm(batches, desc="generate", disable=len(batches) < 2):
            results = _generate_batch(
                adapter,
                [prompts[index] for index in indices],
                [images[index] for index in indices],
                max_new_tokens,
                eos_ids,
                pad_token_id,
            )
            for index, result in zip(indices, results):
                answers[index] = result
    finally:
        adapter.model.train(was_training)
    return answers

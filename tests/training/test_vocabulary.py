"""shared_tokenizer_length and teacher_input_ids: token ids that teacher and student share."""

from __future__ import annotations

import copy

import pytest
import torch

from alignkd.errors import AlignKDError, ModelError
from alignkd.training.teacher import teacher_input_ids
from alignkd.training.vocabulary import shared_tokenizer_length


def _with_tokens(tokenizer, tokens, special):
    extended = copy.deepcopy(tokenizer)
    if special:
        extended.add_special_tokens({"additional_special_tokens": tokens})
    else:
        extended.add_tokens(tokens)
    return extended


def test_same_tokenizer_shares_all(llama_tokenizer):
    assert shared_tokenizer_length(llama_tokenizer, copy.deepcopy(llama_tokenizer)) == len(llama_tokenizer)


@pytest.mark.parametrize("longer", ["teacher", "student"])
def test_appended_special_tokens_cut(llama_tokenizer, longer):
    # LLaVA-1.5 appends <image> and <pad> to the LLaMA tokenizer.
    extended = _with_tokens(llama_tokenizer, ["<image>", "<pad>"], special=True)
    pair = (extended, llama_tokenizer) if longer == "teacher" else (llama_tokenizer, extended)

    assert len(extended) == len(llama_tokenizer) + 2
    assert shared_tokenizer_length(*pair) == len(llama_tokenizer)


def test_appended_text_token_rejected(llama_tokenizer):
    extended = _with_tokens(llama_tokenizer, ["zebra-word"], special=False)

    with pytest.raises(AlignKDError) as raised:
        shared_tokenizer_length(llama_tokenizer, extended)

    message = str(raised.value)
    assert "student tokenizer has 1 tokens after the" in message
    assert "zebra-word" in message


def test_other_tokenizer_rejected(llama_tokenizer, gpt2_tokenizer):
    with pytest.raises(AlignKDError) as raised:
        shared_tokenizer_length(llama_tokenizer, gpt2_tokenizer)

    message = str(raised.value)
    assert "map 300 of their first 300 ids to different tokens" in message
    assert "id 0: teacher '<unk>', student '<|endoftext|>'" in message


def test_unknown_ids_at_padding_replaced():
    input_ids = torch.tensor([[5, 6, 7], [5, 11, 11]])
    attention_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])

    readable = teacher_input_ids(input_ids, attention_mask, num_embeddings=10)

    assert readable.tolist() == [[5, 6, 7], [5, 0, 0]]


def test_placeholder_ids_kept():
    input_ids = torch.tensor([[5, -200, 7]])

    readable = teacher_input_ids(input_ids, torch.ones_like(input_ids), num_embeddings=10)

    assert readable is input_ids


def test_unknown_id_in_text_rejected():
    input_ids = torch.tensor([[5, 6, 7], [5, 12, 11]])
    attention_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])

    with pytest.raises(ModelError, match="batch row 1 contains token id 12 at position 1"):
        teacher_input_ids(input_ids, attention_mask, num_embeddings=10)

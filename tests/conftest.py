"""Shared fixtures: deterministic torch settings and small real tokenizers built locally."""

from __future__ import annotations

import pytest
import torch

from alignkd.data.train_tokenizer import train_tokenizer

# A small corpus that covers the chat templates' fixed text, so both tokenizer styles split it
# into a handful of subwords rather than single characters.
TOKENIZER_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A cat sitting on a red sofa.",
    "USER: How many digits are there? ASSISTANT: 3",
    "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nDescribe the picture. [/INST] A dog.",
    "Answer the question using a single word or phrase.",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 yes no",
] * 20


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def llama_tokenizer():
    """SentencePiece-style BPE: adds BOS, leading-space marker, pad is `<unk>`."""
    return train_tokenizer(TOKENIZER_CORPUS, vocab_size=300, style="llama")


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """Byte-level BPE: no BOS added, pad equal to EOS."""
    return train_tokenizer(TOKENIZER_CORPUS, vocab_size=400, style="gpt2")

"""Train a small subword tokenizer with the `tokenizers` library and save it for transformers.

Used for the embedded demo task and for tests that need real tokenizers of different styles
without downloading one:

- "llama": SentencePiece-like BPE with a "▁" word marker that is prepended to the first word
  (the LLaMA leading-space behaviour), a BOS token added to every encoding, `</s>` as EOS and
  `<unk>` as padding, as in LLaMA and Vicuna checkpoints.
- "gpt2": byte-level BPE that adds no BOS, with `<|endoftext|>` as BOS, EOS and padding
  (pad equal to EOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TokenizerStyle = Literal["llama", "gpt2"]

_LLAMA_SPECIALS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>"}
_GPT2_SPECIALS = {
    "unk_token": "<|endoftext|>",
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    style: TokenizerStyle = "llama",
    output_dir: str | Path | None = None,
    model_max_length: int = 2048,
) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer of `style` on `texts` and optionally save it to `output_dir`.

    Training is deterministic for the same texts and vocabulary size. The saved folder loads
    with `transformers.AutoTokenizer.from_pretrained(output_dir)`.
    """
    if style == "llama":
        specials = _LLAMA_SPECIALS
        backend = Tokenizer(models.BPE(unk_token=specials["unk_token"]))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        special_tokens = ["<unk>", "<s>", "</s>"]
    elif style == "gpt2":
        specials = _GPT2_SPECIALS
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        special_tokens = ["<|endoftext|>"]
    else:
        raise ValueError(f"unknown tokenizer style {style!r}; expected 'llama' or 'gpt2'")

    initial_alphabet = pre_tokenizers.ByteLevel.alphabet() if style == "gpt2" else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=initial_alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)

    if style == "llama":
        bos_id = backend.token_to_id(specials["bos_token"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{specials['bos_token']} $A",
            pair=f"{specials['bos_token']} $A $B",
            special_tokens=[(specials["bos_token"], bos_id)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length, **specials)
    if output_dir is not None:
        tokenizer.save_pretrained(str(output_dir))
    return tokenizer

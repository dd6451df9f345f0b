"""`alignkd init-model` and `alignkd chat`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SPEC_EXAMPLE = """\
example spec (every field is documented in alignkd.models.spec, and the repository's
examples/specs/ has a commented one):

  family: mobilevlm            # or llava (transformers' LLaVA, mlp2x_gelu projector)
  vision: {hidden_size: 64, num_layers: 2, num_heads: 2, patch_size: 16, image_size: 64}
  projector: {type: ldpnetv2, grid_size: 2}
  language: {hidden_size: 128, num_layers: 2, num_heads: 4, num_key_value_heads: 2,
             intermediate_size: 256}
"""


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    init = subparsers.add_parser(
        "init-model",
        help="write a randomly initialised VLM in its native format",
        description=(
            "Build a randomly initialised MobileVLM or LLaVA model from a spec file and write it, with "
            "the tokenizer and a CLIP image processor, to a folder that `load_vlm` and `alignkd chat` read."
        ),
        epilog=SPEC_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--config", required=True, type=Path, help="model spec (.yaml, .yml or .json), as in the example below"
    )
    init.add_argument("--tokenizer", required=True, type=Path, help="local tokenizer folder (transformers format)")
    init.add_argument("--output", required=True, type=Path, help="folder to write the model to")
    init.add_argument("--seed", type=int, default=0, help="random seed of the initial weights (default: 0)")
    init.set_defaults(handler=run_init_model)

    chat = subparsers.add_parser(
        "chat",
        help="answer one question about an image with greedy decoding",
        description="Load a saved VLM, ask it one question (optionally about an image) and print the answer.",
    )
    chat.add_argument("--model", required=True, type=Path, help="saved model folder")
    chat.add_argument("--image", type=Path, default=None, help="image file; omit for a text-only question")
    chat.add_argument("--template", default="v1", help="chat template of the prompt (default: v1)")
    chat.add_argument(
        "--system-prompt",
        default=None,
        help="replace the template's system prompt (use the one the model was trained with); default: the template's",
    )
    chat.add_argument(
        "--max-new-tokens", type=int, default=128, help="maximum number of tokens to generate (default: 128)"
    )
    chat.add_argument("--device", default=None, help="torch device, for example cuda:0 (default: cpu)")
    chat.add_argument("question", help="the question to ask")
    chat.set_defaults(handler=run_chat)


def _read_spec(path: Path) -> dict:
    from alignkd.config import ConfigError, load_yaml

    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of spec keys")
        return data
    return load_yaml(path)


def run_init_model(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from alignkd.errors import ModelError
    from alignkd.models.loading import save_vlm
    from alignkd.models.spec import init_model

    spec = _read_spec(args.config)
    if not args.tokenizer.is_dir():
        raise ModelError(f"tokenizer folder not found: {args.tokenizer}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the tokenizer from {args.tokenizer}: {error}") from None

    loaded = init_model(spec, tokenizer, seed=args.seed)
    save_vlm(loaded.model, loaded.tokenizer, loaded.image_processor, args.output)
    parameters = sum(parameter.numel() for parameter in loaded.model.parameters())
    print(f"wrote a {loaded.family} model with {parameters:,} parameters to {args.output}")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from alignkd.data.images import open_rgb_image, preprocess_image
    from alignkd.data.tokenization import encode_generation_prompt
    from alignkd.errors import ModelError
    from alignkd.models.adapters import get_vlm_adapter
    from alignkd.models.generation import greedy_generate
    from alignkd.models.loading import load_vlm

    if args.max_new_tokens < 1:
        raise ModelError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    # The image is read first, so that a wrong path fails before a large model loads.
    rgb_image = open_rgb_image(args.image) if args.image is not None else None
    loaded = load_vlm(args.model, device=args.device)
    tokenizer = loaded.tokenizer
    adapter = get_vlm_adapter(loaded.model)

    image = None
    if rgb_image is not None:
        # Configs name the other settings differently ("square", "resize"). All of them leave the
        # aspect ratio to the processor's resize.
        aspect_ratio = "pad" if adapter.image_aspect_ratio == "pad" else "resize"
        image = preprocess_image(rgb_image, loaded.image_processor, aspect_ratio=aspect_ratio)

    prompt = encode_generation_prompt(
        tokenizer, args.template, args.question, has_image=image is not None, system_prompt=args.system_prompt
    )
    eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        raise ModelError(f"the tokenizer in {args.model} has no EOS token; generation would never stop early")
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id

    (answer,) = greedy_generate(
        loaded.model,
        [prompt],
        [image],
        max_new_tokens=args.max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    print(tokenizer.decode(answer, skip_special_tokens=True).strip())
    return 0

"""`alignkd data ...` subcommands."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    data_parser = subparsers.add_parser("data", help="inspect and check training data")
    data_commands = data_parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    check = data_commands.add_parser(
        "check",
        help="check LLaVA-format data before training and print a report",
        description=(
            "Check every sample of a LLaVA-format data file: conversation structure, chat template rules, "
            "supervised tokens, sequence length with the image's vision tokens expanded, and image files. "
            "Prints counts per problem kind, the first offending samples of each, and a length histogram. "
            "Exits with status 1 when errors remain under the chosen policy."
        ),
    )
    check.add_argument(
        "data", type=Path, metavar="DATA", help="data file: a JSON list of samples (.json) or JSON Lines (.jsonl)"
    )
    check.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder that the samples' image paths are relative to (default: the data file's folder)",
    )
    check.add_argument(
        "--template", default="v1", metavar="NAME", help="chat template: plain, v1 or llama_2 (default: v1)"
    )
    check.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        metavar="PATH",
        help="local folder of the training tokenizer (default: the first --model folder)",
    )
    check.add_argument(
        "--max-length",
        type=int,
        default=None,
        metavar="N",
        help="longest sequence in tokens, vision tokens included (default: data.max_length's default, 2048); "
        "0 for no limit",
    )
    counts = check.add_mutually_exclusive_group(required=True)
    counts.add_argument(
        "--num-vision-tokens",
        type=int,
        metavar="N",
        help="vision tokens per image, the largest among the models in use (144 for MobileVLM V2)",
    )
    counts.add_argument(
        "--model",
        type=Path,
        action="append",
        metavar="DIR",
        help="model folder(s) to read the vision tokens per image from (repeat for teacher and student; "
        "the largest count is used)",
    )
    check.add_argument(
        "--image-check",
        choices=["exists", "header", "decode"],
        default=None,
        help="how deeply to read each image: a stat, the header, or a full decode (default: header)",
    )
    check.add_argument(
        "--on-error",
        choices=["error", "skip"],
        default="error",
        help="treat faulty samples as errors, or as removed samples counted against --max-skip-fraction",
    )
    check.add_argument(
        "--max-skip-fraction",
        type=float,
        default=None,
        metavar="FRACTION",
        help="with --on-error skip, the largest fraction of removed samples that still passes (default: 0.01)",
    )
    check.add_argument(
        "--accept-truncated-images",
        action="store_true",
        help="count truncated images as accepted partial decodes instead of errors",
    )
    check.add_argument(
        "--system-prompt", default=None, metavar="TEXT", help="replacement for the template's system prompt"
    )
    check.add_argument(
        "--examples", type=int, default=5, metavar="N", help="offending sample ids listed per problem kind (default: 5)"
    )
    check.set_defaults(handler=run_check)

    data_parser.set_defaults(handler=lambda args: data_parser.print_help() or 2)


def run_check(args: argparse.Namespace) -> int:
    """Run the data check, print the report on stdout, and return 1 when errors remain."""
    from alignkd.config import from_mapping
    from alignkd.data.config import DataConfig
    from alignkd.data.preflight import check_data

    settings = {
        "path": str(args.data),
        "image_folder": str(args.images) if args.images is not None else None,
        "template": args.template,
        "system_prompt": args.system_prompt,
        "on_error": args.on_error,
        "accept_truncated_images": args.accept_truncated_images,
        "report_examples": args.examples,
    }
    # Options left unset keep the DataConfig defaults, so that the check matches a training run.
    if args.max_length is not None:
        settings["max_length"] = args.max_length if args.max_length > 0 else None
    if args.max_skip_fraction is not None:
        settings["max_skip_fraction"] = args.max_skip_fraction
    if args.image_check is not None:
        settings["image_check"] = args.image_check
    config = from_mapping(DataConfig, settings)
    tokenizer_path = args.tokenizer
    if tokenizer_path is None:
        if args.model is None:
            from alignkd.errors import DataError

            raise DataError("missing tokenizer: pass --tokenizer PATH, or --model DIR to use that model's tokenizer")
        tokenizer_path = args.model[0]
    tokenizer = load_tokenizer(tokenizer_path)
    num_vision_tokens = args.num_vision_tokens
    if num_vision_tokens is None:
        from alignkd.models.loading import read_num_vision_tokens

        num_vision_tokens = max(read_num_vision_tokens(model_dir) for model_dir in args.model)
    result = check_data(config, tokenizer, num_vision_tokens=num_vision_tokens)
    print(result.report.format())
    return 1 if result.report.has_errors else 0


def load_tokenizer(path: Path):
    """Load a tokenizer from a local folder, without touching the model hub."""
    from alignkd.errors import DataError

    if not path.is_dir():
        raise DataError(f"tokenizer folder not found: {path}. Pass the folder that contains tokenizer.json")

    from transformers import AutoTokenizer

    # AutoTokenizer reads a model folder's config.json; registering the mobilevlm model type
    # keeps transformers from warning that it does not know it.
    import alignkd.models.mobilevlm  # noqa: F401

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot load a tokenizer from {path}: {error}") from None

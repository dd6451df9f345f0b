"""`alignkd distill CONFIG.yaml [key=value ...]`."""

from __future__ import annotations

import argparse


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a teacher VLM into a student with Align-KD",
        description=(
            "Train a student VLM from a YAML config. Overrides take the form dotted.key=value, for example "
            "loss.preset=vanilla-kd finetune.optimization.max_steps=100. Running the same command again "
            "resumes an interrupted run."
        ),
    )
    parser.add_argument("config", help="YAML config file (see examples/configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted keys")
    parser.set_defaults(handler=run_distill_command)


def load_distill_config(path: str, overrides: list[str]):
    """Read a YAML config, apply overrides, and build the strict `DistillConfig`."""
    from alignkd.config import apply_overrides, from_mapping, load_yaml
    from alignkd.training.config import DistillConfig

    return from_mapping(DistillConfig, apply_overrides(load_yaml(path), overrides))


def run_distill_command(args: argparse.Namespace) -> int:
    from alignkd.training.run import is_main_process, run_distillation

    config = load_distill_config(args.config, args.overrides)
    results = run_distillation(config)
    # Every rank of a multi-process launch returns here; one line is enough.
    if is_main_process():
        print(f"Final student: {results[-1].student_dir}")
    return 0

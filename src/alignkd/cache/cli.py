"""`alignkd cache-teacher CONFIG.yaml --out DIR` and `alignkd cache-verify DIR`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from alignkd.cache.defaults import DEFAULT_SHARD_MEGABYTES, DEFAULT_TOP_K

logger = logging.getLogger(__name__)

_MEGABYTE = 2**20


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache-teacher",
        help="run the teacher once over the training data and store its outputs for distillation",
        description=(
            "Run the teacher of a distill config over the data of its stages and write sharded safetensors: "
            "the teacher's top-k log-probabilities at the logit positions of the loss, the layer-0 text-to-vision "
            "attention and the projector's vision tokens, as far as the loss reads them. Train from the result "
            "with `teacher_cache: DIR` in the distill config. Running the command again on the same folder "
            "continues an interrupted run and rewrites damaged shards. Example: alignkd cache-teacher distill.yaml "
            "loss.temperature=2 --out cache/ --top-k 64"
        ),
    )
    parser.add_argument("config", help="the distill config (YAML) of the training run")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, dotted keys, right after CONFIG"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="cache folder (one sub-folder per stage)")
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        metavar="K",
        help=f"teacher tokens kept per logit row, with the rest as one tail bucket (default: {DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--min-length",
        type=int,
        default=0,
        metavar="N",
        help="cache only samples of at least N tokens (images expanded with the teacher's vision tokens); "
        "training computes the others with the live teacher (default: 0, cache every sample)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="samples per teacher forward (default: the stage's per_device_batch_size)",
    )
    parser.add_argument(
        "--shard-size",
        type=float,
        default=DEFAULT_SHARD_MEGABYTES,
        metavar="MIB",
        help=f"shard file size in MiB (default: {DEFAULT_SHARD_MEGABYTES:g})",
    )
    parser.add_argument(
        "--stage",
        action="append",
        choices=["pretrain", "finetune"],
        default=None,
        help="cache only this stage (repeatable; default: every stage the config runs)",
    )
    parser.add_argument(
        "--verify",
        choices=["sha256", "size"],
        default="sha256",
        help="how existing shards are checked before a run continues: size and SHA-256, or size only (faster "
        "for large caches, but misses changed bytes) (default: sha256)",
    )
    parser.set_defaults(handler=run_cache_teacher_command)

    verify = subparsers.add_parser(
        "cache-verify",
        help="check every shard of a teacher cache and print its size per token",
        description=(
            "Check the size and SHA-256 of every shard and index of a teacher cache against its manifests, and "
            "print what each stage holds. Exits with status 1 at the first damaged file, naming it."
        ),
    )
    verify.add_argument("cache", type=Path, metavar="DIR", help="the folder written by `alignkd cache-teacher`")
    verify.set_defaults(handler=run_cache_verify_command)


def _describe_stage(stage: str, manifest) -> str:
    summary = manifest.summary
    settings = manifest.write_settings
    scope = "every kept sample" if settings.min_length == 0 else f"samples of at least {settings.min_length} tokens"
    return (
        f"{stage}: {int(summary['samples'])} samples ({scope}) in {len(manifest.shards)} shards, "
        f"{summary['file_bytes'] / _MEGABYTE:.1f} MiB; stores {', '.join(settings.outputs)}. Logits: top-{settings.top_k}, "
        f"{summary['logit_bytes_per_row']:.0f} bytes per row = {100 * summary['logits_fraction_of_dense']:.2f}% of dense "
        f"fp16 ({summary['dense_fp16_bytes_per_row']:.0f} bytes); the top-{settings.top_k} tokens hold "
        f"{summary['top_k_mass_mean']:.3f} of the teacher's probability on average. "
        f"{summary['file_bytes_per_sequence_token']:.0f} file bytes per sequence token"
    )


def run_cache_teacher_command(args: argparse.Namespace) -> int:
    from alignkd.cache.writer import CacheOptions, write_teacher_cache
    from alignkd.training.cli import load_distill_config

    config = load_distill_config(args.config, args.overrides)
    options = CacheOptions(
        out=args.out,
        top_k=args.top_k,
        min_length=args.min_length,
        batch_size=args.batch_size,
        shard_megabytes=args.shard_size,
        verify=args.verify,
        stages=args.stage,
    )
    for summary in write_teacher_cache(config, options):
        print(_describe_stage(summary.stage, summary.manifest))
    print(f"Teacher cache: {args.out}")
    return 0


def run_cache_verify_command(args: argparse.Namespace) -> int:
    from alignkd.cache.format import (
        CacheError,
        check_shard_file,
        read_index,
        read_manifest,
    )

    root: Path = args.cache
    stages = sorted(path.name for path in root.iterdir() if (path / "manifest.json").is_file()) if root.is_dir() else []
    if not stages:
        raise CacheError(f"{root} contains no teacher cache (no <stage>/manifest.json); pass the folder given to --out")
    for stage in stages:
        manifest = read_manifest(root / stage)
        for record in manifest.shards:
            check_shard_file(root / stage / record.file, record, "sha256")
            read_index(root / stage / record.index_file, record)
        state = "complete" if manifest.complete else f"incomplete ({manifest.covered_batches()} of {manifest.total_batches} batches)"
        print(f"{_describe_stage(stage, manifest)}. All shards intact; {state}")
    return 0

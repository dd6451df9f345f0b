"""The `alignkd eval` and `alignkd score` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

# Kept in step with alignkd.eval.benchmarks.BENCHMARKS by a test; listed here so that
# `alignkd --help` does not import the scorers.
BENCHMARK_NAMES = ("gqa", "scienceqa", "textvqa", "pope", "mme", "mmbench", "short-answer")

_ANNOTATION_HELP = (
    "annotation file(s) or folder: gqa testdev_balanced_questions.json; scienceqa problems.json "
    "(pid_splits.json beside it is used); textvqa TextVQA_0.5.1_val.json; pope the folder with "
    "coco_pope_<split>.json or those files; mme the MME_Benchmark_release_version folder; mmbench the "
    "MMBench TSV; short-answer a JSONL of {question_id, answer, category}"
)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `eval` and `score`."""
    evaluate = subparsers.add_parser(
        "eval",
        help="generate greedy answers to a benchmark's questions",
        description=(
            "Answer a benchmark's questions with greedy decoding and write a JSONL answers file that records "
            "the prompt variant, template and decoding settings on every line. Exits with status 1 when any "
            "question failed; failed questions are listed in OUTPUT.failures.jsonl and never get a placeholder."
        ),
    )
    evaluate.add_argument("--model", required=True, type=Path, help="folder of the model to evaluate")
    evaluate.add_argument("--benchmark", required=True, choices=BENCHMARK_NAMES, help="benchmark to ask")
    evaluate.add_argument("--questions", required=True, type=Path, help="the benchmark's question file (LLaVA layout)")
    evaluate.add_argument("--images", type=Path, help="folder that the question files' image paths are relative to")
    evaluate.add_argument("--output", required=True, type=Path, help="answers file to write (JSONL)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="questions generated together (default 8)")
    evaluate.add_argument(
        "--max-new-tokens", type=int, default=128, help="maximum generated tokens per answer (default 128)"
    )
    evaluate.add_argument("--template", default="v1", help="chat template of the prompt (default v1, Vicuna v1)")
    evaluate.add_argument(
        "--system-prompt",
        default=None,
        help="replace the template's system prompt (use the one the model was trained with); default: the template's",
    )
    evaluate.add_argument(
        "--prompt-variant",
        help=(
            "prompt variant: textvqa 'ocr' (keep the 'Reference OCR token' line) or 'pure' (remove it); "
            "default: as in the question file"
        ),
    )
    evaluate.add_argument(
        "--image-aspect-ratio",
        choices=("pad", "resize"),
        help="image preprocessing: 'pad' to a square or 'resize'; default: the model config's, else 'pad'",
    )
    evaluate.add_argument("--limit", type=int, help="answer only the first N questions (for quick checks)")
    evaluate.add_argument(
        "--resume", action="store_true", help="keep the answers already in --output and answer only the rest"
    )
    evaluate.add_argument(
        "--max-failures", type=int, help="stop once more than this many questions have failed (default: never stop)"
    )
    evaluate.add_argument("--dtype", help="model dtype, for example float32 or bfloat16 (default: the loader's)")
    evaluate.add_argument("--device", help="device, for example cpu or cuda:0 (default: the loader's)")
    evaluate.set_defaults(handler=_run_eval)

    score = subparsers.add_parser(
        "score",
        help="score an answers file with the benchmark's rule",
        description=(
            "Score an answers file written by `alignkd eval` (or by LLaVA/MobileVLM) against the benchmark's "
            "annotations. Answers without an annotation are an error; annotated questions without an answer "
            "are an error unless --allow-missing is given. Accuracies are percentages."
        ),
    )
    score.add_argument("--benchmark", required=True, choices=BENCHMARK_NAMES, help="benchmark to score")
    score.add_argument("--answers", required=True, type=Path, help="answers file (JSONL)")
    score.add_argument("--annotations", required=True, type=Path, nargs="+", help=_ANNOTATION_HELP)
    score.add_argument("--output-json", type=Path, help="also write the scores and provenance to this JSON file")
    score.add_argument(
        "--allow-missing", action="store_true", help="score only the answered questions instead of failing"
    )
    score.add_argument("--split", help="scienceqa: split to score (default test)")
    score.add_argument(
        "--questions",
        type=Path,
        help="pope: question file to read each answer's split and image from (LLaVA's answer lines lack them)",
    )
    score.add_argument("--submission", type=Path, help="mmbench: also write the server submission file (.xlsx or .tsv)")
    score.set_defaults(handler=_run_score)


def _run_eval(args: argparse.Namespace) -> int:
    from alignkd.eval.run import EvalConfig, run_evaluation

    config = EvalConfig(
        model=args.model,
        benchmark=args.benchmark,
        questions=args.questions,
        output=args.output,
        images=args.images,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        template=args.template,
        system_prompt=args.system_prompt,
        prompt_variant=args.prompt_variant,
        image_aspect_ratio=args.image_aspect_ratio,
        limit=args.limit,
        resume=args.resume,
        max_failures=args.max_failures,
        dtype=args.dtype,
        device=args.device,
    )
    summary = run_evaluation(config)
    print(summary.format_text())
    return 1 if summary.failed else 0


def _run_score(args: argparse.Namespace) -> int:
    from alignkd.eval.score import score_answers

    report = score_answers(
        args.benchmark,
        args.answers,
        args.annotations,
        allow_missing=args.allow_missing,
        split=args.split,
        questions=args.questions,
        submission=args.submission,
    )
    print(report.format_text())
    if args.output_json is not None:
        report.write_json(args.output_json)
        print(f"Scores written to {args.output_json}")
    return 0

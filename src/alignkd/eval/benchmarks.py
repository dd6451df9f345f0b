"""The benchmark registry: per benchmark, its question reader, prompt, variants and scorer.

Each benchmark module under `alignkd.eval.scoring` documents the files it accepts and its
scoring rule. To add a benchmark, write its scorer and add an entry to `BENCHMARKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignkd.errors import DataError
from alignkd.eval import prompts
from alignkd.eval.mmbench_data import read_mmbench_questions
from alignkd.eval.questions import Question, read_llava_questions
from alignkd.eval.report import ScoreReport
from alignkd.eval.scoring.gqa import score_gqa
from alignkd.eval.scoring.mmbench import score_mmbench
from alignkd.eval.scoring.mme import score_mme
from alignkd.eval.scoring.pope import score_pope, split_of_label_file
from alignkd.eval.scoring.request import ScoreRequest
from alignkd.eval.scoring.scienceqa import score_scienceqa
from alignkd.eval.scoring.short_answer import score_short_answer
from alignkd.eval.scoring.textvqa import score_textvqa


@dataclass(frozen=True)
class Benchmark:
    """How to ask and score one benchmark.

    Fields:
        name: the value of --benchmark.
        title: the benchmark's usual name, for help text.
        question_format: the question files it reads, for help text.
        annotation_format: the annotations `alignkd score` expects, for help text.
        prompt_variants: the accepted --prompt-variant values; the first is the default
            unless `detect_variant` is set.
        read_questions: reads a question file into questions.
        build_prompt: returns the user turn for a question and a variant (suffix included).
        score: scores a parsed answers file.
        detect_variant: for benchmarks whose default variant depends on the question file,
            returns the variant the questions already use.
    """

    name: str
    title: str
    question_format: str
    annotation_format: str
    prompt_variants: tuple[str, ...]
    read_questions: Callable[[Path], list[Question]]
    build_prompt: Callable[[Question, str], str]
    score: Callable[[ScoreRequest], ScoreReport]
    detect_variant: Callable[[list[Question], Path], str] | None = None

    def resolve_variant(self, questions: list[Question], requested: str | None, path: Path) -> str:
        """Return the prompt variant to use: `requested`, else the detected or default one."""
        if requested is not None:
            if requested not in self.prompt_variants:
                raise DataError(
                    f"benchmark {self.name} has no prompt variant {requested!r}; choose from "
                    f"{', '.join(self.prompt_variants)}"
                )
            return requested
        if self.detect_variant is not None:
            return self.detect_variant(questions, path)
        return self.prompt_variants[0]


def _short_answer_prompt(question: Question, variant: str) -> str:
    return prompts.apply_suffix(question.text, prompts.SHORT_ANSWER_SUFFIX)


def _multiple_choice_prompt(question: Question, variant: str) -> str:
    return prompts.apply_suffix(question.text, prompts.MULTIPLE_CHOICE_SUFFIX)


def _textvqa_prompt(question: Question, variant: str) -> str:
    return prompts.build_textvqa_prompt(question.text, variant, question.source)


def _detect_textvqa_variant(questions: list[Question], path: Path) -> str:
    return prompts.detect_textvqa_variant([question.text for question in questions], str(path))


def _read_pope_questions(path: Path) -> list[Question]:
    questions = read_llava_questions(path)
    if any("category" not in question.extra for question in questions):
        # POPE's label files have no "category"; their split is in the file name.
        split = split_of_label_file(path)
        for question in questions:
            question.extra.setdefault("category", split)
    return questions


_SHORT = (prompts.SHORT_ANSWER_VARIANT,)
_CHOICE = (prompts.MULTIPLE_CHOICE_VARIANT,)
_LLAVA_JSONL = "LLaVA JSONL: {question_id, image, text, category}"

BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in [
        Benchmark(
            name="gqa",
            title="GQA test-dev balanced",
            question_format=f"{_LLAVA_JSONL} (llava_gqa_testdev_balanced.jsonl)",
            annotation_format="testdev_balanced_questions.json",
            prompt_variants=_SHORT,
            read_questions=read_llava_questions,
            build_prompt=_short_answer_prompt,
            score=score_gqa,
        ),
        Benchmark(
            name="scienceqa",
            title="ScienceQA (reports ScienceQA-IMG and overall accuracy)",
            question_format="LLaVA conversation JSON (llava_test_CQM-A.json)",
            annotation_format="problems.json (pid_splits.json beside it is used when present)",
            prompt_variants=_CHOICE,
            read_questions=read_llava_questions,
            build_prompt=_multiple_choice_prompt,
            score=score_scienceqa,
        ),
        Benchmark(
            name="textvqa",
            title="TextVQA validation",
            question_format=f"{_LLAVA_JSONL} (llava_textvqa_val_v051_ocr.jsonl)",
            annotation_format="TextVQA_0.5.1_val.json",
            prompt_variants=(prompts.TEXTVQA_OCR_VARIANT, prompts.TEXTVQA_PURE_VARIANT),
            read_questions=read_llava_questions,
            build_prompt=_textvqa_prompt,
            score=score_textvqa,
            detect_variant=_detect_textvqa_variant,
        ),
        Benchmark(
            name="pope",
            title="POPE (COCO adversarial, popular, random)",
            question_format=f"{_LLAVA_JSONL} (llava_pope_test.jsonl) or POPE's coco_pope_<split>.json",
            annotation_format="the folder with coco_pope_<split>.json label files, or the files",
            prompt_variants=_SHORT,
            read_questions=_read_pope_questions,
            build_prompt=_short_answer_prompt,
            score=score_pope,
        ),
        Benchmark(
            name="mme",
            title="MME (perception and cognition)",
            question_format=f"{_LLAVA_JSONL} (llava_mme.jsonl)",
            annotation_format="the MME_Benchmark_release_version folder",
            prompt_variants=_SHORT,
            read_questions=read_llava_questions,
            build_prompt=_short_answer_prompt,
            score=score_mme,
        ),
        Benchmark(
            name="mmbench",
            title="MMBench (circular evaluation)",
            question_format="MMBench TSV with base64 images (mmbench_dev_20230712.tsv)",
            annotation_format="the same MMBench TSV",
            prompt_variants=_CHOICE,
            read_questions=read_mmbench_questions,
            build_prompt=_multiple_choice_prompt,
            score=score_mmbench,
        ),
        Benchmark(
            name="short-answer",
            title="Generic short-answer benchmark",
            question_format=_LLAVA_JSONL,
            annotation_format="JSONL: {question_id, answer, category}",
            prompt_variants=_SHORT,
            read_questions=read_llava_questions,
            build_prompt=_short_answer_prompt,
            score=score_short_answer,
        ),
    ]
}


def get_benchmark(name: str) -> Benchmark:
    """Return the registered benchmark `name`, or raise listing the registered names."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise DataError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}") from None

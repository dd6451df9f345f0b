"""`alignkd score`: score an answers file against a benchmark's annotations."""

from __future__ import annotations

import logging
from pathlib import Path

from alignkd.eval.answers import read_answers
from alignkd.eval.benchmarks import get_benchmark
from alignkd.eval.report import ScoreReport
from alignkd.eval.scoring.request import ScoreRequest

logger = logging.getLogger(__name__)


def score_answers(
    benchmark: str,
    answers: str | Path,
    annotations: list[str | Path],
    *,
    allow_missing: bool = False,
    split: str | None = None,
    questions: str | Path | None = None,
    submission: str | Path | None = None,
) -> ScoreReport:
    """Score the answers file `answers` on `benchmark` and return the report.

    `annotations` are the benchmark's annotation files or folder (see `alignkd score --help`).
    Raises DataError when the answers and annotations do not match; see
    `alignkd.eval.scoring.matching` for the rules.
    """
    spec = get_benchmark(benchmark)
    answers_file = read_answers(answers, benchmark=spec.name)
    request = ScoreRequest(
        answers=answers_file,
        annotations=[Path(path) for path in annotations],
        allow_missing=allow_missing,
        split=split,
        questions=Path(questions) if questions is not None else None,
        submission=Path(submission) if submission is not None else None,
    )
    report = spec.score(request)
    logger.info("scored %d answers from %s on %s", report.counts.get("questions", 0), answers_file.path, spec.name)
    return report

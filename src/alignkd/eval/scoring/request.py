"""Scorer inputs, and the provenance block that every score report starts with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkd.errors import DataError
from alignkd.eval.answers import SETTING_KEYS, AnswersFile
from alignkd.eval.report import describe_files


@dataclass
class ScoreRequest:
    """Inputs of one scoring run.

    Fields:
        answers: the parsed answers file.
        annotations: the annotation paths given on the command line (files or folders).
        allow_missing: score only the answered questions instead of raising when annotated
            questions have no answer.
        split: the ScienceQA split to score (None means "test").
        questions: an optional question file whose fields fill in what LLaVA-written answer
            lines lack (POPE needs each answer's "category" and "image").
        submission: where to write the MMBench submission file, or None.
    """

    answers: AnswersFile
    annotations: list[Path]
    allow_missing: bool = False
    split: str | None = None
    questions: Path | None = None
    submission: Path | None = None

    def single_annotation_path(self, what: str) -> Path:
        """Return the only annotation path, or raise naming what the benchmark expects."""
        if len(self.annotations) != 1:
            raise DataError(f"expected one annotation path ({what}), got {len(self.annotations)}")
        path = self.annotations[0]
        if not path.exists():
            raise DataError(f"annotation path not found: {path} (expected {what})")
        return path


def build_provenance(
    request: ScoreRequest, annotation_files: list[Path] | list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """Return the answers and annotation files with their SHA-256 and the recorded generation settings.

    `annotation_files` are paths, or already described entries (see `describe_folder`).
    Keyword arguments override recorded settings (the TextVQA scorer passes the prompt
    variant it detected when the answers file does not record one).
    """
    generation = {key: request.answers.settings.get(key) for key in SETTING_KEYS if key != "benchmark"}
    generation.update(extra)
    return {
        "answers_file": {"path": str(request.answers.path), "sha256": request.answers.sha256},
        "annotation_files": [
            entry if isinstance(entry, dict) else describe_files([entry])[0] for entry in annotation_files
        ],
        "generation": generation,
    }

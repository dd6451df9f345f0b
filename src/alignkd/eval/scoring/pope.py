"""POPE (COCO): yes/no object hallucination, scored per split.

Questions: LLaVA-1.5's llava_pope_test.jsonl (JSONL with "question_id", "image", "text" and
"category", the split: "adversarial", "popular" or "random"). POPE's own label files can
also be used as question files; their split is then read from the file name.

Annotations: POPE's label files coco_pope_<split>.json, one JSON object per line:
{"question_id", "image", "text", "label": "yes" | "no"}. Pass the folder that contains
them or the files themselves. Versions differ (the random split has 2,910 or 3,000
questions), and question ids are numbered per file while LLaVA's question file renumbers
them, so answers are matched to labels by split, image and question text. The SHA-256 of
every label file is recorded in the report.

Answers written by LLaVA lack "category" and "image"; pass the question file with
--questions and they are read from it by question_id.

Scoring (POPE's evaluate.py, also used by LLaVA-1.5): keep the text before the first ".",
delete commas and split on spaces; the answer is "no" when a word is "No", "no" or "not",
and "yes" otherwise. Per split the report gives accuracy, precision, recall and F1 of the
"yes" class and the yes-ratio (share of "yes" predictions), all in percent, and then the
mean F1 and mean accuracy over the splits. Answers that contain none of "yes", "no" or
"not" are scored as "yes" by that rule and counted as unparseable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkd.errors import DataError
from alignkd.eval.answers import AnswerRecord, format_id_list
from alignkd.eval.prompts import SHORT_ANSWER_SUFFIX, strip_suffix
from alignkd.eval.report import ScoreReport, Table, percent
from alignkd.eval.scoring.matching import match_answers
from alignkd.eval.scoring.request import ScoreRequest, build_provenance

_LABELS = ("yes", "no")
_NEGATIVE_WORDS = {"No", "no", "not"}
_LABEL_FILE_PATTERN = re.compile(r"(?:.*_)?(?P<split>[A-Za-z0-9-]+)\.jsonl?$")

PopeKey = tuple[str, str, str]


def parse_pope_answer(text: str) -> tuple[str, bool]:
    """Return the yes/no label of an answer by POPE's rule, and whether its first sentence contains yes, no or not."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    label = "no" if any(word in _NEGATIVE_WORDS for word in words) else "yes"
    stated = re.search(r"\b(yes|no|not)\b", first_sentence, re.IGNORECASE) is not None
    return label, stated


def split_of_label_file(path: Path) -> str:
    """Return the split named by a label file: "random" for coco_pope_random.json."""
    match = _LABEL_FILE_PATTERN.fullmatch(path.name)
    if not match:
        raise DataError(f"{path}: cannot read the POPE split from the file name; name it like coco_pope_<split>.json")
    return match.group("split")


def _question_key(split: str, image: str, question: str) -> PopeKey:
    return split, Path(image).name, " ".join(question.split()).lower()


def _label_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(child for child in path.iterdir() if child.suffix in (".json", ".jsonl"))
            if not found:
                raise DataError(f"{path}: no POPE label files (coco_pope_<split>.json) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"POPE annotation path not found: {path}")
    return files


def read_pope_labels(files: list[Path]) -> dict[PopeKey, dict[str, Any]]:
    """Read POPE label files and return the labels keyed by (split, image file name, question)."""
    labels: dict[PopeKey, dict[str, Any]] = {}
    for path in files:
        split = split_of_label_file(path)
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                source = f"{path}:{line_number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{source}: invalid JSON ({error.msg})") from None
                question_id = row.get("question_id")
                if row.get("label") not in _LABELS:
                    raise DataError(
                        f"{source}: question {question_id!r} has label {row.get('label')!r}; POPE label rows need "
                        "'label' set to 'yes' or 'no'. Check that this is a POPE label file, not a question file"
                    )
                for key in ("image", "text"):
                    if not isinstance(row.get(key), str):
                        raise DataError(f"{source}: question {question_id!r} has no string '{key}'")
                key = _question_key(split, row["image"], row["text"])
                if key in labels:
                    raise DataError(f"{source}: question {question_id!r} repeats an earlier question on the same image")
                labels[key] = {"label": row["label"], "question_id": question_id, "split": split, "file": str(path)}
    return labels


def _read_question_fields(path: Path) -> dict[str, dict[str, Any]]:
    fields = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
                fields[str(row.get("question_id"))] = row
    return fields


def _key_function(request: ScoreRequest, splits: list[str]):
    question_fields = _read_question_fields(request.questions) if request.questions else {}
    only_split = splits[0] if len(splits) == 1 else None

    def key_of(answer: AnswerRecord) -> PopeKey:
        fallback = question_fields.get(answer.question_id, {})
        split = answer.get("category") or fallback.get("category") or only_split
        image = answer.get("image") or fallback.get("image")
        question = strip_suffix(answer.prompt or fallback.get("text") or "", SHORT_ANSWER_SUFFIX)
        if not split or not image or not question:
            raise DataError(
                f"{request.answers.path}:{answer.line_number}: answer {answer.question_id!r} lacks its POPE split "
                "('category'), 'image' or prompt; pass the question file with --questions so they can be read from it"
            )
        return _question_key(split, image, question)

    return key_of


@dataclass
class _SplitCounts:
    true_positive: int = 0
    false_positive: int = 0
    true_negative: int = 0
    false_negative: int = 0
    unparseable: int = 0

    @property
    def total(self) -> int:
        return self.true_positive + self.false_positive + self.true_negative + self.false_negative

    def metrics(self) -> dict[str, float | None]:
        precision = percent(self.true_positive, self.true_positive + self.false_positive)
        recall = percent(self.true_positive, self.true_positive + self.false_negative)
        f1 = None
        if precision is not None and recall is not None and precision + recall > 0:
            f1 = 2 * precision * recall / (precision + recall)
        return {
            "accuracy": percent(self.true_positive + self.true_negative, self.total),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "yes_ratio": percent(self.true_positive + self.false_positive, self.total),
        }


def score_pope(request: ScoreRequest) -> ScoreReport:
    """Score POPE answers per split (see the module docstring)."""
    if not request.annotations:
        raise DataError("POPE needs its label files: pass --annotations DIR or the coco_pope_<split>.json files")
    files = _label_files(request.annotations)
    labels = read_pope_labels(files)
    splits = sorted({split_of_label_file(path) for path in files})

    match = match_answers(
        request.answers.records,
        labels,
        _key_function(request, splits),
        answers_label=str(request.answers.path),
        annotations_label=", ".join(str(path) for path in files),
        allow_missing=request.allow_missing,
    )

    counts = {split: _SplitCounts() for split in splits}
    for answer, label in match.pairs:
        predicted, stated = parse_pope_answer(answer.text)
        split_counts = counts[label["split"]]
        split_counts.unparseable += not stated
        if predicted == "yes":
            if label["label"] == "yes":
                split_counts.true_positive += 1
            else:
                split_counts.false_positive += 1
        elif label["label"] == "no":
            split_counts.true_negative += 1
        else:
            split_counts.false_negative += 1

    answered = {split: split_counts for split, split_counts in counts.items() if split_counts.total}
    details = {}
    rows = []
    notes = match.missing_note()
    for split, split_counts in answered.items():
        split_metrics = split_counts.metrics()
        details[split] = {
            "questions": split_counts.total,
            "true_positive": split_counts.true_positive,
            "false_positive": split_counts.false_positive,
            "true_negative": split_counts.true_negative,
            "false_negative": split_counts.false_negative,
            "unparseable": split_counts.unparseable,
            **split_metrics,
        }
        rows.append([split, split_counts.total, *split_metrics.values(), split_counts.unparseable])
        undefined = [name for name, value in split_metrics.items() if value is None]
        if undefined:
            notes.append(f"split {split}: {', '.join(undefined)} undefined (no 'yes' predictions or no 'yes' labels)")

    unanswered_splits = [split for split in splits if split not in answered]
    if unanswered_splits:
        notes.append(f"no answers for the splits {format_id_list(unanswered_splits)}; they are left out of the means")

    metrics = {}
    for name in ("f1", "accuracy"):
        values = [details[split][name] for split in answered]
        metrics[f"mean_{name}"] = sum(values) / len(values) if values and None not in values else None
    for split in answered:
        metrics[f"{split}_f1"] = details[split]["f1"]

    table = Table(
        "Per split (percent)",
        ["split", "questions", "accuracy", "precision", "recall", "f1", "yes_ratio", "unparseable"],
        rows,
    )
    return ScoreReport(
        benchmark="pope",
        metrics=metrics,
        counts={
            "questions": sum(split_counts.total for split_counts in answered.values()),
            "unparseable": sum(split_counts.unparseable for split_counts in answered.values()),
            "missing": len(match.missing),
        },
        tables=[table],
        notes=notes,
        provenance=build_provenance(request, files),
        details=details,
    )

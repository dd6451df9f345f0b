"""ScienceQA: multiple choice, reported as accuracy over all questions and over image questions.

Questions: LLaVA-1.5's llava_test_CQM-A.json (a JSON list of conversation samples: "id" is
the ScienceQA problem id, and "image" is present only for questions with an image). The first
human turn contains the context, the question and "A. <option>" lines. The prompt ends with
"Answer with the option's letter from the given choices directly.".

Annotations: ScienceQA's problems.json, an object from problem id to {"question",
"choices", "answer" (index of the right choice), "image" (file name or null), "split", ...}.
The split to score (default "test") is taken from pid_splits.json when that file sits next
to problems.json, else from each problem's "split".

Scoring: the chosen letter is extracted robustly (`alignkd.eval.scoring.choices`): "B",
"The answer is B.", "(B) Boston" and the option text "Boston" all choose B. Answers with no
recognisable choice are counted as unparseable and wrong. Two metrics are reported and
labelled separately, because papers have reported each as "ScienceQA":

- accuracy: over every question of the split;
- img_accuracy (ScienceQA-IMG, the number LLaVA-1.5 and MobileVLM report): over the
  questions whose problem has an image.

An answers file that covers exactly the image questions of the split (an IMG-only question
file) gets img_accuracy alone; accuracy is then left out with a note.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignkd.errors import DataError
from alignkd.eval.report import ScoreReport, Table, percent
from alignkd.eval.scoring.choices import extract_choice, option_letters
from alignkd.eval.scoring.matching import match_answers
from alignkd.eval.scoring.request import ScoreRequest, build_provenance

DEFAULT_SPLIT = "test"
_SPLITS_FILE = "pid_splits.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None


def read_scienceqa_problems(path: Path, split: str) -> tuple[dict[str, dict[str, Any]], list[Path]]:
    """Return the problems of `split` by id, and the files they were read from."""
    problems = _read_json(path)
    if not isinstance(problems, dict):
        raise DataError(f"{path}: expected ScienceQA's problems.json, an object from problem id to problem")

    files = [path]
    splits_path = path.with_name(_SPLITS_FILE)
    if splits_path.is_file():
        splits = _read_json(splits_path)
        if split not in splits:
            raise DataError(f"{splits_path}: no split {split!r}; available: {', '.join(sorted(splits))}")
        problem_ids = [str(problem_id) for problem_id in splits[split]]
        files.append(splits_path)
    else:
        problem_ids = [str(problem_id) for problem_id, problem in problems.items() if problem.get("split") == split]

    selected = {}
    for problem_id in problem_ids:
        problem = problems.get(problem_id)
        if problem is None:
            raise DataError(f"{splits_path}: problem {problem_id} of split {split!r} is not in {path}")
        choices = problem.get("choices")
        answer = problem.get("answer")
        if not isinstance(choices, list) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise DataError(f"{path}: problem {problem_id} needs 'choices' (a list) and 'answer' (an index into it)")
        selected[problem_id] = problem
    if not selected:
        raise DataError(f"{path}: split {split!r} has no problems; pass --split with one of train, val, test")
    return selected, files


def score_scienceqa(request: ScoreRequest) -> ScoreReport:
    """Score ScienceQA answers (see the module docstring)."""
    path = request.single_annotation_path("ScienceQA's problems.json")
    split = request.split or DEFAULT_SPLIT
    problems, files = read_scienceqa_problems(path, split)

    image_problems = {problem_id for problem_id, problem in problems.items() if problem.get("image")}
    answered = {record.question_id for record in request.answers.records}
    image_only = answered == image_problems and len(image_problems) < len(problems)
    expected = {problem_id: problems[problem_id] for problem_id in image_problems} if image_only else problems

    match = match_answers(
        request.answers.records,
        expected,
        lambda answer: answer.question_id,
        answers_label=str(request.answers.path),
        annotations_label=f"{path} (split {split})",
        allow_missing=request.allow_missing,
    )

    outcomes = []
    unparseable = 0
    for answer, problem in match.pairs:
        letters = option_letters(len(problem["choices"]))
        chosen = extract_choice(answer.text, [str(choice) for choice in problem["choices"]])
        unparseable += chosen is None
        outcomes.append((answer.question_id in image_problems, chosen == letters[problem["answer"]]))

    image_outcomes = [correct for has_image, correct in outcomes if has_image]
    notes = match.missing_note()
    metrics: dict[str, float | None] = {}
    if image_only:
        notes.append(
            f"accuracy over all {len(problems)} questions of split {split!r} not computed: the answers cover only "
            f"its {len(image_problems)} image questions"
        )
    else:
        metrics["accuracy"] = percent(sum(correct for _, correct in outcomes), len(outcomes))
    metrics["img_accuracy"] = percent(sum(image_outcomes), len(image_outcomes))

    rows = [["image questions (IMG)", len(image_outcomes), metrics["img_accuracy"]]]
    if not image_only:
        rows.insert(0, ["all questions", len(outcomes), metrics["accuracy"]])
    return ScoreReport(
        benchmark="scienceqa",
        metrics=metrics,
        counts={
            "questions": len(outcomes),
            "image_questions": len(image_outcomes),
            "unparseable": unparseable,
            "missing": len(match.missing),
        },
        tables=[Table(f"Split {split}", ["questions", "count", "accuracy"], rows)],
        notes=notes,
        provenance=build_provenance(request, files),
        details={"split": split},
    )

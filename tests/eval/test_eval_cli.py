"""`alignkd score` on the command line: printed table, JSON output and one-line errors."""

import json

from alignkd import cli
from alignkd.eval.benchmarks import BENCHMARKS
from alignkd.eval.cli import BENCHMARK_NAMES


def test_benchmark_names_match_registry():
    assert tuple(BENCHMARKS) == BENCHMARK_NAMES


def _short_answer_files(tmp_path, jsonl_writer, answered=("q1", "q2")):
    annotations = jsonl_writer(
        tmp_path / "annotations.jsonl",
        [{"question_id": "q1", "answer": "3", "category": "count"}, {"question_id": "q2", "answer": "no", "category": "exists"}],
    )
    texts = {"q1": "3", "q2": "yes"}
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": qid, "prompt": "p", "text": texts[qid], "template": "v1"} for qid in answered],
    )
    return answers, annotations


def test_score_prints_and_writes_json(tmp_path, jsonl_writer, capsys):
    answers, annotations = _short_answer_files(tmp_path, jsonl_writer)
    output = tmp_path / "scores.json"

    code = cli.main(
        ["score", "--benchmark", "short-answer", "--answers", str(answers), "--annotations", str(annotations),
         "--output-json", str(output)]
    )

    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy  50.00" in printed
    assert "Template: v1" in printed
    scores = json.loads(output.read_text())
    assert scores["metrics"]["accuracy"] == 50.0
    assert scores["details"]["count"]["questions"] == 1
    assert len(scores["provenance"]["answers_file"]["sha256"]) == 64
    assert len(scores["provenance"]["annotation_files"][0]["sha256"]) == 64
    assert scores["provenance"]["generation"]["template"] == "v1"


def test_score_mismatch_is_one_line_error(tmp_path, jsonl_writer, caplog):
    answers, annotations = _short_answer_files(tmp_path, jsonl_writer, answered=("q1",))

    code = cli.main(["score", "--benchmark", "short-answer", "--answers", str(answers), "--annotations", str(annotations)])

    assert code == 1
    (record,) = [record for record in caplog.records if record.levelname == "ERROR"]
    assert "have no answer: q2" in record.getMessage()
    assert "--allow-missing" in record.getMessage()

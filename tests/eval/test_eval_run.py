"""`alignkd eval` with a small fake model: answer lines, batching, failures and resume."""

import json

import pytest
import torch

from alignkd import cli
from alignkd.config import ConfigError
from alignkd.data.templates import get_template
from alignkd.errors import DataError, ModelError
from alignkd.eval import run
from alignkd.eval.run import EvalConfig, GenerationBackend, failures_path, run_evaluation
from alignkd.eval.score import score_answers

SUFFIX = "Answer the question using a single word or phrase."


class FakeVLM:
    """Answers "yes" when the prompt mentions a dog, else "no"; raises for prompts containing `fail_on`.

    Prompts are encoded as character codes so the fake can read them back; answers are
    encoded with a real tokenizer that adds BOS, so decoding must skip special tokens.
    """

    def __init__(self, tokenizer, fail_on=None):
        self.tokenizer = tokenizer
        self.fail_on = fail_on
        self.batch_sizes = []

    def encode_prompt(self, text, has_image):
        prefix = "<image>\n" if has_image else ""
        return [ord(character) for character in prefix + text]

    def load_image(self, question):
        return torch.zeros(3, 4, 4)

    def generate(self, prompts, images):
        self.batch_sizes.append(len(prompts))
        outputs = []
        for prompt, image in zip(prompts, images):
            text = "".join(chr(code) for code in prompt)
            if self.fail_on and self.fail_on in text:
                raise RuntimeError("query and key must have the same dtype")
            assert (image is not None) == text.startswith("<image>")
            outputs.append(self.tokenizer.encode("yes" if "dog" in text else "no"))
        return outputs

    def backend(self):
        return GenerationBackend(
            tokenizer=self.tokenizer,
            encode_prompt=self.encode_prompt,
            load_image=self.load_image,
            generate=self.generate,
            image_aspect_ratio="pad",
            model_name="fake-student",
        )


@pytest.fixture
def short_answer_set(tmp_path, jsonl_writer):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(b"not opened by the fake model")
    questions = jsonl_writer(
        tmp_path / "questions.jsonl",
        [
            {"question_id": "q1", "image": "a.png", "text": "Is there a dog?", "category": "exists"},
            {"question_id": "q2", "image": "b.png", "text": f"Is there a cat?\n{SUFFIX}", "category": "exists"},
            {"question_id": "q3", "text": "Is a dog an animal?", "category": "text"},
        ],
    )
    annotations = jsonl_writer(
        tmp_path / "annotations.jsonl",
        [
            {"question_id": "q1", "answer": "yes", "category": "exists"},
            {"question_id": "q2", "answer": "yes", "category": "exists"},
            {"question_id": "q3", "answer": "yes", "category": "text"},
        ],
    )
    return {"questions": questions, "images": images, "annotations": annotations, "root": tmp_path}


def _config(dataset, **overrides):
    values = {
        "model": dataset["root"] / "model",
        "benchmark": "short-answer",
        "questions": dataset["questions"],
        "images": dataset["images"],
        "output": dataset["root"] / "answers.jsonl",
        "batch_size": 2,
        "max_new_tokens": 16,
    }
    values.update(overrides)
    return EvalConfig(**values)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answer_lines_record_settings(short_answer_set, llama_tokenizer):
    summary = run_evaluation(_config(short_answer_set), FakeVLM(llama_tokenizer).backend())

    lines = _lines(short_answer_set["root"] / "answers.jsonl")
    assert summary.written == 3
    assert summary.failed == 0
    assert [line["text"] for line in lines] == ["yes", "no", "yes"]
    assert [line["question_id"] for line in lines] == ["q1", "q2", "q3"]
    assert [line["image"] for line in lines] == ["a.png", "b.png", None]
    for line in lines:
        assert line["prompt"].endswith(f"?\n{SUFFIX}")
        assert line["prompt"].count(SUFFIX) == 1
        assert line["benchmark"] == "short-answer"
        assert line["prompt_variant"] == "short-answer"
        assert line["template"] == "v1"
        assert line["decoding"] == {"strategy": "greedy", "do_sample": False, "num_beams": 1, "max_new_tokens": 16}
        assert line["image_aspect_ratio"] == "pad"
        assert line["model"] == "fake-student"
        assert line["category"] in ("exists", "text")


def test_batched_equals_single(short_answer_set, llama_tokenizer):
    single = short_answer_set["root"] / "single.jsonl"
    batched = short_answer_set["root"] / "batched.jsonl"
    model = FakeVLM(llama_tokenizer)

    run_evaluation(_config(short_answer_set, output=single, batch_size=1), model.backend())
    run_evaluation(_config(short_answer_set, output=batched, batch_size=8), model.backend())

    assert model.batch_sizes == [1, 1, 1, 3]
    assert _lines(single) == _lines(batched)


def test_generation_error_is_counted(short_answer_set, llama_tokenizer):
    model = FakeVLM(llama_tokenizer, fail_on="cat")

    summary = run_evaluation(_config(short_answer_set, batch_size=3), model.backend())

    output = short_answer_set["root"] / "answers.jsonl"
    assert [line["question_id"] for line in _lines(output)] == ["q1", "q3"]
    assert summary.failed_ids == ["q2"]
    assert model.batch_sizes == [3, 1, 1, 1]  # the failed batch is retried one question at a time
    (failure,) = _lines(failures_path(output))
    assert failure["question_id"] == "q2"
    assert "query and key must have the same dtype" in failure["error"]
    assert "FAILED: 1 questions got no answer (q2)" in summary.format_text()

    # The scorer reports the unanswered question as missing, never as a silent wrong answer.
    with pytest.raises(DataError, match="have no answer: q2"):
        score_answers("short-answer", output, [short_answer_set["annotations"]])


def test_cli_exits_nonzero_on_failure(short_answer_set, llama_tokenizer, monkeypatch, capsys):
    monkeypatch.setattr(run, "build_backend", lambda config: FakeVLM(llama_tokenizer, fail_on="cat").backend())
    output = short_answer_set["root"] / "cli.jsonl"

    code = cli.main(
        [
            "eval", "--model", "unused", "--benchmark", "short-answer",
            "--questions", str(short_answer_set["questions"]), "--images", str(short_answer_set["images"]),
            "--output", str(output), "--batch-size", "2",
        ]
    )

    assert code == 1
    printed = capsys.readouterr().out
    assert f"Wrote 2 answers to {output}" in printed
    assert "FAILED: 1" in printed


def test_max_failures_stops_run(short_answer_set, llama_tokenizer):
    model = FakeVLM(llama_tokenizer, fail_on="dog")

    with pytest.raises(ModelError, match=r"stopped after 1 failed questions \(--max-failures 0\)"):
        run_evaluation(_config(short_answer_set, batch_size=1, max_failures=0), model.backend())

    assert model.batch_sizes == [1]


def test_missing_images_fail_first(short_answer_set, llama_tokenizer):
    (short_answer_set["images"] / "b.png").unlink()
    model = FakeVLM(llama_tokenizer)

    with pytest.raises(DataError, match=r"1 of 2 images are missing under .*: q2 \(b.png\)"):
        run_evaluation(_config(short_answer_set), model.backend())

    assert model.batch_sizes == []


def test_resume_answers_the_rest(short_answer_set, llama_tokenizer):
    model = FakeVLM(llama_tokenizer)
    run_evaluation(_config(short_answer_set, limit=1), model.backend())

    summary = run_evaluation(_config(short_answer_set, resume=True), model.backend())

    assert (summary.skipped, summary.written) == (1, 2)
    lines = _lines(short_answer_set["root"] / "answers.jsonl")
    assert [line["question_id"] for line in lines] == ["q1", "q2", "q3"]


def test_resume_rejects_other_settings(short_answer_set, llama_tokenizer):
    model = FakeVLM(llama_tokenizer)
    run_evaluation(_config(short_answer_set, limit=1), model.backend())

    with pytest.raises(DataError, match="cannot resume, the existing answers have template='v1'"):
        run_evaluation(_config(short_answer_set, resume=True, template="llama_2"), model.backend())


def test_resume_rejects_other_system_prompt(short_answer_set, llama_tokenizer):
    model = FakeVLM(llama_tokenizer)
    run_evaluation(_config(short_answer_set, limit=1, system_prompt=""), model.backend())

    # Without --system-prompt the v1 template's default prompt is in effect, which differs from "".
    with pytest.raises(DataError, match="cannot resume, the existing answers have system_prompt=''"):
        run_evaluation(_config(short_answer_set, resume=True), model.backend())


def test_eval_then_score_records_settings(short_answer_set, llama_tokenizer):
    run_evaluation(_config(short_answer_set), FakeVLM(llama_tokenizer).backend())

    report = score_answers("short-answer", short_answer_set["root"] / "answers.jsonl", [short_answer_set["annotations"]])

    assert report.metrics["accuracy"] == pytest.approx(200 / 3)  # q2 answered "no"
    generation = report.provenance["generation"]
    assert generation["template"] == "v1"
    assert generation["prompt_variant"] == "short-answer"
    assert generation["decoding"]["strategy"] == "greedy"
    assert generation["decoding"]["max_new_tokens"] == 16
    assert generation["system_prompt"] == get_template("v1").system_prompt
    assert 'System prompt: "A chat between' in report.format_text()


def test_textvqa_pure_variant(tmp_path, jsonl_writer, llama_tokenizer):
    (tmp_path / "t.jpg").write_bytes(b"x")
    questions = jsonl_writer(
        tmp_path / "llava_textvqa_val_v051_ocr.jsonl",
        [{"question_id": "003a", "image": "t.jpg", "text": f"What brand?\nReference OCR token: DAKOTA\n{SUFFIX}"}],
    )
    config = EvalConfig(
        model=tmp_path, benchmark="textvqa", questions=questions, images=tmp_path, output=tmp_path / "a.jsonl",
        prompt_variant="pure",
    )

    run_evaluation(config, FakeVLM(llama_tokenizer).backend())

    (line,) = _lines(tmp_path / "a.jsonl")
    assert line["prompt"] == f"What brand?\n{SUFFIX}"
    assert line["prompt_variant"] == "pure"


def test_invalid_batch_size_rejected(short_answer_set, llama_tokenizer):
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        run_evaluation(_config(short_answer_set, batch_size=0), FakeVLM(llama_tokenizer).backend())


def test_mmbench_rotations_round_trip(tmp_path, llama_tokenizer):
    import base64
    import csv

    tsv = tmp_path / "mmbench.tsv"
    with tsv.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["index", "question", "A", "B", "answer", "category", "image"])
        image = base64.b64encode(b"png").decode()
        writer.writerow([1, "Which animal barks?", "dog", "cat", "A", "animal", image])
        writer.writerow([2, "Which animal meows?", "dog", "cat", "B", "animal", image])
    config = EvalConfig(model=tmp_path, benchmark="mmbench", questions=tsv, output=tmp_path / "a.jsonl")

    # The fake answers "yes" to any prompt that mentions a dog, which no option letter matches.
    summary = run_evaluation(config, FakeVLM(llama_tokenizer).backend())
    lines = _lines(tmp_path / "a.jsonl")

    assert summary.written == 4  # two questions, two rotations each
    assert [(line["question_id"], line["round_id"]) for line in lines] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert lines[1]["options"] == ["cat", "dog"]
    assert lines[1]["prompt"].endswith("A. cat\nB. dog\nAnswer with the option's letter from the given choices directly.")
    report = score_answers("mmbench", tmp_path / "a.jsonl", [tsv])
    assert report.metrics["circular_accuracy"] == 0.0
    assert report.counts["unparseable"] == 4

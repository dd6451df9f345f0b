"""The demo task folder: file formats, content, determinism and reuse."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from alignkd.config import ConfigError
from alignkd.constants import IMAGE_PLACEHOLDER_TEXT
from alignkd.demo import build as build_module
from alignkd.demo.build import DemoTaskPaths, build_demo_task
from alignkd.demo.questions import QUESTION_KINDS
from alignkd.errors import DataError
from alignkd.eval.prompts import SHORT_ANSWER_SUFFIX, apply_suffix

SMALL = {"seed": 3, "num_train": 40, "num_test": 15}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> DemoTaskPaths:
    return build_demo_task(tmp_path_factory.mktemp("demo") / "task", **SMALL)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _folder_bytes(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_train_json_is_llava(task):
    samples = json.loads(task.train_json.read_text(encoding="utf-8"))

    assert len(samples) == SMALL["num_train"]
    assert len({sample["id"] for sample in samples}) == len(samples)
    for sample in samples:
        assert set(sample) == {"id", "image", "conversations"}
        assert (task.image_folder / sample["image"]).is_file()

        human, gpt = sample["conversations"]
        assert human["from"] == "human"
        assert human["value"].startswith(IMAGE_PLACEHOLDER_TEXT + "\n")
        assert human["value"].count(IMAGE_PLACEHOLDER_TEXT) == 1
        assert gpt["from"] == "gpt"
        assert len(gpt["value"].split()) == 1


def test_eval_files_are_llava(task):
    questions = _read_jsonl(task.test_questions)
    answers = _read_jsonl(task.test_answers)

    assert len(questions) == SMALL["num_test"]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers]
    for question, answer in zip(questions, answers):
        assert set(question) == {"question_id", "image", "text", "category"}
        assert set(answer) == {"question_id", "answer", "category"}
        assert question["category"] == answer["category"]
        assert question["category"] in QUESTION_KINDS
        assert IMAGE_PLACEHOLDER_TEXT not in question["text"]
        assert (task.image_folder / question["image"]).is_file()


def test_train_and_test_prompts_match(task):
    # The evaluation adds the short-answer line to each question unless it is already there,
    # so test prompts only match training prompts if both files carry it.
    train_prompts = {
        sample["conversations"][0]["value"].removeprefix(IMAGE_PLACEHOLDER_TEXT + "\n")
        for sample in json.loads(task.train_json.read_text(encoding="utf-8"))
    }
    for question in _read_jsonl(task.test_questions):
        assert apply_suffix(question["text"], SHORT_ANSWER_SUFFIX) == question["text"]
    for prompt in train_prompts:
        assert prompt.endswith("?\n" + SHORT_ANSWER_SUFFIX)


def test_suffix_can_be_left_out(tmp_path):
    paths = build_demo_task(tmp_path / "task", num_train=5, num_test=5, short_answer_suffix=False)

    for question in _read_jsonl(paths.test_questions):
        assert SHORT_ANSWER_SUFFIX not in question["text"]
        assert question["text"].endswith("?")


def test_answers_agree_with_scenes(task):
    # Recompute "count" and "exists" answers from the recorded digits, apart from the builder.
    digits_by_image = {record["image"]: record["digits"] for record in _read_jsonl(task.scenes)}
    checked = 0
    for question, answer in zip(_read_jsonl(task.test_questions), _read_jsonl(task.test_answers)):
        present = [digit for row in digits_by_image[question["image"]] for digit in row if digit is not None]
        if question["category"] == "count":
            assert answer["answer"] == str(len(present))
            checked += 1
        if question["category"] == "exists":
            asked = int(re.search(r"\d", question["text"]).group())
            assert answer["answer"] == ("yes" if asked in present else "no")
            checked += 1
    assert checked == 6


def test_images_show_recorded_scans(task):
    scans = load_digits().images
    scale, cell = 2, 16
    margin = (cell - 8 * scale) // 2

    for record in _read_jsonl(task.scenes)[:10]:
        pixels = np.asarray(Image.open(task.image_folder / record["image"]))
        assert pixels.shape == (2 * cell, 2 * cell)
        for r, row in enumerate(record["scans"]):
            for c, scan in enumerate(row):
                block = pixels[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
                if scan is None:
                    assert block.max() == 0
                    continue
                digit = block[margin : margin + 8 * scale : scale, margin : margin + 8 * scale : scale]
                np.testing.assert_array_equal(digit, np.rint(scans[scan] * 255 / 16).astype(np.uint8))


def test_train_test_scans_disjoint(task):
    used = {"train": set(), "test": set()}
    for record in _read_jsonl(task.scenes):
        used[record["split"]].update(scan for row in record["scans"] for scan in row if scan is not None)

    assert used["train"] and used["test"]
    assert not used["train"] & used["test"]


def test_manifest_counts(task):
    manifest = task.read_manifest()

    assert manifest["parameters"]["seed"] == SMALL["seed"]
    assert manifest["counts"]["train"]["questions"] == SMALL["num_train"]
    assert sum(manifest["counts"]["train"]["per_kind"].values()) == SMALL["num_train"]
    assert manifest["counts"]["test"]["per_kind"] == {name: 3 for name in QUESTION_KINDS}
    assert manifest["counts"]["train"]["scans"] + manifest["counts"]["test"]["scans"] == len(load_digits().target)
    assert len(list(task.images_dir.iterdir())) == (
        manifest["counts"]["train"]["scenes"] + manifest["counts"]["test"]["scenes"]
    )


def test_same_seed_byte_identical(task, tmp_path):
    again = build_demo_task(tmp_path / "again", **SMALL)

    assert _folder_bytes(again.root) == _folder_bytes(task.root)


def test_other_seed_differs(task, tmp_path):
    other = build_demo_task(tmp_path / "other", **{**SMALL, "seed": 4})

    assert other.train_json.read_bytes() != task.train_json.read_bytes()


def test_test_split_ignores_num_train(task, tmp_path):
    larger = build_demo_task(tmp_path / "larger", **{**SMALL, "num_train": 70})

    assert larger.test_questions.read_bytes() == task.test_questions.read_bytes()
    assert larger.test_answers.read_bytes() == task.test_answers.read_bytes()


def test_reuse_when_parameters_match(tmp_path, monkeypatch):
    paths = build_demo_task(tmp_path / "task", **SMALL)

    def fail(*args, **kwargs):
        raise AssertionError("the folder should have been reused")

    monkeypatch.setattr(build_module, "_write_task", fail)
    assert build_demo_task(tmp_path / "task", **SMALL) == paths


def test_rebuild_on_changed_parameter(tmp_path):
    first = build_demo_task(tmp_path / "task", **SMALL)
    old_train = first.train_json.read_bytes()

    second = build_demo_task(tmp_path / "task", **{**SMALL, "seed": 9})

    assert second.read_manifest()["parameters"]["seed"] == 9
    assert second.train_json.read_bytes() != old_train
    assert not list(tmp_path.glob(".task.*"))


def test_rebuild_on_changed_file(tmp_path):
    paths = build_demo_task(tmp_path / "task", **SMALL)
    image = sorted(paths.images_dir.iterdir())[0]
    original = image.read_bytes()
    image.write_bytes(b"not a png")

    build_demo_task(tmp_path / "task", **SMALL)

    assert image.read_bytes() == original


def test_rejects_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")

    with pytest.raises(DataError, match="not empty"):
        build_demo_task(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_unknown_parameter_raises(tmp_path):
    with pytest.raises(ConfigError, match="num_trian"):
        build_demo_task(tmp_path / "task", num_trian=10)


@pytest.mark.parametrize(
    "override, key",
    [
        ({"num_train": 0}, "num_train"),
        ({"png_compress_level": 10}, "png_compress_level"),
        ({"image_mode": "CMYK"}, "image_mode"),
        ({"fill_probability": 1.5}, "fill_probability"),
        ({"kind_weights": {"colour": 1.0}}, "colour"),
    ],
)
def test_invalid_parameter_names_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        build_demo_task(tmp_path / "task", **override)
    assert not (tmp_path / "task").exists()


def test_unaskable_kind_raises(tmp_path):
    with pytest.raises(ConfigError, match="kind_weights.where"):
        build_demo_task(tmp_path / "task", num_train=5, num_test=5, fill_probability=0.0)


def test_rgb_mode_and_larger_canvas(tmp_path):
    paths = build_demo_task(
        tmp_path / "task",
        num_train=10,
        num_test=5,
        image_mode="RGB",
        rows=3,
        cols=3,
        cell_size=24,
        digit_scale=3,
    )

    record = _read_jsonl(paths.scenes)[0]
    image = Image.open(paths.image_folder / record["image"])
    assert image.mode == "RGB"
    assert image.size == (72, 72)
    assert len(record["digits"]) == 3

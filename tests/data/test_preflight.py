"""The pre-flight check: problem counts, the error policy, thresholds and length limits."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import conversation
from PIL import Image

from alignkd.data.config import DataConfig
from alignkd.data.conversation import parse_sample
from alignkd.data.preflight import NOTE_PLACEHOLDER_ADDED, NOTE_TRUNCATED_ACCEPTED, check_data
from alignkd.data.problems import ProblemKind
from alignkd.data.templates import get_template
from alignkd.data.tokenization import ConversationEncoder
from alignkd.errors import DataError

VISION_TOKENS = 9


def config_for(path, image_folder=None, **overrides) -> DataConfig:
    config = DataConfig(path=path, image_folder=image_folder, **overrides)
    config.validate()
    return config


def check(tokenizer, path, image_folder=None, **overrides):
    return check_data(config_for(path, image_folder, **overrides), tokenizer, VISION_TOKENS, progress=False)


def text_length(tokenizer, record, template="v1") -> int:
    encoder = ConversationEncoder(tokenizer, get_template(template))
    return len(encoder.encode_one(parse_sample(record, row=0)).input_ids)


@pytest.fixture
def missing_image_data(write_data):
    return write_data(
        [
            conversation("<image>\nWhat colour?", "Red.", image="red.png", sample_id="sa_1"),
            conversation("<image>\nWhat is it?", "A dog.", image="sam/does_not_exist.jpg", sample_id="sa_2"),
            conversation("<image>\nWhat colour?", "Blue.", image="blue.jpg", sample_id="sa_3"),
        ]
    )


def test_missing_image_listed(llama_tokenizer, missing_image_data, image_folder):
    report = check(llama_tokenizer, missing_image_data, image_folder).report

    assert report.problem_counts == {ProblemKind.IMAGE_MISSING: 1}
    assert report.error_counts == {ProblemKind.IMAGE_MISSING: 1}
    assert report.has_errors
    (example,) = report.examples[ProblemKind.IMAGE_MISSING]
    assert example.startswith("sample 'sa_2' (item 1 of data.json): image file not found")
    assert "sam/does_not_exist.jpg" in example


def test_missing_image_skipped_with_count(llama_tokenizer, missing_image_data, image_folder):
    result = check(llama_tokenizer, missing_image_data, image_folder, on_error="skip", max_skip_fraction=0.5)

    assert not result.report.has_errors
    assert result.report.removed_counts == {ProblemKind.IMAGE_MISSING: 1}
    assert result.report.kept_samples == 2
    assert result.rows.tolist() == [0, 2]


def test_skip_threshold_stops_run(llama_tokenizer, missing_image_data, image_folder):
    report = check(llama_tokenizer, missing_image_data, image_folder, on_error="skip", max_skip_fraction=0.1).report

    assert report.has_errors
    assert not report.error_counts
    (reason,) = report.threshold_errors
    assert "1 of 3 samples (33.3%) have problems, above max_skip_fraction 10.0%" in reason


def test_every_kind_counted(llama_tokenizer, write_data, image_folder):
    (image_folder / "empty.jpg").write_bytes(b"")
    (image_folder / "junk.png").write_bytes(b"not an image")
    records = [
        conversation("<image>\nOk?", "Yes.", image="red.png", sample_id="good"),
        ["not", "a", "sample"],
        conversation("Q1", "A1", "Q2", sample_id="trailing_human"),
        conversation("<image>\n<image>\nTwo?", "No.", image="red.png", sample_id="two_placeholders"),
        conversation("Q", "", sample_id="empty_answer"),
        conversation("Only a question", sample_id="no_answer"),
        conversation("<image>\nQ", "A", image="missing.png", sample_id="missing"),
        conversation("<image>\nQ", "A", image="empty.jpg", sample_id="empty_file"),
        conversation("<image>\nQ", "A", image="junk.png", sample_id="junk_file"),
    ]

    report = check(llama_tokenizer, write_data(records), image_folder).report

    assert report.problem_counts == {
        ProblemKind.INVALID_RECORD: 1,
        ProblemKind.CONVERSATION_STRUCTURE: 1,
        ProblemKind.IMAGE_PLACEHOLDER: 1,
        ProblemKind.EMPTY_ANSWER: 1,
        ProblemKind.NO_SUPERVISED_TOKENS: 1,
        ProblemKind.IMAGE_MISSING: 1,
        ProblemKind.IMAGE_EMPTY: 1,
        ProblemKind.IMAGE_CORRUPT: 1,
    }
    assert report.kept_samples == 1
    assert report.examples[ProblemKind.INVALID_RECORD] == [
        "sample at item 1 of data.json: a sample must be a JSON object, got list"
    ]
    assert report.examples[ProblemKind.NO_SUPERVISED_TOKENS][0].startswith("sample 'no_answer'")


def test_template_rules_counted(llama_tokenizer, write_data, image_folder):
    records = [
        conversation("<image>\nQ1", "A1", "Q2", "A2", image="red.png", sample_id="multi_turn"),
        conversation("Q", "A", sample_id="text_only"),
        conversation("Describe.", "<image> a cat", image="red.png", sample_id="placeholder_in_gpt"),
        conversation("<image>", "A red square.", image="red.png", sample_id="caption"),
    ]

    report = check(llama_tokenizer, write_data(records), image_folder, template="plain").report

    assert report.problem_counts == {ProblemKind.TEMPLATE_RULE: 2, ProblemKind.IMAGE_PLACEHOLDER: 1}
    examples = report.examples[ProblemKind.TEMPLATE_RULE]
    assert examples[0].startswith("sample 'multi_turn' (item 0 of data.json): template 'plain' needs exactly one")
    assert examples[1].startswith("sample 'text_only' (item 1 of data.json): template 'plain' needs an image")


def test_examples_limited(llama_tokenizer, write_data):
    records = [conversation("Q", "", sample_id=f"empty_{index}") for index in range(4)]

    report = check(llama_tokenizer, write_data(records), report_examples=2).report

    assert report.problem_counts[ProblemKind.EMPTY_ANSWER] == 4
    assert [example.split(" ")[1] for example in report.examples[ProblemKind.EMPTY_ANSWER]] == [
        "'empty_0'",
        "'empty_1'",
    ]


def test_lengths_count_vision_tokens(llama_tokenizer, write_data, image_folder):
    image_record = conversation("<image>\nWhat colour?", "Red.", image="red.png")
    text_record = conversation("Hi", "Hello")

    result = check(llama_tokenizer, write_data([image_record, text_record]), image_folder)

    expected = [
        text_length(llama_tokenizer, image_record) - 1 + VISION_TOKENS,
        text_length(llama_tokenizer, text_record),
    ]
    assert result.lengths.tolist() == expected
    assert result.has_image.tolist() == [True, False]
    assert result.report.image_samples == 1
    assert result.report.text_samples == 1
    assert result.report.length_histogram.max_length == max(expected)


def test_over_length_removed_not_truncated(llama_tokenizer, write_data, image_folder):
    # The image sits at the end of a long question, so cutting at max_length would cut the image.
    long_question = "the quick brown fox jumps over the lazy dog " * 4 + "<image>"
    records = [
        conversation(long_question, "A fox.", image="red.png", sample_id="long"),
        conversation("<image>\nColour?", "Red.", image="red.png", sample_id="short"),
    ]
    long_length = text_length(llama_tokenizer, records[0]) - 1 + VISION_TOKENS
    short_length = text_length(llama_tokenizer, records[1]) - 1 + VISION_TOKENS
    limit = (long_length + short_length) // 2

    result = check(llama_tokenizer, write_data(records), image_folder, max_length=limit, max_over_length_fraction=0.5)

    assert result.report.removed_counts == {ProblemKind.OVER_LENGTH: 1}
    assert result.rows.tolist() == [1]
    (example,) = result.report.examples[ProblemKind.OVER_LENGTH]
    assert f"has {long_length} tokens including {VISION_TOKENS} vision tokens, above max_length {limit}" in example
    assert not result.report.has_errors


def test_sample_at_limit_kept(llama_tokenizer, write_data, image_folder):
    record = conversation("<image>\nColour?", "Red.", image="red.png")
    length = text_length(llama_tokenizer, record) - 1 + VISION_TOKENS

    result = check(llama_tokenizer, write_data([record]), image_folder, max_length=length)

    assert result.rows.tolist() == [0]
    assert result.lengths.tolist() == [length]


def test_over_length_error_policy(llama_tokenizer, write_data, image_folder):
    record = conversation("<image>\nColour?", "Red.", image="red.png", sample_id="x")

    report = check(
        llama_tokenizer, write_data([record]), image_folder, max_length=VISION_TOKENS + 1, over_length="error"
    ).report

    assert report.error_counts == {ProblemKind.OVER_LENGTH: 1}
    assert "sample 'x'" in report.summary()


def test_over_length_fraction_threshold(llama_tokenizer, write_data):
    records = [conversation("the quick brown fox jumps over the lazy dog", "yes"), conversation("Hi", "no")]
    short = text_length(llama_tokenizer, records[1])

    report = check(llama_tokenizer, write_data(records), max_length=short).report

    assert report.removed_counts == {ProblemKind.OVER_LENGTH: 1}
    (reason,) = report.threshold_errors
    assert "1 of 2 samples (50.0%) are longer than max_length" in reason


def test_prompt_over_limit_never_kept(llama_tokenizer, write_data):
    # The prompt alone is longer than the limit: truncation would leave no answer tokens.
    prompt = "the quick brown fox jumps over the lazy dog " * 3
    records = [conversation(prompt, "yes", sample_id="long_prompt"), conversation("Hi", "no", sample_id="short")]
    limit = text_length(llama_tokenizer, records[1])

    result = check(llama_tokenizer, write_data(records), max_length=limit, max_over_length_fraction=0.5)

    assert result.rows.tolist() == [1]
    assert result.report.removed_counts == {ProblemKind.OVER_LENGTH: 1}


def test_limit_below_vision_tokens(llama_tokenizer, write_data, image_folder):
    records = [conversation("<image>\nColour?", "Red.", image="red.png"), conversation("Hi", "Hello")]

    report = check(
        llama_tokenizer, write_data(records), image_folder, max_length=VISION_TOKENS, max_over_length_fraction=1.0
    ).report

    assert report.has_errors
    assert any(
        f"leaves no room for text next to the {VISION_TOKENS} vision tokens" in reason
        for reason in report.threshold_errors
    )


def test_nothing_left_is_error(llama_tokenizer, write_data):
    report = check(llama_tokenizer, write_data([conversation("Q", "")]), on_error="skip", max_skip_fraction=1.0).report

    assert report.kept_samples == 0
    assert report.threshold_errors == ["no sample is left for training after the check"]


def test_empty_data_file_is_error(llama_tokenizer, write_data):
    report = check(llama_tokenizer, write_data([])).report

    assert report.has_errors
    assert "contains no samples" in report.threshold_errors[0]


def test_image_check_depths(llama_tokenizer, write_data, image_folder):
    values = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(values).save(image_folder / "noise.jpg", quality=95)
    data = (image_folder / "noise.jpg").read_bytes()
    (image_folder / "cut.jpg").write_bytes(data[:-100])
    path = write_data([conversation("<image>\nQ", "A", image="cut.jpg", sample_id="cut")])

    for depth in ("exists", "header"):
        assert not check(llama_tokenizer, path, image_folder, image_check=depth).report.problem_counts
    decoded = check(llama_tokenizer, path, image_folder, image_check="decode").report
    accepted = check(llama_tokenizer, path, image_folder, image_check="decode", accept_truncated_images=True).report

    assert decoded.problem_counts == {ProblemKind.IMAGE_TRUNCATED: 1}
    assert not accepted.problem_counts
    assert accepted.notes == {NOTE_TRUNCATED_ACCEPTED: 1}


def test_oversized_image_counted(llama_tokenizer, write_data, image_folder):
    path = write_data([conversation("<image>\nQ", "A", image="red.png")])

    report = check(llama_tokenizer, path, image_folder, max_image_pixels=12 * 6 - 1).report

    assert report.problem_counts == {ProblemKind.IMAGE_OVERSIZED: 1}


def test_placeholder_added_noted(llama_tokenizer, write_data, image_folder):
    path = write_data([conversation("What colour?", "Red.", image="red.png")])

    report = check(llama_tokenizer, path, image_folder).report

    assert report.notes == {NOTE_PLACEHOLDER_ADDED: 1}
    assert not report.problem_counts


def test_jsonl_checked_like_json(llama_tokenizer, write_data, image_folder, missing_image_data):
    records_path = write_data(
        [
            conversation("<image>\nWhat colour?", "Red.", image="red.png", sample_id="sa_1"),
            conversation("<image>\nWhat is it?", "A dog.", image="sam/does_not_exist.jpg", sample_id="sa_2"),
        ],
        "data.jsonl",
    )

    report = check(llama_tokenizer, records_path, image_folder).report

    assert report.examples[ProblemKind.IMAGE_MISSING][0].startswith("sample 'sa_2' (line 2 of data.jsonl)")


def test_images_relative_to_data_file(llama_tokenizer, tmp_path, write_data):
    Image.new("RGB", (4, 4)).save(tmp_path / "local.png")
    path = write_data([conversation("<image>\nQ", "A", image="local.png")])

    assert check(llama_tokenizer, path).report.kept_samples == 1


def test_missing_image_folder_raises(llama_tokenizer, write_data, tmp_path):
    path = write_data([conversation("Q", "A")])

    with pytest.raises(DataError, match="image folder not found"):
        check(llama_tokenizer, path, tmp_path / "absent")


def test_batches_match_single_samples(gpt2_tokenizer, write_data, monkeypatch):
    # Smaller batches than the data exercise the batch boundaries.
    monkeypatch.setattr("alignkd.data.preflight._ENCODE_BATCH_SIZE", 2)
    records = [conversation("Hi " * index + "there", "Hello") for index in range(5)]

    result = check(gpt2_tokenizer, write_data(records))

    assert result.lengths.tolist() == [text_length(gpt2_tokenizer, record) for record in records]


def test_report_records_versions(llama_tokenizer, write_data):
    import tokenizers

    report = check(llama_tokenizer, write_data([conversation("Hi", "Hello")])).report

    assert report.versions["tokenizers"] == tokenizers.__version__
    assert f"tokenizers {tokenizers.__version__}" in report.format()

"""prepare_dataset, items, runtime image failures and the end-to-end batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import PROCESSOR_SIDE, conversation
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.data.config import DataConfig
from alignkd.data.dataset import prepare_dataset, same_processing
from alignkd.data.problems import ProblemKind
from alignkd.data.sampler import GroupedSampler
from alignkd.errors import DataError

VISION_TOKENS = 4


@pytest.fixture
def truncated_image(image_folder):
    """cut.jpg: a JPEG whose last 100 bytes are missing. Its header is intact."""
    values = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(values).save(image_folder / "noise.jpg", quality=95)
    (image_folder / "cut.jpg").write_bytes((image_folder / "noise.jpg").read_bytes()[:-100])
    return "cut.jpg"


def prepare(tokenizer, path, image_folder, processors, **overrides):
    config = DataConfig(path=path, image_folder=image_folder, **overrides)
    return prepare_dataset(config, tokenizer, processors, VISION_TOKENS, progress=False)


MIXED = [
    conversation("<image>\nWhat colour?", "Red.", image="red.png", sample_id="red"),
    conversation("Hi", "Hello", sample_id="text"),
    conversation("<image>\nWhat colour?", "Blue.", image="blue.jpg", sample_id="blue"),
]


def test_items_follow_contract(llama_tokenizer, write_data, image_folder, image_processor):
    dataset, report = prepare(llama_tokenizer, write_data(MIXED), image_folder, {"student": image_processor})

    assert len(dataset) == 3
    assert report.kept_samples == 3
    image_item, text_item = dataset[0], dataset[1]
    assert image_item["pixel_values"].shape == (3, PROCESSOR_SIDE, PROCESSOR_SIDE)
    assert (image_item["input_ids"] == IMAGE_PLACEHOLDER_ID).sum() == 1
    assert image_item["labels"].shape == image_item["input_ids"].shape
    assert image_item["sample_index"] == 0
    assert text_item["pixel_values"] is None
    assert not (text_item["input_ids"] == IMAGE_PLACEHOLDER_ID).any()
    assert "teacher_pixel_values" not in image_item


def test_lengths_and_modalities(llama_tokenizer, write_data, image_folder, image_processor):
    dataset, _ = prepare(llama_tokenizer, write_data(MIXED), image_folder, {"student": image_processor})

    assert dataset.has_image.tolist() == [True, False, True]
    for position in range(3):
        item = dataset[position]
        expected = len(item["input_ids"]) + (VISION_TOKENS - 1 if dataset.has_image[position] else 0)
        assert dataset.lengths[position] == expected
    signs = [np.sign(value) for value in dataset.modality_lengths]
    assert signs == [1, -1, 1]


def test_error_mode_stops_before_training(llama_tokenizer, write_data, image_folder, image_processor):
    records = MIXED + [conversation("<image>\nQ", "A", image="sam/does_not_exist.jpg", sample_id="sam_404")]

    with pytest.raises(DataError) as raised:
        prepare(llama_tokenizer, write_data(records), image_folder, {"student": image_processor})

    message = str(raised.value)
    assert "image_missing: 1 sample" in message
    assert "sample 'sam_404' (item 3 of data.json)" in message
    assert "data.on_error: skip" in message


def test_skip_mode_removes_sample(llama_tokenizer, write_data, image_folder, image_processor):
    records = MIXED + [conversation("<image>\nQ", "A", image="sam/does_not_exist.jpg", sample_id="sam_404")]

    dataset, report = prepare(
        llama_tokenizer,
        write_data(records),
        image_folder,
        {"student": image_processor},
        on_error="skip",
        max_skip_fraction=0.5,
    )

    assert len(dataset) == 3
    assert report.removed_counts == {ProblemKind.IMAGE_MISSING: 1}
    assert [dataset[position]["sample_index"] for position in range(3)] == [0, 1, 2]


def test_runtime_failure_substitutes_next(llama_tokenizer, write_data, image_folder, image_processor, truncated_image):
    records = [conversation("<image>\nQ", "A", image=truncated_image, sample_id="cut")] + MIXED

    dataset, report = prepare(
        llama_tokenizer,
        write_data(records),
        image_folder,
        {"student": image_processor},
        on_error="skip",
        image_check="header",
        max_skip_fraction=0.5,
    )

    assert not report.problem_counts
    assert dataset[0]["sample_index"] == 1
    assert dataset[0]["sample_index"] == 1
    # The sample counts once, however often it is requested.
    assert dataset.runtime_problem_counts() == {"image_truncated": 1}


def test_runtime_failure_error_mode(llama_tokenizer, write_data, image_folder, image_processor, truncated_image):
    records = MIXED + [conversation("<image>\nQ", "A", image=truncated_image, sample_id="cut")]
    dataset, _ = prepare(llama_tokenizer, write_data(records), image_folder, {"student": image_processor})

    with pytest.raises(DataError) as raised:
        dataset[3]

    assert "sample 'cut' (item 3 of data.json)" in str(raised.value)
    assert "cut.jpg" in str(raised.value)
    assert dataset.runtime_problem_counts() == {"image_truncated": 1}


def test_runtime_threshold_stops_run(llama_tokenizer, write_data, image_folder, image_processor, truncated_image):
    records = [conversation("<image>\nQ", "A", image=truncated_image, sample_id=f"cut_{index}") for index in range(2)]
    dataset, _ = prepare(
        llama_tokenizer,
        write_data(records + MIXED),
        image_folder,
        {"student": image_processor},
        on_error="skip",
        max_skip_fraction=0.3,
    )

    dataset[1]
    with pytest.raises(DataError, match=r"2 samples were skipped in all \(40.0%\), above max_skip_fraction 30.0%"):
        dataset[0]


def test_runtime_truncated_accepted_counted(
    llama_tokenizer, write_data, image_folder, image_processor, truncated_image
):
    records = [conversation("<image>\nQ", "A", image=truncated_image)]
    dataset, _ = prepare(
        llama_tokenizer, write_data(records), image_folder, {"student": image_processor}, accept_truncated_images=True
    )

    assert dataset[0]["pixel_values"].shape == (3, PROCESSOR_SIDE, PROCESSOR_SIDE)
    assert dataset.runtime_problem_counts() == {"truncated_image_accepted": 1}


def test_worker_counts_reach_main_process(llama_tokenizer, write_data, image_folder, image_processor, truncated_image):
    records = MIXED + [conversation("<image>\nQ", "A", image=truncated_image)] * 2
    dataset, _ = prepare(
        llama_tokenizer,
        write_data(records),
        image_folder,
        {"student": image_processor},
        on_error="skip",
        max_skip_fraction=0.5,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=2, collate_fn=dataset.collator(), multiprocessing_context="fork"
    )

    rows = [int(batch["sample_index"]) for batch in loader]

    # Rows 3 and 4 fail; each is replaced by the next kept sample, wrapping to row 0.
    assert rows == [0, 1, 2, 0, 0]
    assert dataset.runtime_problem_counts() == {"image_truncated": 2}


def test_teacher_pixels_when_processors_differ(llama_tokenizer, write_data, image_folder, image_processor):
    teacher = CLIPImageProcessorPil(size={"shortest_edge": 12}, crop_size={"height": 12, "width": 12})

    dataset, _ = prepare(
        llama_tokenizer, write_data(MIXED), image_folder, {"student": image_processor, "teacher": teacher}
    )
    batch = dataset.collator()([dataset[0], dataset[1]])

    assert dataset[0]["teacher_pixel_values"].shape == (3, 12, 12)
    assert batch["teacher_pixel_values"].shape == (1, 3, 12, 12)
    assert batch["pixel_values"].shape == (1, 3, PROCESSOR_SIDE, PROCESSOR_SIDE)


def test_same_teacher_processor_shared(llama_tokenizer, write_data, image_folder, image_processor):
    twin = CLIPImageProcessorPil(**image_processor.to_dict())

    dataset, _ = prepare(
        llama_tokenizer, write_data(MIXED), image_folder, {"student": image_processor, "teacher": twin}
    )

    assert same_processing(image_processor, twin)
    assert "teacher_pixel_values" not in dataset[0]
    assert "teacher_pixel_values" not in dataset.collator()([dataset[0]])


def test_mixed_batch_end_to_end(gpt2_tokenizer, write_data, image_folder, image_processor):
    dataset, _ = prepare(gpt2_tokenizer, write_data(MIXED), image_folder, {"student": image_processor})
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=dataset.collator())

    (batch,) = list(loader)

    assert batch["image_mask"].tolist() == [True, False, True]
    assert batch["pixel_values"].shape == (2, 3, PROCESSOR_SIDE, PROCESSOR_SIDE)
    assert (batch["input_ids"] == IMAGE_PLACEHOLDER_ID).sum(dim=1).tolist() == [1, 0, 1]
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(dataset[position]["input_ids"]) for position in range(3)]
    assert (batch["labels"] != IGNORE_INDEX).sum(dim=1).gt(0).all()
    assert batch["sample_index"].tolist() == [0, 1, 2]


def test_sampler_follows_config(llama_tokenizer, write_data, image_folder, image_processor):
    dataset, _ = prepare(llama_tokenizer, write_data(MIXED), image_folder, {"student": image_processor})
    plain, _ = prepare(llama_tokenizer, write_data(MIXED), image_folder, {"student": image_processor}, group_by="none")

    sampler = dataset.sampler(batch_size=1, world_size=1, seed=0)

    assert isinstance(sampler, GroupedSampler)
    assert sorted(sampler) == [0, 1, 2]
    assert plain.sampler(batch_size=1) is None


def test_changed_data_detected(llama_tokenizer, write_data, image_folder, image_processor):
    path = write_data(MIXED, "data.jsonl")
    dataset, _ = prepare(llama_tokenizer, path, image_folder, {"student": image_processor})

    # The new answer has the same number of characters, so the line offsets stay valid.
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"Hello"', '"yes 3"')
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError, match="changed after the check"):
        dataset[1]


def test_missing_student_processor(llama_tokenizer, write_data, image_folder, image_processor):
    with pytest.raises(ValueError, match="'student'"):
        prepare(llama_tokenizer, write_data(MIXED), image_folder, {"teacher": image_processor})

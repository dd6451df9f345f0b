"""The data report: histogram bins, error status and the printed text."""

from __future__ import annotations

import numpy as np

from alignkd.data.problems import ProblemKind
from alignkd.data.report import DataReport, LengthHistogram


def report(**overrides) -> DataReport:
    values = dict(
        data_path="mix.json",
        template="v1",
        total_samples=10,
        kept_samples=8,
        image_samples=5,
        text_samples=3,
        problem_counts={ProblemKind.IMAGE_MISSING: 2},
        examples={ProblemKind.IMAGE_MISSING: ["sample 'a' (item 3 of mix.json): image file not found: x.jpg"]},
        removed_counts={},
        error_counts={ProblemKind.IMAGE_MISSING: 2},
        length_histogram=LengthHistogram.from_lengths(np.array([3, 5, 9, 9])),
        max_length=8,
        num_vision_tokens=4,
        on_error="error",
    )
    values.update(overrides)
    return DataReport(**values)


def test_histogram_power_of_two_bins():
    histogram = LengthHistogram.from_lengths(np.array([3, 5, 9, 9]))

    # Bins [2, 4), [4, 8), [8, 16) count 3, 5 and the two 9s.
    assert histogram.edges == [2, 4, 8, 16]
    assert histogram.counts == [1, 1, 2]
    assert histogram.max_length == 9
    assert histogram.percentiles == {50: 5, 90: 9, 99: 9}


def test_histogram_single_length():
    histogram = LengthHistogram.from_lengths(np.array([1, 1]))

    assert histogram.edges == [1, 2]
    assert histogram.counts == [2]


def test_histogram_empty():
    assert LengthHistogram.from_lengths(np.array([], dtype=np.int64)).counts == []


def test_histogram_marks_limit():
    lines = LengthHistogram.from_lengths(np.array([3, 5, 9, 20])).format(limit=8)

    assert lines[0].endswith("#")
    assert lines[2].endswith("(partly over max_length)")
    assert lines[3].endswith("(over max_length)")


def test_errors_make_report_fail():
    failed = report()
    passed = report(error_counts={}, removed_counts={ProblemKind.IMAGE_MISSING: 2}, on_error="skip")

    assert failed.has_errors
    assert not passed.has_errors
    assert passed.removed_samples == 2


def test_threshold_error_fails_report():
    assert report(error_counts={}, threshold_errors=["too many removed"]).has_errors


def test_summary_names_first_samples():
    assert report().summary() == (
        "image_missing: 2 samples (first: sample 'a' (item 3 of mix.json): image file not found: x.jpg)"
    )


def test_format_lists_counts_and_examples():
    text = report().format()

    assert "samples: 10 in the file, 8 kept (5 with an image, 3 text-only)" in text
    assert "counting 4 vision tokens per image" in text
    assert "image_missing                    2  ERROR" in text
    assert "      sample 'a' (item 3 of mix.json): image file not found: x.jpg" in text
    assert "Sequence lengths of the 4 samples that could be tokenized, before the length limit" in text
    assert text.endswith("Result: FAILED, 2 samples with errors.")


def test_format_one_error_singular():
    text = report(error_counts={ProblemKind.IMAGE_MISSING: 1}).format()

    assert text.endswith("Result: FAILED, 1 sample with errors.")


def test_format_ok_result():
    text = report(error_counts={}, removed_counts={ProblemKind.IMAGE_MISSING: 2}, on_error="skip").format()

    assert "image_missing                    2  removed" in text
    assert text.endswith("Result: OK, 8 samples ready, 2 removed.")


def test_format_threshold_result():
    text = report(error_counts={}, threshold_errors=["2 of 10 samples (20.0%) have problems"]).format()

    assert text.endswith("Result: FAILED.\n  2 of 10 samples (20.0%) have problems")

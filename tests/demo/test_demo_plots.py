"""Report figures: files are written, and bad attention inputs raise clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from alignkd.demo.plots import _trailing_mean, plot_accuracy, plot_attention_maps, plot_loss_curves

KINDS = ["read", "count", "exists", "where", "sum"]


def _assert_png(path, expected):
    assert path == expected
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100
        assert image.height > 100


def _attention(heads, text, vision, seed=0):
    # Rows of a softmax over vision tokens plus a few text keys, cut to the vision block.
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(vision + 4), size=(heads, text))[:, :, :vision]


def test_accuracy_chart_written(tmp_path):
    accuracy = {
        "teacher": dict(zip(KINDS, [0.97, 1.0, 0.97, 0.49, 0.93])),
        "sft": dict(zip(KINDS, [0.5, 0.8, 0.6, 0.3, 0.2])),
        "paper": dict(zip(KINDS[:4], [0.6, 0.85, 0.7, 0.3])),
    }
    spread = {"sft": dict(zip(KINDS, [0.05] * 5))}

    path = plot_accuracy(accuracy, tmp_path / "report" / "accuracy.png", spread=spread)

    _assert_png(path, tmp_path / "report" / "accuracy.png")


def test_accuracy_rejects_percentages(tmp_path):
    with pytest.raises(ValueError, match="run 'sft' on kind 'read'"):
        plot_accuracy({"sft": {"read": 97.0}}, tmp_path / "accuracy.png")


def test_loss_curves_written(tmp_path):
    steps = range(0, 200, 10)
    history = {
        "sft": [(step, {"total": 2.0 / (step + 1), "ce": 2.0 / (step + 1)}) for step in steps],
        "paper": [(step, {"total": 3.0 / (step + 1), "ce": 2.0 / (step + 1), "attn": 0.1}) for step in steps],
    }
    history["paper"][3][1]["total"] = float("nan")

    path = plot_loss_curves(history, tmp_path / "loss.png", smoothing_window=5, log_scale=True)

    _assert_png(path, tmp_path / "loss.png")


def test_trailing_mean_by_hand():
    np.testing.assert_allclose(_trailing_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(_trailing_mean(np.array([1.0, np.nan, 3.0]), 2), [1.0, 1.0, 3.0])


def test_attention_maps_written(tmp_path):
    image = np.zeros((32, 32), dtype=np.uint8)
    image[4:12, 4:12] = 255
    attentions = {"teacher": _attention(4, 6, 16), "student": torch.tensor(_attention(2, 6, 8)).requires_grad_()}

    path = plot_attention_maps(image, attentions, {"teacher": (4, 4), "student": (2, 4)}, tmp_path / "attention.png")
    per_head = plot_attention_maps(
        np.stack([image] * 3, axis=-1),
        attentions,
        {"teacher": (4, 4), "student": (2, 4)},
        tmp_path / "attention_heads.png",
        per_head=True,
    )

    _assert_png(path, tmp_path / "attention.png")
    _assert_png(per_head, tmp_path / "attention_heads.png")
    with Image.open(path) as single, Image.open(per_head) as grid:
        assert grid.height > single.height


def test_attention_rejects_grid_mismatch(tmp_path):
    image = np.zeros((32, 32), dtype=np.uint8)

    with pytest.raises(ValueError, match=r"'student' has 16 vision tokens, which do not fit the 3x4 grid"):
        plot_attention_maps(image, {"student": _attention(2, 5, 16)}, (3, 4), tmp_path / "attention.png")
    assert not (tmp_path / "attention.png").exists()


def test_attention_rejects_missing_axis(tmp_path):
    image = np.zeros((32, 32), dtype=np.uint8)

    with pytest.raises(ValueError, match=r"\[heads, text, vision\]"):
        plot_attention_maps(image, {"student": _attention(2, 5, 16)[0]}, (4, 4), tmp_path / "attention.png")

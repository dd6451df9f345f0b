"""Digit pools, scene composition and rendering."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from alignkd.config import ConfigError
from alignkd.demo.scenes import (
    DigitPools,
    Scene,
    SceneLayout,
    compose_scenes,
    load_digit_pools,
    render_scene,
    split_rng,
    to_pil_image,
)


def test_pools_disjoint_and_complete():
    pools = load_digit_pools(seed=0, test_fraction=0.2)
    all_scans = np.arange(len(load_digits().target))

    assert len(np.intersect1d(pools.train_scans, pools.test_scans)) == 0
    np.testing.assert_array_equal(np.union1d(pools.train_scans, pools.test_scans), all_scans)


def test_pools_stratified_by_digit():
    pools = load_digit_pools(seed=0, test_fraction=0.2)
    labels = load_digits().target

    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test_count = np.isin(members, pools.test_scans).sum()
        assert test_count == round(0.2 * len(members)), f"digit {digit}"
    assert pools.classes == tuple(range(10))


def test_pools_follow_seed():
    first = load_digit_pools(seed=5)
    again = load_digit_pools(seed=5)
    other = load_digit_pools(seed=6)

    np.testing.assert_array_equal(first.test_scans, again.test_scans)
    assert not np.array_equal(first.test_scans, other.test_scans)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_pools_reject_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="test_fraction"):
        load_digit_pools(seed=0, test_fraction=fraction)


def _tiny_pools() -> DigitPools:
    # Two 2x2 "scans" with known intensities: scan 0 shows digit 4, scan 1 shows digit 9.
    images = np.array([[[0, 16], [8, 4]], [[16, 16], [16, 16]]], dtype=np.uint8)
    labels = np.array([4, 9])
    return DigitPools(images=images, labels=labels, train_scans=np.array([0]), test_scans=np.array([1]))


def test_render_known_pixels():
    pools = _tiny_pools()
    layout = SceneLayout(rows=1, cols=2, cell_size=6, digit_scale=2)
    scene = Scene(digits=((4, None),), scans=((0, None),))

    canvas = render_scene(scene, pools, layout)

    # 16 -> 255, 8 -> 128 (127.5 rounded to even), 4 -> 64; each scan pixel becomes a 2x2
    # block, centred in a 6-pixel cell with a 1-pixel margin.
    expected = np.zeros((6, 12), dtype=np.uint8)
    expected[1:5, 1:5] = [
        [0, 0, 255, 255],
        [0, 0, 255, 255],
        [128, 128, 64, 64],
        [128, 128, 64, 64],
    ]
    np.testing.assert_array_equal(canvas, expected)


def test_render_second_cell_offset():
    pools = _tiny_pools()
    layout = SceneLayout(rows=2, cols=2, cell_size=4, digit_scale=1)
    scene = Scene(digits=((None, None), (None, 9)), scans=((None, None), (None, 1)))

    canvas = render_scene(scene, pools, layout)

    assert canvas.shape == (8, 8)
    assert canvas[5:7, 5:7].tolist() == [[255, 255], [255, 255]]
    assert canvas.sum() == 4 * 255


def test_layout_rejects_oversized_digit():
    layout = SceneLayout(cell_size=15, digit_scale=2)
    with pytest.raises(ConfigError, match="digit_scale"):
        layout.validate(scan_shape=(8, 8))


def test_scene_needs_scans_to_render():
    scene = Scene.from_digits([[1, None], [None, 2]])
    with pytest.raises(ValueError, match="without scans"):
        render_scene(scene, _tiny_pools(), SceneLayout(cell_size=2, digit_scale=1))


@pytest.mark.parametrize("probability, filled_cells", [(0.0, 0), (1.0, 4)])
def test_compose_fill_probability_extremes(probability, filled_cells):
    pools = load_digit_pools(seed=0)
    layout = SceneLayout(fill_probability=probability)

    scenes = compose_scenes(pools, "test", layout, 20, np.random.default_rng(0))

    for scene in scenes:
        assert len(scene.present_digits()) == filled_cells


def test_compose_draws_from_split_pool():
    pools = load_digit_pools(seed=0)
    scenes = compose_scenes(pools, "test", SceneLayout(fill_probability=1.0), 50, np.random.default_rng(1))

    for scene in scenes:
        for row_scans, row_digits in zip(scene.scans, scene.digits):
            for scan, digit in zip(row_scans, row_digits):
                assert scan in pools.test_scans
                assert digit == pools.labels[scan]


def test_compose_same_seed_same_scenes():
    pools = load_digit_pools(seed=0)
    layout = SceneLayout()

    first = compose_scenes(pools, "train", layout, 30, split_rng(2, "train"))
    again = compose_scenes(pools, "train", layout, 30, split_rng(2, "train"))

    assert first == again


@pytest.mark.parametrize("mode, shape", [("L", (32, 32)), ("RGB", (32, 32, 3))])
def test_pil_image_modes(mode, shape):
    canvas = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)

    image = to_pil_image(canvas, mode)

    assert image.mode == mode
    assert np.asarray(image).shape == shape
    np.testing.assert_array_equal(np.asarray(image.convert("L")), canvas)

"""Scenes composed from scikit-learn's handwritten digit scans, and their pixels.

A scene is a grid of cells in which each cell is blank or contains one scan from
`sklearn.datasets.load_digits`: 1,797 real 8x8 scans of the digits 0 to 9 that ship with
scikit-learn, so nothing is downloaded. The scans are split by a seed into disjoint train
and test pools, so that no test scene shows a scan that a model saw in training.

Pixels are grey ink on a black background. A scan's intensities 0 to 16 map linearly to
0 to 255, and each scan is enlarged by pixel repetition and centred in its cell.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from alignkd.config import ConfigError

logger = logging.getLogger(__name__)

# Maximum pixel value of a `load_digits` scan (the scikit-learn documentation gives the range
# as integers 0..16).
SCAN_MAX_INTENSITY = 16

# Maximum value of an 8-bit pixel.
PIXEL_MAX = 255

# Fixed stream ids, so that the split and each split's scenes come from independent random
# streams: changing the number of train scenes leaves the split and the test scenes unchanged.
_STREAM_SPLIT = 0
_STREAMS_BY_SPLIT = {"train": 1, "test": 2}

ImageMode = Literal["L", "RGB"]
Split = Literal["train", "test"]


@dataclass(frozen=True)
class DigitPools:
    """All `load_digits` scans and their deterministic split into disjoint train and test pools."""

    images: np.ndarray
    """Every scan, [scans, scan_height, scan_width], uint8 intensities 0..16. Read-only."""

    labels: np.ndarray
    """The digit each scan shows, [scans], int64."""

    train_scans: np.ndarray
    """Indices into `images` that train scenes draw from, sorted ascending."""

    test_scans: np.ndarray
    """Indices into `images` that test scenes draw from, sorted ascending. No index is in both pools."""

    @property
    def classes(self) -> tuple[int, ...]:
        """The digit classes present in the data, ascending."""
        return tuple(int(label) for label in np.unique(self.labels))

    @property
    def scan_shape(self) -> tuple[int, int]:
        """Height and width of one scan in pixels."""
        return (int(self.images.shape[1]), int(self.images.shape[2]))

    def scans(self, split: Split) -> np.ndarray:
        """Return the scan indices of `split` ("train" or "test")."""
        if split == "train":
            return self.train_scans
        if split == "test":
            return self.test_scans
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")


@functools.lru_cache(maxsize=1)
def _load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    # Imported here because scikit-learn takes about half a second to import.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images).astype(np.uint8)
    labels = digits.target.astype(np.int64)

    # Every caller gets the same cached arrays, so they are made read-only.
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def digit_classes() -> tuple[int, ...]:
    """Return the digit classes of `load_digits`, ascending."""
    _, labels = _load_digit_arrays()
    return tuple(int(label) for label in np.unique(labels))


def load_digit_pools(seed: int, test_fraction: float = 0.2) -> DigitPools:
    """Load the `load_digits` scans and split them into disjoint train and test pools.

    The split is stratified: for each digit class, `round(test_fraction * n)` of its n scans
    (at least one, and at most n - 1) go to the test pool, so both pools contain every class.
    The same seed gives the same split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction: expected a number strictly between 0 and 1, got {test_fraction!r}; "
            "it is the share of each digit's scans kept for test scenes"
        )

    images, labels = _load_digit_arrays()
    rng = np.random.default_rng([seed, _STREAM_SPLIT])

    test_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        shuffled = rng.permutation(members)
        test_count = min(max(round(test_fraction * len(members)), 1), len(members) - 1)
        test_parts.append(shuffled[:test_count])

    test_scans = np.sort(np.concatenate(test_parts))
    train_scans = np.setdiff1d(np.arange(len(labels)), test_scans)
    return DigitPools(images=images, labels=labels, train_scans=train_scans, test_scans=test_scans)



@dataclass(frozen=True)
class SceneLayout:
    """The grid and pixel geometry of a scene."""

    rows: int = 2
    """Number of cell rows in the grid."""

    cols: int = 2
    """Number of cell columns in the grid."""

    cell_size: int = 16
    """Height and width of one square cell in pixels."""

    digit_scale: int = 2
    """Integer factor by which each scan is enlarged (pixel repetition) before it is centred in its cell."""

    fill_probability: float = 0.7
    """Probability that a cell contains a digit rather than staying blank."""

    @property
    def canvas_shape(self) -> tuple[int, int]:
        """Height and width of the whole image in pixels."""
        return (self.rows * self.cell_size, self.cols * self.cell_size)

    def validate(self, scan_shape: tuple[int, int] | None = None) -> None:
        """Raise ConfigError unless the layout is usable, and the scaled scans fit a cell if `scan_shape` is given."""
        for name in ("rows", "cols", "cell_size", "digit_scale"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")

        if not 0.0 <= self.fill_probability <= 1.0:
            raise ConfigError(f"fill_probability: expected a number from 0 to 1, got {self.fill_probability!r}")

        if scan_shape is not None:
            digit_height = scan_shape[0] * self.digit_scale
            digit_width = scan_shape[1] * self.digit_scale
            if digit_height > self.cell_size or digit_width > self.cell_size:
                raise ConfigError(
                    f"digit_scale: a {scan_shape[0]}x{scan_shape[1]} scan enlarged {self.digit_scale} times is "
                    f"{digit_height}x{digit_width} pixels and does not fit a {self.cell_size}-pixel cell; "
                    f"lower digit_scale or raise cell_size to at least {max(digit_height, digit_width)}"
                )


@dataclass(frozen=True)
class Scene:
    """The content of one image: for each grid cell, its digit and source scan, or None when blank."""

    digits: tuple[tuple[int | None, ...], ...]
    """Digit label of each cell, [rows][cols], with None for a blank cell."""

    scans: tuple[tuple[int | None, ...], ...] | None = None
    """Index into `DigitPools.images` of each cell's scan, [rows][cols], with None for blank cells.
    A scene built by hand without scans can be asked questions but not rendered."""

    def __post_init__(self) -> None:
        if not self.digits or not self.digits[0]:
            raise ValueError("a scene needs at least one row and one column of cells")

        width = len(self.digits[0])
        if any(len(row) != width for row in self.digits):
            raise ValueError(f"scene rows must all have {width} cells, got row lengths {[len(r) for r in self.digits]}")

        if self.scans is not None:
            shape = [len(row) for row in self.scans]
            if shape != [len(row) for row in self.digits]:
                raise ValueError("scene scans must have the same [rows][cols] shape as its digits")
            for row_digits, row_scans in zip(self.digits, self.scans):
                for digit, scan in zip(row_digits, row_scans):
                    if (digit is None) != (scan is None):
                        raise ValueError("a scene cell must have both a digit and a scan, or neither")

    @classmethod
    def from_digits(cls, digits: Sequence[Sequence[int | None]]) -> Scene:
        """Build a scene without scans from a [rows][cols] list of digits (None = blank)."""
        return cls(digits=tuple(tuple(row) for row in digits))

    @property
    def rows(self) -> int:
        return len(self.digits)

    @property
    def cols(self) -> int:
        return len(self.digits[0])

    def digit_at(self, row: int, col: int) -> int | None:
        """Return the digit in the cell at (row, col), counted from the top left, or None if blank."""
        return self.digits[row][col]

    def cells(self) -> list[tuple[int, int, int | None]]:
        """Return (row, col, digit) for every cell in row-major order."""
        return [(r, c, digit) for r, row in enumerate(self.digits) for c, digit in enumerate(row)]

    def present_digits(self) -> list[int]:
        """Return the digits of the filled cells in row-major order (with repeats)."""
        return [digit for _, _, digit in self.cells() if digit is not None]


def split_rng(seed: int, split: Split) -> np.random.Generator:
    """Return the random generator for the scenes and questions of `split` under `seed`."""
    if split not in _STREAMS_BY_SPLIT:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    return np.random.default_rng([seed, _STREAMS_BY_SPLIT[split]])


def compose_scenes(
    pools: DigitPools,
    split: Split,
    layout: SceneLayout,
    num_scenes: int,
    rng: np.random.Generator,
) -> list[Scene]:
    """Draw `num_scenes` scenes whose cells are filled, each with probability `layout.fill_probability`,
    by scans drawn uniformly with replacement from the `split` pool."""
    layout.validate(pools.scan_shape)
    pool = pools.scans(split)
    grid = (num_scenes, layout.rows, layout.cols)

    filled = rng.random(grid) < layout.fill_probability
    chosen = pool[rng.integers(0, len(pool), size=grid)]

    scenes = []
    for index in range(num_scenes):
        scans = [
            [int(chosen[index, r, c]) if filled[index, r, c] else None for c in range(layout.cols)]
            for r in range(layout.rows)
        ]
        digits = [[None if scan is None else int(pools.labels[scan]) for scan in row] for row in scans]
        scenes.append(Scene(digits=tuple(map(tuple, digits)), scans=tuple(map(tuple, scans))))
    return scenes


def _intensity_table() -> np.ndarray:
    # Lookup from scan intensity (0..16) to 8-bit grey, rounded to the nearest level.
    levels = np.arange(SCAN_MAX_INTENSITY + 1, dtype=np.float64)
    return np.rint(levels * PIXEL_MAX / SCAN_MAX_INTENSITY).astype(np.uint8)


_INTENSITY_TO_PIXEL = _intensity_table()


def render_scene(scene: Scene, pools: DigitPools, layout: SceneLayout) -> np.ndarray:
    """Draw `scene` as a grey image, [height, width] uint8, with each scan centred in its cell."""
    if scene.scans is None:
        raise ValueError("cannot render a scene built without scans; compose it with compose_scenes")
    if (scene.rows, scene.cols) != (layout.rows, layout.cols):
        raise ValueError(
            f"scene has a {scene.rows}x{scene.cols} grid but the layout is {layout.rows}x{layout.cols}; "
            "render it with the layout it was composed with"
        )

    scan_height, scan_width = pools.scan_shape
    digit_height = scan_height * layout.digit_scale
    digit_width = scan_width * layout.digit_scale
    top_margin = (layout.cell_size - digit_height) // 2
    left_margin = (layout.cell_size - digit_width) // 2

    canvas = np.zeros(layout.canvas_shape, dtype=np.uint8)
    for r, row in enumerate(scene.scans):
        for c, scan in enumerate(row):
            if scan is None:
                continue
            pixels = _INTENSITY_TO_PIXEL[pools.images[scan]]
            enlarged = pixels.repeat(layout.digit_scale, axis=0).repeat(layout.digit_scale, axis=1)
            top = r * layout.cell_size + top_margin
            left = c * layout.cell_size + left_margin
            canvas[top : top + digit_height, left : left + digit_width] = enlarged
    return canvas


def to_pil_image(canvas: np.ndarray, mode: ImageMode) -> Image.Image:
    """Wrap a [height, width] uint8 canvas as a PIL image in `mode` ("L" keeps one channel, "RGB" repeats it)."""
    if mode == "L":
        return Image.fromarray(canvas)
    if mode == "RGB":
        return Image.fromarray(np.repeat(canvas[:, :, None], 3, axis=2))
    raise ConfigError(f"image_mode: expected 'L' or 'RGB', got {mode!r}")

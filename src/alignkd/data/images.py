"""Image files: checks at three depths, decoding to RGB for every PIL mode, and preprocessing.

Checks (`check_image_file`), from cheapest to most thorough:

- "exists": one `stat`. Finds missing, empty and (with `max_bytes`) oversized files.
- "header": also opens the file and reads its header. Finds files that are not images and
  images with too many pixels.
- "decode": also decodes the pixels. Finds truncated and corrupt image data.

Decoding (`open_rgb_image`) always returns an RGB image with deterministic pixels:

- Modes with alpha (RGBA, LA, PA, RGBa, and palette or RGB/L images with a transparency
  entry) are composited onto a fixed background colour, white unless given.
- CMYK, YCbCr, LAB, HSV, palette and 1-bit images use Pillow's conversion to RGB.
- 16-bit and 32-bit integer grey (I;16*, I) are scaled from the 16-bit range to 8 bits, and
  float grey (F) is clipped to [0, 255], because Pillow's own conversion clips every value
  above 255 to white.
- Multi-frame files (GIF, TIFF) use their first frame. EXIF orientation is not applied,
  as in LLaVA and MobileVLM training.

Truncated files raise `ImageFileProblem(IMAGE_TRUNCATED)` unless `accept_truncated=True`.
Then the partially decoded image is returned and the caller counts it. Pillow offers only
a process-wide switch for partial decoding (`ImageFile.LOAD_TRUNCATED_IMAGES`), so this
module sets it only while it re-decodes that one file. A lock keeps the module's other
decodes and header reads from running while the switch is on. Code outside this module
that opens images in other threads at that moment is not covered.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from alignkd.data.problems import ProblemKind, SampleProblem

ImageCheckDepth = Literal["exists", "header", "decode"]
AspectRatio = Literal["pad", "resize"]

WHITE = (255, 255, 255)

# The largest value of 16-bit grey, which maps to 255 in 8 bits.
_MAX_UINT16 = np.iinfo(np.uint16).max
_MAX_UINT8 = np.iinfo(np.uint8).max

# Modes that Pillow converts to RGB correctly by itself.
_DIRECT_MODES = {"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
SUPPORTED_MODES = frozenset(_DIRECT_MODES | _SIXTEEN_BIT_MODES | _ALPHA_MODES | {"F"})


class ImageFileProblem(SampleProblem):
    """An image file is missing, empty, corrupt, truncated or oversized. The message names the file."""


@dataclass(frozen=True)
class ImageLimits:
    """Size limits for image files.

    Attributes:
        max_pixels: largest width x height accepted, or None for Pillow's own limit.
            Pillow always rejects images above twice `PIL.Image.MAX_IMAGE_PIXELS`.
        max_bytes: largest file size accepted, or None for no limit.
    """

    max_pixels: int | None = None
    max_bytes: int | None = None


class _DecodeLock:
    """Readers-writer lock: normal decodes share it, a partial decode holds it alone."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            while self._writing:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            while self._writing or self._readers:
                self._condition.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


_DECODE_LOCK = _DecodeLock()


def check_image_file(
    path: str | Path,
    depth: ImageCheckDepth,
    limits: ImageLimits = ImageLimits(),
    accept_truncated: bool = False,
) -> bool:
    """Check one image file to `depth` and return whether it was accepted only as a partial decode.

    Raises:
        ImageFileProblem: the file is missing, empty, not a readable image, truncated (unless
            `accept_truncated`), or above a limit.
    """
    path = Path(path)
    _check_file_stat(path, limits)
    if depth == "exists":
        return False

    if depth == "header":
        # Pillow also reads the truncation switch while parsing some headers (PNG chunks).
        with _DECODE_LOCK.shared(), _open_image(path, limits):
            return False

    _, partial = decode_image(path, limits=limits, accept_truncated=accept_truncated)
    return partial


def open_rgb_image(
    path: str | Path,
    background: tuple[int, int, int] = WHITE,
    limits: ImageLimits = ImageLimits(),
    accept_truncated: bool = False,
) -> Image.Image:
    """Decode an image file into an RGB image, handling every PIL mode deterministically.

    Raises:
        ImageFileProblem (a DataError): names the file and the problem.
    """
    image, _ = decode_image(path, background=background, limits=limits, accept_truncated=accept_truncated)
    return image


def decode_image(
    path: str | Path,
    background: tuple[int, int, int] = WHITE,
    limits: ImageLimits = ImageLimits(),
    accept_truncated: bool = False,
) -> tuple[Image.Image, bool]:
    """Decode an image file to RGB and return it with whether it was only partially decoded."""
    path = Path(path)
    _check_file_stat(path, limits)

    try:
        with _DECODE_LOCK.shared():
            return _decode_rgb(path, limits, background), False
    except ImageFileProblem as problem:
        if problem.kind is not ProblemKind.IMAGE_TRUNCATED or not accept_truncated:
            raise

    with _DECODE_LOCK.exclusive():
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return _decode_rgb(path, limits, background), True
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert a decoded image of any supported mode to RGB (rules in the module docstring).

    Raises:
        ValueError: the mode is not supported.
    """
    mode = image.mode
    if mode == "RGB" and not image.has_transparency_data:
        return image

    if mode in _ALPHA_MODES or image.has_transparency_data:
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (*background, _MAX_UINT8))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")

    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        scaled = np.rint(np.clip(values, 0, _MAX_UINT16) * _MAX_UINT8 / _MAX_UINT16).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")

    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        clipped = np.rint(np.clip(np.nan_to_num(values), 0, _MAX_UINT8)).astype(np.uint8)
        return Image.fromarray(clipped, mode="L").convert("RGB")

    if mode in _DIRECT_MODES:
        return image.convert("RGB")

    raise ValueError(f"unsupported image mode {mode!r}; supported modes: {', '.join(sorted(SUPPORTED_MODES))}")


def preprocess_image(image: Image.Image, image_processor: Any, aspect_ratio: AspectRatio = "pad") -> Any:
    """Turn an RGB image into the vision tower's input, a FloatTensor [3, H, W].

    "pad" first pads the image to a square with the processor's mean colour, centred, as
    MobileVLM does with `image_aspect_ratio: pad`. "resize" leaves the aspect ratio to the
    processor's own resizing (for CLIP: shortest edge, then centre crop).
    """
    if aspect_ratio == "pad":
        mean = getattr(image_processor, "image_mean", None)
        if mean is None:
            raise ValueError(
                f"aspect_ratio 'pad' fills with the processor's image_mean, but {type(image_processor).__name__} "
                "has none; use aspect_ratio 'resize'"
            )
        # MobileVLM truncates the mean to integers; doing the same keeps the padding identical.
        image = pad_to_square(image, tuple(int(value * _MAX_UINT8) for value in mean))
    elif aspect_ratio != "resize":
        raise ValueError(f"unknown aspect_ratio {aspect_ratio!r}; expected 'pad' or 'resize'")

    pixel_values = image_processor(image, return_tensors="pt")["pixel_values"]
    return pixel_values[0]


def pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Pad an image to a square of its longer side with `fill`, keeping the image centred."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def _check_file_stat(path: Path, limits: ImageLimits) -> None:
    try:
        status = path.stat()
    except FileNotFoundError:
        raise ImageFileProblem(ProblemKind.IMAGE_MISSING, f"image file not found: {path}") from None
    except OSError as error:
        raise ImageFileProblem(ProblemKind.IMAGE_CORRUPT, f"cannot read image file {path}: {error}") from None

    if not path.is_file():
        raise ImageFileProblem(ProblemKind.IMAGE_CORRUPT, f"image path {path} is not a regular file")
    if status.st_size == 0:
        raise ImageFileProblem(ProblemKind.IMAGE_EMPTY, f"image file {path} is empty (0 bytes)")
    if limits.max_bytes is not None and status.st_size > limits.max_bytes:
        raise ImageFileProblem(
            ProblemKind.IMAGE_OVERSIZED,
            f"image file {path} has {status.st_size} bytes, above the limit of {limits.max_bytes} (max_image_bytes)",
        )


@contextlib.contextmanager
def _open_image(path: Path, limits: ImageLimits) -> Iterator[Image.Image]:
    """Open an image file and check its header: format, size and mode."""
    # Pillow warns above PIL.Image.MAX_IMAGE_PIXELS. The warning is left alone because
    # warnings.catch_warnings is not thread-safe and the check threads open images concurrently.
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageFileProblem(ProblemKind.IMAGE_OVERSIZED, f"image file {path} is too large: {error}") from None
    except UnidentifiedImageError:
        raise ImageFileProblem(
            ProblemKind.IMAGE_CORRUPT, f"image file {path} is not in an image format that Pillow can read"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        kind = ProblemKind.IMAGE_TRUNCATED if "truncated" in str(error).lower() else ProblemKind.IMAGE_CORRUPT
        raise ImageFileProblem(kind, f"cannot open image file {path}: {error}") from None

    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageFileProblem(
                ProblemKind.IMAGE_CORRUPT, f"image file {path} has the invalid size {width}x{height}"
            )
        if limits.max_pixels is not None and width * height > limits.max_pixels:
            raise ImageFileProblem(
                ProblemKind.IMAGE_OVERSIZED,
                f"image file {path} is {width}x{height} = {width * height} pixels, above the limit of "
                f"{limits.max_pixels} (max_image_pixels)",
            )
        if image.mode not in SUPPORTED_MODES:
            raise ImageFileProblem(
                ProblemKind.IMAGE_CORRUPT,
                f"image file {path} has the unsupported mode {image.mode!r}; convert it to RGB",
            )
        yield image


def _decode_rgb(path: Path, limits: ImageLimits, background: tuple[int, int, int]) -> Image.Image:
    with _open_image(path, limits) as image:
        try:
            image.seek(0)
            image.load()
        except OSError as error:
            kind = ProblemKind.IMAGE_TRUNCATED if "truncated" in str(error).lower() else ProblemKind.IMAGE_CORRUPT
            raise ImageFileProblem(kind, f"cannot decode image file {path}: {error}") from None
        except (SyntaxError, ValueError, EOFError) as error:
            raise ImageFileProblem(ProblemKind.IMAGE_CORRUPT, f"cannot decode image file {path}: {error}") from None

        try:
            return to_rgb(image, background)
        except ValueError as error:
            raise ImageFileProblem(ProblemKind.IMAGE_CORRUPT, f"image file {path}: {error}") from None

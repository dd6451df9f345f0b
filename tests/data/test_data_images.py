"""Image decoding to RGB for every PIL mode, image file checks, and preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from data_helpers import PROCESSOR_SIDE
from PIL import Image, ImageFile

from alignkd.data.images import (
    ImageFileProblem,
    ImageLimits,
    check_image_file,
    decode_image,
    open_rgb_image,
    pad_to_square,
    preprocess_image,
)
from alignkd.data.problems import ProblemKind

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def problem_kind(call) -> ProblemKind:
    with pytest.raises(ImageFileProblem) as raised:
        call()
    return raised.value.kind


@pytest.fixture
def noisy_jpeg(tmp_path):
    """A 64x64 JPEG of random pixels, large enough that cutting its end loses image data."""
    values = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "noise.jpg"
    Image.fromarray(values).save(path, quality=95)
    return path


def test_palette_transparency_composited(tmp_path):
    # A 1-pixel-wide palette PNG: entry 0 is transparent red, entry 1 is opaque green.
    image = Image.new("P", (1, 2))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((0, 1), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)

    result = pixels(open_rgb_image(path))

    assert result.shape == (2, 1, 3)
    assert tuple(result[0, 0]) == WHITE
    assert tuple(result[1, 0]) == (0, 255, 0)


def test_rgba_composited_on_background(tmp_path):
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (255, 0, 0, 128))
    path = tmp_path / "alpha.png"
    image.save(path)

    result = pixels(open_rgb_image(path))

    assert tuple(result[0, 0]) == WHITE
    assert tuple(result[0, 1]) == (255, 0, 0)
    # 128/255 of red over white: green and blue are 255 * 127 / 255 = 127.
    assert tuple(result[0, 2]) == (255, 127, 127)


def test_alpha_background_configurable(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (2, 2), (10, 20, 30, 0)).save(path)

    assert tuple(pixels(open_rgb_image(path, background=BLACK))[0, 0]) == BLACK


def test_grey_alpha_composited(tmp_path):
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((1, 0), (0, 255))
    path = tmp_path / "grey_alpha.png"
    image.save(path)

    result = pixels(open_rgb_image(path))

    assert tuple(result[0, 0]) == WHITE
    assert tuple(result[0, 1]) == BLACK


def test_cmyk_jpeg_colours(tmp_path):
    path = tmp_path / "cyan.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(path)
    assert Image.open(path).mode == "CMYK"

    means = pixels(open_rgb_image(path)).reshape(-1, 3).mean(axis=0)

    # Pure cyan ink is RGB (0, 255, 255); JPEG compression moves the means by a few levels.
    assert means[0] < 8
    assert means[1] > 247
    assert means[2] > 247


def test_grey_png_to_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (2, 2), 77).save(path)

    assert tuple(pixels(open_rgb_image(path))[0, 0]) == (77, 77, 77)


def test_sixteen_bit_grey_scaled(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"

    result = pixels(open_rgb_image(path))

    # 16-bit values scale by 255 / 65535: 257 -> 1, 32768 -> 127.50 rounds to 128.
    assert result[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(result[..., 0], result[..., 2])


def test_thirty_two_bit_grey_scaled():
    from alignkd.data.images import to_rgb

    image = Image.fromarray(np.array([[-5, 65535, 100000]], dtype=np.int32), mode="I")

    assert pixels(to_rgb(image))[0, :, 0].tolist() == [0, 255, 255]


def test_float_grey_clipped():
    from alignkd.data.images import to_rgb

    image = Image.fromarray(np.array([[-1.0, 12.4, 300.0]], dtype=np.float32), mode="F")

    assert pixels(to_rgb(image))[0, :, 0].tolist() == [0, 12, 255]


def test_one_bit_to_rgb(tmp_path):
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    path = tmp_path / "bits.png"
    image.save(path)

    result = pixels(open_rgb_image(path))

    assert tuple(result[0, 0]) == BLACK
    assert tuple(result[0, 1]) == WHITE


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("P", (2, 2), index) for index in range(2)]
    for frame in frames:
        frame.putpalette([255, 0, 0, 0, 0, 255])
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])

    assert tuple(pixels(open_rgb_image(path))[0, 0]) == (255, 0, 0)


def test_decoding_deterministic(tmp_path):
    path = tmp_path / "alpha.png"
    values = np.random.default_rng(1).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(values, mode="RGBA").save(path)

    assert np.array_equal(pixels(open_rgb_image(path)), pixels(open_rgb_image(path)))


def test_truncated_jpeg_detected(tmp_path, noisy_jpeg):
    path = tmp_path / "cut.jpg"
    path.write_bytes(noisy_jpeg.read_bytes()[:-100])

    assert problem_kind(lambda: open_rgb_image(path)) is ProblemKind.IMAGE_TRUNCATED


def test_truncated_accepted_by_opt_in(tmp_path, noisy_jpeg):
    path = tmp_path / "cut.jpg"
    path.write_bytes(noisy_jpeg.read_bytes()[:-100])

    image, partial = decode_image(path, accept_truncated=True)

    assert partial
    assert image.size == (64, 64)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_complete_image_not_partial(noisy_jpeg):
    _, partial = decode_image(noisy_jpeg, accept_truncated=True)

    assert not partial


def test_truncated_passes_header_check(tmp_path, noisy_jpeg):
    path = tmp_path / "cut.jpg"
    path.write_bytes(noisy_jpeg.read_bytes()[:-100])

    assert check_image_file(path, "header") is False
    assert problem_kind(lambda: check_image_file(path, "decode")) is ProblemKind.IMAGE_TRUNCATED
    assert check_image_file(path, "decode", accept_truncated=True) is True


def test_missing_file(tmp_path):
    kind = problem_kind(lambda: check_image_file(tmp_path / "sam" / "does_not_exist.jpg", "exists"))

    assert kind is ProblemKind.IMAGE_MISSING


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")

    assert problem_kind(lambda: check_image_file(path, "exists")) is ProblemKind.IMAGE_EMPTY


def test_corrupt_file_found_by_header(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_bytes(b"this is not an image at all")

    assert check_image_file(path, "exists") is False
    assert problem_kind(lambda: check_image_file(path, "header")) is ProblemKind.IMAGE_CORRUPT


def test_corrupt_data_found_by_decode(tmp_path):
    values = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # Zeros in the middle of the compressed pixel data break the deflate stream, not the header.
    middle = len(data) // 2
    data[middle : middle + 200] = bytes(200)
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))

    assert check_image_file(path, "header") is False
    with pytest.raises(ImageFileProblem) as raised:
        check_image_file(path, "decode")
    assert raised.value.kind is ProblemKind.IMAGE_CORRUPT
    assert str(path) in raised.value.message


def test_directory_is_corrupt(tmp_path):
    assert problem_kind(lambda: check_image_file(tmp_path, "exists")) is ProblemKind.IMAGE_CORRUPT


def test_too_many_pixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 10)).save(path)
    limits = ImageLimits(max_pixels=199)

    assert check_image_file(path, "exists", limits) is False
    assert problem_kind(lambda: check_image_file(path, "header", limits)) is ProblemKind.IMAGE_OVERSIZED
    assert check_image_file(path, "header", ImageLimits(max_pixels=200)) is False


def test_too_many_bytes(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 10)).save(path)
    size = path.stat().st_size

    assert problem_kind(lambda: check_image_file(path, "exists", ImageLimits(max_bytes=size - 1))) is (
        ProblemKind.IMAGE_OVERSIZED
    )


def test_problem_message_names_file(tmp_path):
    path = tmp_path / "sam" / "missing.jpg"

    with pytest.raises(ImageFileProblem, match="sam/missing.jpg"):
        open_rgb_image(path)


def test_pad_to_square_centres_image():
    image = Image.new("RGB", (4, 2), (255, 0, 0))

    square = np.asarray(pad_to_square(image, (1, 2, 3)))

    assert square.shape == (4, 4, 3)
    assert tuple(square[0, 0]) == (1, 2, 3)
    assert tuple(square[1, 0]) == (255, 0, 0)
    assert tuple(square[2, 3]) == (255, 0, 0)
    assert tuple(square[3, 3]) == (1, 2, 3)


def test_preprocess_pad_uses_mean(image_processor):
    # An image as wide as the processor's output: padding makes it square with no resampling.
    image = Image.new("RGB", (PROCESSOR_SIDE, PROCESSOR_SIDE // 2), (255, 0, 0))

    pixel_values = preprocess_image(image, image_processor, "pad")

    assert pixel_values.shape == (3, PROCESSOR_SIDE, PROCESSOR_SIDE)
    mean = torch.tensor(image_processor.image_mean)
    std = torch.tensor(image_processor.image_std)
    # The padding colour is the mean truncated to integers, as MobileVLM computes it.
    padding = (torch.tensor([int(value * 255) for value in image_processor.image_mean]) / 255 - mean) / std
    red = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    top_padding_rows = PROCESSOR_SIDE // 4
    assert torch.allclose(pixel_values[:, 0, 0], padding, atol=1e-5)
    assert torch.allclose(pixel_values[:, top_padding_rows - 1, -1], padding, atol=1e-5)
    assert torch.allclose(pixel_values[:, top_padding_rows, 0], red, atol=1e-5)
    assert torch.allclose(pixel_values[:, PROCESSOR_SIDE - top_padding_rows, 0], padding, atol=1e-5)


def test_preprocess_resize_crops(image_processor):
    image = Image.new("RGB", (16, 8), (255, 0, 0))

    pixel_values = preprocess_image(image, image_processor, "resize")

    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(image_processor.image_mean)) / torch.tensor(
        image_processor.image_std
    )
    assert pixel_values.shape == (3, PROCESSOR_SIDE, PROCESSOR_SIDE)
    assert torch.allclose(pixel_values, red[:, None, None].expand_as(pixel_values), atol=1e-5)


def test_pad_needs_image_mean():
    class NoMeanProcessor:
        image_mean = None

    with pytest.raises(ValueError, match="image_mean"):
        preprocess_image(Image.new("RGB", (4, 2)), NoMeanProcessor(), "pad")


def test_every_mode_decodes(tmp_path):
    # Every mode that Pillow can write to TIFF decodes to RGB of the same size.
    for mode in ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "I;16", "I", "F"]:
        path = tmp_path / f"mode_{mode.replace(';', '_')}.tiff"
        Image.new(mode, (3, 2)).save(path)

        image = open_rgb_image(path)

        assert image.mode == "RGB", mode
        assert image.size == (3, 2), mode


def test_in_memory_png_round_trip(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (9, 8, 7)).save(buffer, format="PNG")
    path = tmp_path / "small.png"
    path.write_bytes(buffer.getvalue())

    assert tuple(pixels(open_rgb_image(path))[1, 1]) == (9, 8, 7)

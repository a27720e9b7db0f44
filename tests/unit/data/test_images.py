"""load_image: every common kind of image file becomes (size, size, 3) uint8 RGB, or ImageError."""

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning.data.images import MAX_PIXELS, MAX_STREAM_BYTES, ImageError, load_image
from captioning.data.sample import IMAGES_DIR, draw_sample_dataset
from conftest import flat_png

SIZE = 24
RED = (220, 30, 30)
BLUE = (40, 70, 225)


def assert_rgb_array(array: np.ndarray, size: int = SIZE) -> None:
    assert array.shape == (size, size, 3)
    assert array.dtype == np.uint8


def assert_close(pixel: np.ndarray, expected: tuple[int, int, int], tolerance: int = 12) -> None:
    difference = np.abs(pixel.astype(int) - np.asarray(expected))
    assert difference.max() <= tolerance, f"{pixel.tolist()} is not close to {expected}"


def halves(width: int, height: int, left=RED, right=BLUE) -> Image.Image:
    image = Image.new("RGB", (width, height), right)
    image.paste(left, (0, 0, width // 2, height))
    return image


@pytest.fixture(scope="module")
def sample_jpeg(tmp_path_factory) -> Path:
    root = draw_sample_dataset(tmp_path_factory.mktemp("sample"), images=1, seed=5)
    return next((root / IMAGES_DIR).glob("*.jpg"))


def test_jpeg_keeps_its_colours_and_layout(tmp_path):
    path = tmp_path / "halves.jpg"
    halves(64, 48).save(path, quality=95)
    array = load_image(path, SIZE)
    assert_rgb_array(array)
    assert_close(array[SIZE // 2, 2], RED)
    assert_close(array[SIZE // 2, SIZE - 3], BLUE)


def test_sample_data_jpeg_loads_at_the_requested_size(sample_jpeg):
    array = load_image(sample_jpeg, 75)
    assert_rgb_array(array, 75)
    assert array.std() > 5  # a real picture, not a flat fill


def test_png_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (*RED, 255)  # opaque red on the left
    rgba[:, 16:] = (*BLUE, 0)  # fully transparent (blue underneath) on the right
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    array = load_image(path, SIZE)
    assert_rgb_array(array)
    assert_close(array[SIZE // 2, 2], RED, tolerance=0)
    assert_close(array[SIZE // 2, SIZE - 3], (255, 255, 255), tolerance=0)


def test_half_transparent_pixel_is_blended_with_white(tmp_path):
    path = tmp_path / "half.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 128)).save(path)
    array = load_image(path, SIZE)
    assert_close(array[4, 4], (127, 127, 127), tolerance=2)


def test_greyscale_and_alpha_greyscale_become_grey_rgb(tmp_path):
    grey = tmp_path / "grey.jpg"
    Image.new("L", (30, 20), 77).save(grey)
    array = load_image(grey, SIZE)
    assert_rgb_array(array)
    assert_close(array[5, 5], (77, 77, 77), tolerance=2)

    transparent = tmp_path / "la.png"
    Image.new("LA", (30, 20), (77, 0)).save(transparent)
    assert_close(load_image(transparent, SIZE)[5, 5], (255, 255, 255), tolerance=0)


def test_palette_image_uses_its_palette_colours(tmp_path):
    image = Image.new("P", (20, 20), 0)
    image.putpalette([*BLUE, *RED] + [0, 0, 0] * 254)
    image.paste(1, (0, 0, 10, 20))  # left half: palette entry 1 (red)
    for name in ("palette.png", "palette.gif"):
        image.save(tmp_path / name)
        array = load_image(tmp_path / name, SIZE)
        assert_rgb_array(array)
        assert_close(array[SIZE // 2, 1], RED, tolerance=0)
        assert_close(array[SIZE // 2, SIZE - 2], BLUE, tolerance=0)


def test_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (20, 20), 0)
    image.putpalette([*BLUE, *RED] + [0, 0, 0] * 254)
    image.paste(1, (0, 0, 10, 20))
    path = tmp_path / "transparent.png"
    image.save(path, transparency=0)  # entry 0 (blue, the right half) is transparent
    array = load_image(path, SIZE)
    assert_close(array[SIZE // 2, 1], RED, tolerance=0)
    assert_close(array[SIZE // 2, SIZE - 2], (255, 255, 255), tolerance=0)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    array = load_image(path, SIZE)
    assert_rgb_array(array)
    assert_close(array[10, 10], (255, 0, 0))


@pytest.mark.parametrize(
    ("value16", "expected8"),
    [(32768, 128), (65535, 255), (1000, 4), (0, 0)],
)
def test_flat_16bit_greyscale_png_keeps_its_grey_level(tmp_path, value16, expected8):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((16, 16), value16, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    array = load_image(path, SIZE)
    assert_rgb_array(array)
    assert np.all(np.abs(array.astype(int) - expected8) <= 1), np.unique(array)


def test_16bit_gradient_spans_dark_to_light_without_clipping(tmp_path):
    path = tmp_path / "ramp16.png"
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(path)
    array = load_image(path, 64)
    row = array[8, :, 0].astype(int)
    assert row[0] <= 5 and row[-1] >= 250
    assert 100 <= row[32] <= 155
    assert np.all(np.diff(row) >= 0)  # monotone: no wrap-around or clipping plateau midway
    assert np.mean(row >= 250) < 0.1


def test_one_pixel_image_fills_the_output(tmp_path):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    array = load_image(path, 96)
    assert_rgb_array(array, 96)
    assert np.all(array == np.array([1, 2, 3], np.uint8))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_large_image_is_downscaled_keeping_its_layout(tmp_path, suffix):
    path = tmp_path / f"large{suffix}"
    halves(3000, 2000).save(path)
    array = load_image(path, 96)
    assert_rgb_array(array, 96)
    assert_close(array[48, 5], RED)
    assert_close(array[48, 90], BLUE)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = halves(40, 20)  # red left, blue right as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: stored left becomes top
    image.save(path, exif=exif, quality=95)
    array = load_image(path, SIZE)
    assert_close(array[2, SIZE // 2], RED)
    assert_close(array[SIZE - 3, SIZE // 2], BLUE)


def write_truncated_jpeg(path: Path, source: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", ["truncated", "zero-byte", "text", "missing"])
def test_unusable_file_raises_image_error_naming_the_file(tmp_path, sample_jpeg, case):
    path = tmp_path / f"{case}.jpg"
    if case == "truncated":
        write_truncated_jpeg(path, sample_jpeg)
    elif case == "zero-byte":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("a dog runs on the grass\n", encoding="utf-8")
    with pytest.raises(ImageError) as caught:
        load_image(path, SIZE)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert caught.value.reason
    if case == "missing":
        assert "not found" in caught.value.reason
    if case == "truncated":
        assert "truncated" in caught.value.reason
    if case == "zero-byte":
        assert caught.value.reason == "empty (0 bytes), not an image"


def test_empty_bytes_are_an_image_error_naming_the_label():
    with pytest.raises(ImageError, match=r"^row 3: empty \(0 bytes\), not an image$"):
        load_image(b"", SIZE, label="row 3")


def test_flat_png_helper_makes_a_real_png(tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(flat_png(30, 20))
    assert_close(load_image(path, SIZE)[5, 5], (0, 0, 0), tolerance=0)


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [
        # Over PIL's decompression-bomb limit: Image.open itself refuses it.
        (20000, 20000, "image too large (Image size (400000000 pixels) exceeds limit"),
        # Under PIL's limit, which would decode it (216 MB as RGB), but over MAX_PIXELS.
        (9000, 8000, "image too large: 9000x8000 pixels, more than the 64 megapixels decoded"),
    ],
    ids=["400-megapixels", "72-megapixels"],
)
def test_huge_image_is_refused_from_its_header_without_decoding_it(tmp_path, width, height, reason):
    path = tmp_path / "huge.png"
    path.write_bytes(flat_png(width, height))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageError) as caught:
        load_image(path, SIZE)
    assert caught.value.path == path
    assert caught.value.reason.startswith(reason)
    assert "\n" not in str(caught.value)


def test_huge_image_bytes_are_refused_naming_the_label():
    with pytest.raises(ImageError, match=r"^row 1: image too large"):
        load_image(flat_png(20000, 20000), SIZE, label="row 1")


def test_jpeg_above_the_pixel_limit_still_loads_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    side = 8200  # 67 megapixels: over MAX_PIXELS, but JPEG decodes it at 1/8 scale
    assert side * side > MAX_PIXELS
    Image.new("L", (side, side), 90).save(path, quality=50)
    array = load_image(path, SIZE)
    assert_rgb_array(array)
    assert_close(array[5, 5], (90, 90, 90), tolerance=3)


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def write_into(fifo: Path, data: bytes) -> threading.Thread:
    """A writer that opens the named pipe (waiting for its reader), writes `data`, closes."""

    def write() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def test_a_named_pipe_is_read_to_its_end_like_the_file_it_carries(tmp_path, sample_jpeg):
    fifo = tmp_path / "image.pipe"
    os.mkfifo(fifo)
    writer = write_into(fifo, sample_jpeg.read_bytes())
    array = load_image(fifo, 75)
    writer.join()
    np.testing.assert_array_equal(array, load_image(sample_jpeg, 75))


def test_an_empty_pipe_is_an_empty_image(tmp_path):
    fifo = tmp_path / "empty.pipe"
    os.mkfifo(fifo)
    writer = write_into(fifo, b"")
    with pytest.raises(ImageError, match=r"empty\.pipe: empty \(0 bytes\), not an image"):
        load_image(fifo, SIZE)
    writer.join()


def test_a_device_that_never_ends_is_refused_after_the_stream_bound():
    with pytest.raises(ImageError) as caught:
        load_image("/dev/zero", SIZE)
    assert str(caught.value) == (
        f"/dev/zero: more than {MAX_STREAM_BYTES // 1_000_000} MB from a pipe or device: too "
        "large for an image within the 64 megapixels decoded")

import io

import numpy as np
import pytest
from PIL import Image

from kerascnn.data.images import grey_only, read_image, scan_images


def save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def test_modes_become_uint8_with_the_asked_channels(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 255
    files = {
        "rgb.png": Image.fromarray(rgb),
        "grey.png": Image.fromarray(np.full((20, 30), 100, np.uint8)),
        "palette.gif": Image.fromarray(rgb).convert("P"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "bw.bmp": Image.fromarray(np.full((20, 30), 255, np.uint8)).convert("1"),
    }
    for name, image in files.items():
        path = save(tmp_path, name, image)
        for channels in (1, 3):
            array = read_image(path, (16, 16, channels))
            assert array.dtype == np.uint8 and array.shape == (16, 16, channels), name
    assert read_image(str(tmp_path / "rgb.png"), (16, 16, 3))[0, 0].tolist() == [255, 0, 0]
    assert read_image(str(tmp_path / "grey.png"), (16, 16, 3))[0, 0].tolist() == [100, 100, 100]


def test_transparent_pixels_are_laid_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, ..., :] = (0, 0, 0, 255)  # top half opaque black, bottom half transparent
    path = save(tmp_path, "rgba.png", Image.fromarray(rgba, "RGBA"))
    array = read_image(path, None, channels=1)
    assert array[0, 0, 0] == 0 and array[7, 0, 0] == 255


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535]], np.uint16).repeat(4, axis=0)
    path = save(tmp_path, "deep.png", Image.fromarray(values))
    array = read_image(path, None, channels=1)[0, :, 0]
    assert array.tolist() == [0, 128, 255]


def test_resize_keeps_aspect_by_centre_crop(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255  # white centre third
    path = save(tmp_path, "wide.png", Image.fromarray(wide))
    array = read_image(path, (10, 10, 3))
    assert array.mean() > 240


def test_scan_images_finds_corrupt_and_truncated_files(tmp_path):
    good = save(tmp_path, "good.jpg", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    scanned = scan_images([good, str(truncated), str(garbage), str(tmp_path / "missing.png")])
    bad = [path for path, digest in scanned.items() if digest is None]
    assert sorted(bad) == sorted([str(truncated), str(garbage), str(tmp_path / "missing.png")])
    with pytest.raises(OSError):
        read_image(str(truncated), (32, 32, 3))


def test_grey_only(tmp_path):
    grey = [save(tmp_path, f"g{i}.png", Image.fromarray(np.zeros((4, 4), np.uint8))) for i in range(3)]
    colour = save(tmp_path, "c.png", Image.fromarray(np.zeros((4, 4, 3), np.uint8)))
    assert grey_only(grey)
    assert not grey_only(grey + [colour])

"""Decoding image files of any format and mode Pillow reads into uint8 arrays."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger("kerascnn")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def is_image_file(path: str | Path) -> bool:
    """True when the file name has a common image extension."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_array(image: Image.Image, channels: int) -> np.ndarray:
    """Convert a Pillow image of any mode to uint8 (h, w, channels).

    Transparent pixels are laid on white; 16- and 32-bit images are scaled to 8 bits.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max() if values.size else 0.0
        scale = 255.0 if peak <= 1.0 else 255.0 / 65535.0 if peak > 255 else 1.0
        image = Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of ``path`` if it is a regular file; ``OSError`` for a FIFO, device or directory,
    which is refused without blocking on it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def read_image(path: str | Path, shape: tuple[int, int, int] | None = None, channels: int = 3) -> np.ndarray:
    """Read one image file as uint8 (h, w, c).

    With ``shape`` = (height, width, channels) the image is centre-cropped to that aspect ratio
    and resized; otherwise it keeps its size and gets ``channels`` channels. EXIF rotation is
    applied. Raises ``OSError`` (or a Pillow error) for unreadable or truncated files and for
    anything but a regular file.
    """
    if shape is not None:
        channels = shape[2]
    with Image.open(io.BytesIO(read_regular_file(path))) as image:
        if shape is not None and image.format == "JPEG":
            image.draft("L" if channels == 1 else "RGB", (shape[1], shape[0]))
        image.load()
        array = to_array(ImageOps.exif_transpose(image), channels)
    if shape is not None and array.shape[:2] != tuple(shape[:2]):
        resized = ImageOps.fit(Image.fromarray(array.squeeze(-1) if channels == 1 else array),
                               (shape[1], shape[0]), Image.Resampling.BILINEAR)
        array = to_array(resized, channels)
    return array


def read_images(paths: Sequence[str], shape: tuple[int, int, int]) -> np.ndarray:
    """Read several files into one uint8 array (n, h, w, c)."""
    out = np.empty((len(paths), *shape), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = read_image(path, shape)
    return out


def _content_digest(path: str) -> str | None:
    try:
        data = read_regular_file(path)
        with Image.open(io.BytesIO(data)) as image:
            image.draft(image.mode if image.mode in ("L", "RGB") else "RGB", (64, 64))
            image.load()
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    except Exception:  # noqa: BLE001 - any failure to decode means unreadable
        return None


def scan_images(paths: Iterable[str], workers: int | None = None) -> dict[str, str | None]:
    """Each of ``paths`` with the hash of its bytes if Pillow can fully decode it, None if not
    (corrupt, truncated, not an image, not a regular file); unreadable ones are warned about."""
    paths = list(paths)
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    pool = ThreadPoolExecutor(workers)
    try:
        digests = dict(zip(paths, pool.map(_content_digest, paths)))
    finally:  # on Ctrl-C or SIGTERM the files not begun are not read
        pool.shutdown(wait=True, cancel_futures=True)
    for path, digest in digests.items():
        if digest is None:
            log.warning("skipping unreadable image %s", path)
    return digests


def grey_only(paths: Sequence[str], sample: int = 64) -> bool:
    """True when every image in an evenly spaced sample of ``paths`` is single-channel."""
    if not len(paths):
        return False
    step = max(1, len(paths) // sample)
    for path in paths[::step][:sample]:
        try:
            with Image.open(io.BytesIO(read_regular_file(path))) as image:
                if image.mode not in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F", "LA"):
                    return False
        except Exception:  # noqa: BLE001 - unreadable files are dealt with elsewhere
            continue
    return True

"""Plain helpers for the tests: tiny synthetic image sets in the layouts kerascnn reads.

Imported as ``from helpers import ...`` (tests/ is on sys.path, as for ``replicas``); fixtures and
hooks stay in conftest.py.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def colour_image(colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy image of one dominant colour: easy to learn, cheap to make."""
    noise = rng.integers(-40, 40, (size, size, 3))
    return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def write_folder(root: Path, per_class: int = 8, size: int = 24, seed: int = 0,
                 splits: tuple[str, ...] | None = None) -> Path:
    """``root/<class>/*.png`` (or ``root/<split>/<class>/``) with a few images of each colour class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(colour_image(colour, size, rng)).save(folder / f"{name}_{i}.png")
    return root


def write_idx_gz(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    """Fashion-MNIST's idx file pair for ``images`` (n, 28, 28) and ``labels``."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def study_command(argv: list[str]) -> int:
    """``python -m experiments.study ARGV`` run in this process; its exit status."""
    from experiments import study as study_cli
    from experiments.cli import main

    return main(study_cli.body, study_cli.parser(), argv)


def write_study_file(folder: Path, text: str, name: str = "s.toml") -> Path:
    """``text`` written to ``folder/name``; the path."""
    path = folder / name
    path.write_text(text)
    return path

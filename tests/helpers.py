"""Plain helpers for the tests: tiny synthetic image sets in the layouts kerascnn reads.

Imported as ``from helpers import ...`` (tests/ is on sys.path, as for ``replicas``); fixtures and
hooks stay in conftest.py.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np

# TensorFlow 2.21's native INFO log at start-up on CPUs where it turns oneDNN on (AVX-512 VNNI/BF16, AMX): absl
# writes it before TF_CPP_MIN_LOG_LEVEL applies (tensorflow/tensorflow#102212), so a child process shows it
TF_NATIVE_INFO = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
                            r"|I\d{4} \d+:\d+:\d+\.\d+ +\d+ [\w.]+:\d+\] ")


def own_lines(stderr: str) -> list[str]:
    """A child process's stderr lines, less TensorFlow's native start-up INFO log (`TF_NATIVE_INFO`)."""
    return [line for line in stderr.strip().splitlines() if not TF_NATIVE_INFO.match(line)]


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

"""FER2013: the Kaggle CSV (``emotion,pixels,Usage``; 48x48 grey) or the folder layout
(``train/<emotion>/``, ``test/<emotion>/``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kerascnn.data.dataset import Split
from kerascnn.data.sources import Source, find_root, load_folder, read_csv_rows
from kerascnn.errors import KerascnnError

log = logging.getLogger("kerascnn")
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # by emotion 0..6
USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
SIZE = 48
LAYOUT = "DIR/fer2013.csv (emotion,pixels,Usage) or DIR/train/<emotion>/, DIR/test/<emotion>/"
SOURCE = "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge"


def _csv_file(root: Path) -> Path | None:
    return next((p for p in (root / "fer2013.csv", root / "fer2013" / "fer2013.csv") if p.is_file()), None)


def _pixels(text: str) -> np.ndarray:
    """The space-separated pixel values of a row; empty when any of them is not an integer."""
    try:
        return np.array(text.split(), dtype=np.int64)
    except ValueError:
        return np.zeros(0, np.int64)


def locate(data_dir: str | None = None) -> Path:
    """The folder holding FER2013; one error line saying where it looked and how to get it otherwise."""
    return find_root("fer2013", data_dir,
                     lambda p: _csv_file(p) is not None or ((p / "train").is_dir() and (p / "test").is_dir()),
                     LAYOUT, SOURCE)


def load_fer2013(data_dir: str | None = None, channels: int | None = None) -> Source:
    """FER2013: CSV splits Training -> train, PublicTest -> val, PrivateTest -> test; folders
    train/ and test/ (validation carved from train)."""
    root = locate(data_dir)
    csv_path = _csv_file(root)
    if csv_path is None:
        return load_folder(str(root), channels, class_names=CLASSES)
    images: dict[str, list[np.ndarray]] = {s: [] for s in USAGE.values()}
    labels: dict[str, list[int]] = {s: [] for s in USAGE.values()}
    bad: list[str] = []
    for line, row in enumerate(read_csv_rows(csv_path, ("emotion", "pixels", "usage")), start=2):
        split = USAGE.get(row["usage"].lower())
        pixels = _pixels(row["pixels"])
        if split is None or pixels.size != SIZE * SIZE or not row["emotion"].isdigit() \
                or int(row["emotion"]) >= len(CLASSES) or pixels.min() < 0 or pixels.max() > 255:
            log.warning("skipping bad row %d of %s", line, csv_path)
            bad.append(f"{csv_path.name} row {line}")
            continue
        images[split].append(pixels.astype(np.uint8).reshape(SIZE, SIZE, 1))
        labels[split].append(int(row["emotion"]))
    if not labels["train"]:
        raise KerascnnError(f"{csv_path} has no Training rows")
    splits = {s: Split(np.array(labels[s]), images=np.stack(images[s])) for s in USAGE.values() if labels[s]}
    notes = [f"FER2013 CSV {csv_path}: Training -> train, PublicTest -> val, PrivateTest -> test"]
    if bad:
        notes.append(f"{len(bad)} malformed CSV row(s) skipped")
    return Source(splits, list(CLASSES), channels=1, skipped_files=bad, notes=notes)

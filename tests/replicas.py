"""Small replicas of the real datasets' layouts (same folder names, CSV headers and formats)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

ITALIAN = ["cane", "cavallo", "elefante", "farfalla", "gallina", "gatto", "mucca", "pecora", "ragno", "scoiattolo"]


def _image(rng: np.random.Generator, index: int, size: int) -> np.ndarray:
    """A noisy image whose mean colour depends on ``index`` (so classes are learnable)."""
    base = np.array([(37 * index) % 256, (91 * index) % 256, (53 * index + 100) % 256])
    return np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)


def save_odd_images(folder: Path, rng: np.random.Generator, index: int, size: int, stem: str) -> list[str]:
    """One greyscale JPEG, one RGBA PNG and one corrupt JPEG in ``folder``; returns their names."""
    pixels = _image(rng, index, size)
    Image.fromarray(pixels).convert("L").save(folder / f"{stem}_grey.jpg")
    Image.fromarray(np.dstack([pixels, np.full((size, size), 200, np.uint8)]), "RGBA").save(folder / f"{stem}_rgba.png")
    (folder / f"{stem}_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 20)
    return [f"{stem}_grey.jpg", f"{stem}_rgba.png", f"{stem}_corrupt.jpg"]


def animals10(root: Path, per_class: int = 6, size: int = 40, seed: int = 0) -> Path:
    """``root/raw-img/<italian>/*.jpeg`` plus grey, RGBA and corrupt files in ``cane``."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(ITALIAN):
        folder = root / "raw-img" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "png" if i == 0 else "jpeg" if i % 2 else "jpg"
            Image.fromarray(_image(rng, index, size)).save(folder / f"OIP-{name}{i}.{ext}")
    save_odd_images(root / "raw-img" / "cane", rng, 0, size, "odd")
    (root / "translate.py").write_text("translate = {'cane': 'dog'}\n")
    return root


def deep_weeds(root: Path, per_class: int = 5, size: int = 32, folds: tuple[int, ...] = (0, 1), seed: int = 0) -> Path:
    """``images/*.jpg``, ``labels/labels.csv`` and the split CSVs of ``folds`` (60/20/20 per class)."""
    from kerascnn.data.deep_weeds import CLASSES

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    for label, species in enumerate(CLASSES):
        count = per_class * 2 if species == "Negative" else per_class
        for i in range(count):
            name = f"2017{label:02d}{i:02d}-{i}.jpg"
            Image.fromarray(_image(rng, label, size)).save(root / "images" / name)
            rows.append((name, label, species))
    odd = save_odd_images(root / "images", rng, 1, size, "20170101-odd")
    rows += [(name, 1, "Lantana") for name in odd]
    _write(root / "labels" / "labels.csv", rows)
    for fold in folds:
        split_rng = np.random.default_rng(fold)
        parts: dict[str, list] = {"train": [], "val": [], "test": []}
        for label in range(len(CLASSES)):
            mine = [r for r in rows if r[1] == label]
            order = split_rng.permutation(len(mine))
            n_val = n_test = max(1, round(0.2 * len(mine)))
            for k, i in enumerate(order):
                part = "val" if k < n_val else "test" if k < n_val + n_test else "train"
                parts[part].append(mine[i])
        for part, part_rows in parts.items():
            _write(root / "labels" / f"{part}_subset{fold}.csv", part_rows)
    return root


def _write(path: Path, rows: list[tuple]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Filename", "Label", "Species"])
        writer.writerows(rows)


def fer2013_csv(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """``root/fer2013.csv`` (emotion,pixels,Usage) with a few rows per emotion and one malformed row."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "fer2013.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for emotion in range(7):
            for usage, n in (("Training", per_class), ("PublicTest", 1), ("PrivateTest", 2)):
                for _ in range(n):
                    pixels = np.clip(30 * emotion + rng.integers(0, 40, 48 * 48), 0, 255)
                    writer.writerow([emotion, " ".join(map(str, pixels)), usage])
        writer.writerow([3, "1 2 3", "Training"])  # malformed: not 48x48 pixels
    return root


def fer2013_folders(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """``root/train/<emotion>/*.png`` and ``root/test/<emotion>/*.png``, 48x48 grey."""
    from kerascnn.data.fer2013 import CLASSES

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", 2)):
        for emotion, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(30 * emotion + rng.integers(0, 40, (48, 48)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"im{i}.png")
    return root

"""Animals-10 (Kaggle ``alessiocorrado99/animals10``): ``raw-img/<Italian name>/*.jpeg|jpg|png``."""

from __future__ import annotations

from pathlib import Path

from kerascnn.data.sources import Source, class_folders, file_source, find_root

# The folder names are Italian; all ten are translated (copied tables often drop "ragno").
ITALIAN_TO_ENGLISH = {
    "cane": "dog", "cavallo": "horse", "elefante": "elephant", "farfalla": "butterfly",
    "gallina": "chicken", "gatto": "cat", "mucca": "cow", "pecora": "sheep",
    "ragno": "spider", "scoiattolo": "squirrel",
}  # fmt: skip
BALANCED_SPLIT = "300,75,75"  # per class: the balanced 4,500-image subset of the course assignment
LAYOUT = "DIR/raw-img/<cane|cavallo|...>/*.jpeg"
SOURCE = "https://www.kaggle.com/datasets/alessiocorrado99/animals10"


def _raw_images(root: Path) -> Path:
    return root / "raw-img" if (root / "raw-img").is_dir() else root


def locate(data_dir: str | None = None) -> Path:
    """The folder holding Animals-10; one error line saying where it looked and how to get it otherwise."""
    return find_root("animals10", data_dir, lambda p: (_raw_images(p) / "cane").is_dir(), LAYOUT, SOURCE)


def load_animals10(data_dir: str | None = None, channels: int | None = None) -> Source:
    """Animals-10 with English class names, split 300/75/75 per class unless ``--split`` says otherwise."""
    root = locate(data_dir)
    folders = class_folders(_raw_images(root))
    records = {"all": [(f, ITALIAN_TO_ENGLISH.get(name, name)) for name, files in folders.items() for f in files]}
    names = sorted({c for _, c in records["all"]})
    source = file_source(records, names, channels, str(root))
    source.default_split = BALANCED_SPLIT
    return source

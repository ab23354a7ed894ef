"""DeepWeeds (Olsen et al. 2019): ``images/*.jpg`` and ``labels/labels.csv`` (Filename,Label,Species),
with the official five folds ``labels/{train,val,test}_subset{0..4}.csv`` (60/20/20)."""

from __future__ import annotations

from pathlib import Path

from kerascnn.data.sources import Source, file_source, find_root, read_csv_rows
from kerascnn.errors import KerascnnError

CLASSES = ["Chinee apple", "Lantana", "Parkinsonia", "Parthenium", "Prickly acacia", "Rubber vine",
           "Siam weed", "Snake weed", "Negative"]  # by Label 0..8
FOLDS = 5
FALLBACK_SPLIT = "0.6,0.2,0.2"
LAYOUT = "DIR/images/*.jpg and DIR/labels/labels.csv (+ labels/{train,val,test}_subset{0..4}.csv)"
SOURCE = "https://github.com/AlexOlsen/DeepWeeds (images and labels)"


def _rows(path: Path) -> list[tuple[str, int]]:
    rows = read_csv_rows(path, ("filename", "label"))
    try:
        return [(r["filename"], int(r["label"])) for r in rows]
    except ValueError:
        raise KerascnnError(f"{path}: Label must be an integer 0..8") from None


def locate(data_dir: str | None = None) -> Path:
    """The folder holding DeepWeeds; one error line saying where it looked and how to get it otherwise."""
    return find_root("deep_weeds", data_dir, lambda p: (p / "labels" / "labels.csv").is_file(), LAYOUT, SOURCE)


def load_deep_weeds(data_dir: str | None = None, channels: int | None = None, fold: int = 0) -> Source:
    """DeepWeeds with the official split of ``fold`` (0..4), or a seeded stratified 60/20/20 split
    when the split CSVs are absent. `kerascnn.data.check` has checked ``fold``."""
    root = locate(data_dir)
    labels = root / "labels"
    image = {name: str(root / "images" / name) for name, _ in _rows(labels / "labels.csv")}
    fold_files = {s: labels / f"{s}_subset{fold}.csv" for s in ("train", "val", "test")}
    notes = []
    if all(f.is_file() for f in fold_files.values()):
        parts = {s: _rows(f) for s, f in fold_files.items()}
        notes.append(f"official split, fold {fold} of {FOLDS}")
    elif any(labels.glob("*_subset*.csv")):
        found = sorted(p.name for p in labels.glob("*_subset*.csv"))
        raise KerascnnError(f"deep_weeds fold {fold} is incomplete in {labels} (found {', '.join(found)})")
    else:
        parts = {"all": _rows(labels / "labels.csv")}
        notes.append("official split CSVs absent: seeded stratified 60/20/20 split instead")
    records = {s: [(image.get(name, str(root / "images" / name)), CLASSES[label]) for name, label in rows]
               for s, rows in parts.items()}
    source = file_source(records, CLASSES, channels, str(root))
    source.notes = notes + source.notes
    source.default_split = FALLBACK_SPLIT
    return source

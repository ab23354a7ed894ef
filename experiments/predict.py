"""python -m experiments.predict MODEL.keras|RUN_DIR|MODEL.onnx IMAGE|DIR... : top-k labels of your own images.

Examples:
  python -m experiments.predict runs/fashion_mnist-cnn-20261122-101500 shirt.jpg --invert
  python -m experiments.predict model.keras photos/ --csv submission.csv --tta flip
  python -m experiments.predict runs/my-run/export/model.onnx photos/   (after python -m experiments.export)
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from experiments.cli import Parser, add_common_options, main
from kerascnn.config import options
from kerascnn.errors import KerascnnError


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.predict", description=__doc__)
    p.add_argument("model", help="a model.keras file, a run folder or an ONNX file from experiments.export")
    p.add_argument("images", nargs="+", help="image files or folders of images (any format and mode)")
    p.add_argument("--top-k", type=int, default=3, help="labels shown per image (default: 3)")
    p.add_argument("--csv", metavar="OUT", help="also write id,label rows (id = file name without extension)")
    p.add_argument("--invert", action="store_true",
                   help="invert pixels: dark-on-light photos fed to a light-on-dark model such as Fashion-MNIST's")
    p.add_argument("--tta", choices=options()["tta"].choices, default="none",
                   help="test-time augmentation: flip averages each image's probabilities with its mirror's")
    p.add_argument("--batch-size", type=int, default=64, help="images per prediction batch (default: 64)")
    add_common_options(p)
    return p


def submission_ids(paths: list[str]) -> list[str]:
    """One id per file: its name without extension, or, where two files share that, its path
    relative to the folder the files have in common (``a/x.jpg``, ``a/x.png``, ``b/x.jpg``)."""
    stems = [Path(p).stem for p in paths]
    if not paths:
        return []
    root = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))
    return [stem if stems.count(stem) == 1 else Path(p).resolve().relative_to(root).as_posix()
            for stem, p in zip(stems, paths)]


def body(args: argparse.Namespace) -> int:
    from kerascnn.prediction import predict
    from kerascnn.rundir import check_free

    if args.top_k < 1:
        raise KerascnnError(f"--top-k must be >= 1, got {args.top_k}")
    csv_path = check_free(args.csv, "--csv", folder=False) if args.csv else None
    predictions, skipped = predict(args.model, args.images, top_k=args.top_k, invert=args.invert,
                                   batch_size=args.batch_size, tta=args.tta)
    for p in predictions:
        ranked = ", ".join(f"{label} {prob:.1%}" for label, prob in zip(p.labels, p.probabilities))
        print(f"{p.path}: {ranked}")
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label"])
            writer.writerows(zip(submission_ids([p.path for p in predictions]), (p.labels[0] for p in predictions)))
    if skipped:
        print(f"{len(skipped)} unreadable image(s) skipped", file=sys.stderr)
    if not predictions:
        raise KerascnnError("none of the images could be read")
    return 0


def cli() -> int:
    """The ``kerascnn-predict`` console script."""
    return main(body, parser())


if __name__ == "__main__":
    sys.exit(cli())

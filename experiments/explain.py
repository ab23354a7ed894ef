"""python -m experiments.explain RUN_DIR|MODEL.keras IMAGE|DIR... [--class NAME] [--layer NAME] [--out DIR] :
where a model looks, as one Grad-CAM overlay per image.

Each overlay (DIR/<image>_cam_<class>.png) shows the image with the Grad-CAM map of the predicted
class (or --class) at the model's last stage (a scratch CNN's last block, a ResNet's layer4; --layer
names another stage or layer). Works on every backend.

Examples:
  python -m experiments.explain runs/fashion_mnist-cnn-20261122-101500 shirt.jpg
  python -m experiments.explain runs/my-run photos/ --layer layer3 --class cat --out cams/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.cli import Parser, add_common_options, main


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.explain", description=__doc__)
    p.add_argument("model", help="a run folder or a model.keras file")
    p.add_argument("images", nargs="+", help="image files or folders of images (any format and mode)")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="the class to explain (default: each image's predicted class)")
    p.add_argument("--layer", metavar="NAME", help="a stage (layer3, block2, ...) or a layer with a feature map "
                   "(default: the last stage)")
    p.add_argument("--out", help="folder for the overlays (default: cam/ in the model's folder); existing "
                   "overlays of the same image and class are replaced")
    add_common_options(p)
    return p


def body(args: argparse.Namespace) -> int:
    from kerascnn.explain import explain_files
    from kerascnn.saving import model_file_of

    out = Path(args.out).expanduser() if args.out else model_file_of(args.model).parent / "cam"
    written, skipped = explain_files(args.model, args.images, out, class_name=args.class_name, layer=args.layer)
    for path in written:
        print(path)
    if skipped:
        print(f"{len(skipped)} unreadable image(s) skipped", file=sys.stderr)
    return 0


def cli() -> int:
    """The ``kerascnn-explain`` console script."""
    return main(body, parser())


if __name__ == "__main__":
    sys.exit(cli())

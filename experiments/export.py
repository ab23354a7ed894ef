"""python -m experiments.export RUN_DIR|MODEL.keras [--format onnx|savedmodel|keras] [--out PATH] :
a trained model for use outside kerascnn.

The exported model takes raw 0..255 pixels (float32, batch x height x width x channels) with its
preprocessing inside and outputs class probabilities; PATH.json beside it names the classes, the
input and output, the preprocessing and the source run. Formats by backend: onnx on torch (needs
onnx and onnxscript: pip install 'kerascnn[onnx]'), savedmodel on tensorflow, keras on all three;
a model trained on any backend exports on any (add --backend).

Examples:
  python -m experiments.export runs/fashion_mnist-cnn-20261122-101500        (-> RUN_DIR/export/model.onnx)
  python -m experiments.export model.keras --format savedmodel --backend tensorflow --out served/
"""

from __future__ import annotations

import argparse
import sys

from experiments.cli import Parser, add_common_options, main
from kerascnn.config import EXPORT_FORMATS


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.export", description=__doc__)
    p.add_argument("model", help="a run folder or a model.keras file")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="what to write (default: onnx)")
    p.add_argument("--out", help="the file (a folder for savedmodel) to write; never overwritten "
                                 "(default: export/model.<format> in the model's folder)")
    add_common_options(p)
    return p


def body(args: argparse.Namespace) -> int:
    from kerascnn.export import description_path, export

    path = export(args.model, args.format, args.out)
    print(f"{path}\n{description_path(path)}")
    return 0


def cli() -> int:
    """The ``kerascnn-export`` console script."""
    return main(body, parser())


if __name__ == "__main__":
    sys.exit(cli())

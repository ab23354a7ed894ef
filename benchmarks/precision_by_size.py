"""kerascnn's training step in mixed_bfloat16 against float32, for one model at several working sizes:
where ``--precision auto`` should switch a backbone to bfloat16 on this machine.

    python benchmarks/precision_by_size.py MODEL [--sizes 32,48,64,96] [--batch-size 64] [--steps 10] [--repeats 3]

Both precisions train through kerascnn's real path (`framework_tax.KerascnnPath`: build, compile as a
run does, ``model.fit`` over the input pipeline) on the same random batches, alternating in one
process after a warm-up epoch each; prints one JSON line per size with the median ms/step of each and
``bf16_vs_float32`` (below 1: bfloat16 is faster). Each backbone's `ModelSpec.amx_min_size` (the
smallest working size that ``--precision auto`` trains in bfloat16 on an AMX CPU) comes from these
figures (docs/results/precision_by_size.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import framework_tax  # noqa: E402
import numpy as np  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")


def measure(model: str, size: int, batch: int, steps: int, repeats: int) -> dict:
    """Median ms/step of each precision for ``model`` working at ``size``."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (steps * batch, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, steps * batch)
    paths = {p: framework_tax.KerascnnPath(model, images, labels, 10, batch, steps, None, p) for p in PRECISIONS}
    for path in paths.values():
        path.epoch()  # warm-up: first-call costs
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(repeats):
        for name, path in paths.items():
            start = time.perf_counter()
            path.epoch()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    median = {p: statistics.median(t) for p, t in times.items()}
    return {"model": model, "size": size, "batch": batch, "fast_path": all(p.fast for p in paths.values()),
            "ms_per_step": {p: round(t, 1) for p, t in median.items()},
            "bf16_vs_float32": round(median["mixed_bfloat16"] / median["float32"], 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a kerascnn backbone: resnet18, resnet50, mobilenet_v2, efficientnet_b0, ...")
    p.add_argument("--sizes", default="32,48,64,96", help="working sizes, comma-separated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="steps per timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per precision (median)")
    args = p.parse_args()
    import keras

    if keras.backend.backend() != "torch":
        sys.exit("precision_by_size.py measures the torch backend; unset KERAS_BACKEND or set it to torch")
    from kerascnn import models

    if models.get(args.model).cnn is not None:
        sys.exit(f"{args.model} is a scratch CNN; this measures backbones (resnet18, mobilenet_v2, ...)")
    for size in (int(s) for s in args.sizes.split(",")):
        print(json.dumps(measure(args.model, size, args.batch_size, args.steps, args.repeats)), flush=True)


if __name__ == "__main__":
    main()

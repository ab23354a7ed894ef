"""What kerascnn adds at the end of every epoch, against the epoch itself: keeping the best
weights in memory (`kerascnn.training.BestEpoch`, on an improving epoch) and writing the resume
checkpoint (`kerascnn.checkpoint.save`: weights and optimizer state).

    python benchmarks/epoch_overhead.py [--repeats 5]

Per model: the median seconds of each, and the median time of one training step of the same
model in the same process, so the overhead reads as "steps' worth" per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

CASES = {"cnn": ((28, 28, 1), 128), "resnet18": ((64, 64, 3), 32), "resnet50": ((64, 64, 3), 32)}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, repeats: int) -> dict:
    import keras

    from kerascnn import checkpoint, models, training
    from kerascnn.config import RunConfig
    from kerascnn.resolution import resolve

    shape, batch = CASES[name]
    model = models.build(name, shape, 10, image_size=shape[0], weights="none")
    config = resolve(RunConfig("bench", name, weights="none", label_smoothing=0.0)).training
    training.compile_model(model, config, 100)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, *shape)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, batch), 10)
    model.train_on_batch(x, y)  # builds the optimizer
    step = median_seconds(lambda: model.train_on_batch(x, y), repeats)
    with tempfile.TemporaryDirectory() as folder:
        state = checkpoint.State(1)
        save = median_seconds(lambda: checkpoint.save(folder, model, state), repeats)
    keep = median_seconds(model.get_weights, repeats)
    return {"model": name, "params": int(model.count_params()), "step_s": round(step, 4),
            "best_weights_s": round(keep, 4), "checkpoint_s": round(save, 4),
            "steps_worth": round((keep + save) / step, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    for name in args.cases.split(","):
        print(json.dumps(measure(name, args.repeats)))


if __name__ == "__main__":
    main()

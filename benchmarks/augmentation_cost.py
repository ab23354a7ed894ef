"""What augmentation costs, and where it is cheapest: images/s of the `basic` augmentation (flip +
translate 0.1) run the way the input pipeline runs it (numpy in, numpy out), beside ResNet-18's
training step without augmentation and with the same layers inside the model, on the device.

    KERAS_BACKEND=jax python benchmarks/augmentation_cost.py [--size 224] [--batch-size 64] [--steps 10]

One backend per process (Keras picks it once); run it once per backend.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascnn import models, training  # noqa: E402
from kerascnn.config import RunConfig  # noqa: E402
from kerascnn.data.augment import augmentation  # noqa: E402
from kerascnn.distribute import device_names  # noqa: E402


def pipeline_rate(images: np.ndarray, repeats: int = 5) -> float:
    """Images/s of the augmentation on one batch, numpy in and out, as `Batches` runs it (`Augmenter`)."""
    augment, rng = augmentation("basic"), np.random.default_rng(0)
    augment(images.copy(), rng)
    start = time.perf_counter()
    for _ in range(repeats):
        augment(images.copy(), rng)
    return repeats * len(images) / (time.perf_counter() - start)


def step_rate(x: np.ndarray, y: np.ndarray, batch: int, in_model: bool) -> float:
    """Training images/s of ResNet-18 (random weights), optionally with augmentation layers in front."""
    size = x.shape[1]
    model = models.build("resnet18", (size, size, 3), y.shape[1], weights="none")
    if in_model:
        layers = keras.layers.Pipeline(augmentation("basic").layers)  # Keras' own resampling
        model = keras.Sequential([keras.Input((size, size, 3)), layers, model])
    training.compile_model(model, RunConfig("bench", "resnet18", weights="none", label_smoothing=0.0), len(x) // batch)
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, verbose=0)  # warm-up
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, verbose=0)
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    n = args.batch_size * args.steps
    x = np.random.default_rng(0).integers(0, 255, (n, args.size, args.size, 3)).astype("uint8")
    y = np.eye(4, dtype="float32")[np.arange(n) % 4]
    rows = [("basic augmentation in the input pipeline (one thread)", pipeline_rate(x[: args.batch_size])),
            ("resnet18 training step, no augmentation", step_rate(x, y, args.batch_size, in_model=False)),
            ("resnet18 training step, augmentation inside the model", step_rate(x, y, args.batch_size, in_model=True))]
    print(f"backend {keras.backend.backend()} on {device_names()[0]}, {args.size}x{args.size}, batch {args.batch_size}")
    print("| what | images/s |\n| --- | --- |")
    for what, rate in rows:
        print(f"| {what} | {rate:.0f} |")


if __name__ == "__main__":
    main()

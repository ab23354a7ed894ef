"""What augmentation costs, and where it is cheapest: images/s of the `basic` and `strong` presets
and of RandAugment run the way the input pipeline runs them (numpy in, numpy out, one thread; Keras'
own `RandAugment` layer beside ours), and ResNet-18's training step without augmentation and with
the basic layers inside the model (Keras' own resampling), on the device.

    KERAS_BACKEND=jax python benchmarks/augmentation_cost.py [--size 224] [--batch-size 64] [--steps 10]
    python benchmarks/augmentation_cost.py --batch-size 32 --no-training     # the pipeline rows only

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
from kerascnn.data.augment import RandAugment, augmentation  # noqa: E402
from kerascnn.distribute import device_names  # noqa: E402
from kerascnn.resolution import resolve  # noqa: E402


def pipeline_rate(images: np.ndarray, augment, repeats: int = 5) -> float:
    """Images/s of ``augment(batch, rng)`` on one batch, numpy in and out, as `Batches` runs it."""
    rng = np.random.default_rng(0)
    augment(images.copy(), rng)
    start = time.perf_counter()
    for _ in range(repeats):
        augment(images.copy(), rng)
    return repeats * len(images) / (time.perf_counter() - start)


def keras_randaugment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return keras.ops.convert_to_numpy(KERAS_RANDAUGMENT(images.astype("float32"), training=True))


KERAS_RANDAUGMENT = keras.layers.RandAugment(value_range=(0, 255), seed=0)


def step_rate(x: np.ndarray, y: np.ndarray, batch: int, in_model: bool) -> float:
    """Training images/s of ResNet-18 (random weights), optionally with augmentation layers in front."""
    size = x.shape[1]
    model = models.build("resnet18", (size, size, 3), y.shape[1], weights="none")
    if in_model:
        layers = keras.layers.Pipeline(augmentation("basic").layers)  # Keras' own resampling
        model = keras.Sequential([keras.Input((size, size, 3)), layers, model])
    config = resolve(RunConfig("bench", "resnet18", weights="none", label_smoothing=0.0)).training
    training.compile_model(model, config, len(x) // batch)
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, verbose=0)  # warm-up
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, verbose=0)
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-training", action="store_true", help="leave out the training-step rows")
    args = p.parse_args()
    n = args.batch_size * args.steps
    x = np.random.default_rng(0).integers(0, 255, (n, args.size, args.size, 3)).astype("uint8")
    y = np.eye(4, dtype="float32")[np.arange(n) % 4]
    batch = x[: args.batch_size]
    basic_layers = keras.layers.Pipeline(augmentation("basic").layers)

    def keras_basic(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return keras.ops.convert_to_numpy(basic_layers(images.astype("float32"), training=True))

    rows = [("basic augmentation in the input pipeline (one thread)", pipeline_rate(batch, augmentation("basic"))),
            ("basic augmentation as Keras' own layers (one thread)", pipeline_rate(batch, keras_basic, repeats=2)),
            ("strong augmentation in the input pipeline (one thread)", pipeline_rate(batch, augmentation("strong"))),
            ("kerascnn's RandAugment alone (one thread)", pipeline_rate(batch, RandAugment())),
            ("Keras' RandAugment layer alone (one thread)", pipeline_rate(batch, keras_randaugment, repeats=2))]
    if not args.no_training:
        rows += [("resnet18 training step, no augmentation", step_rate(x, y, args.batch_size, in_model=False)),
                 ("resnet18 training step, basic augmentation inside the model",
                  step_rate(x, y, args.batch_size, in_model=True))]
    print(f"backend {keras.backend.backend()} on {device_names()[0]}, {args.size}x{args.size}, batch {args.batch_size}")
    print("| what | images/s |\n| --- | --- |")
    for what, rate in rows:
        print(f"| {what} | {rate:.0f} |")


if __name__ == "__main__":
    main()

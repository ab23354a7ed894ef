"""Does the streaming input pipeline keep up with training? Images/s of the pipeline (decode, resize,
augment) beside images/s of the model's training step, measured side by side in one process.

    python benchmarks/pipeline_throughput.py [--images 512] [--size 224] [--model resnet18] [--workers 1,2,4,8]

It writes a replica of JPEG photos (Animals-10-like: 300x225 to 640x480) to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from kerascnn import data, models, training  # noqa: E402
from kerascnn.config import RunConfig  # noqa: E402
from kerascnn.data.pipeline import Batches, augmentation  # noqa: E402
from kerascnn.distribute import device_names  # noqa: E402


def write_photos(root: Path, n: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    sizes = [(300, 225), (400, 300), (640, 480), (500, 375)]
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = sizes[i % len(sizes)]
        smooth = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(smooth).resize((w, h), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg", quality=90)


def pipeline_rate(batches: Batches, repeats: int = 1) -> float:
    """Images/s of a pipeline run by Keras' own PyDataset machinery (its worker threads)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(batches, shuffle=False)
    start, count = time.perf_counter(), 0
    for _ in range(repeats):
        for x, *_ in adapter.get_numpy_iterator():
            count += len(x)
        adapter.on_epoch_end()
    return count / (time.perf_counter() - start)


def step_rate(model_name: str, size: int, batch: int, steps: int) -> float:
    """Images/s of the model's training step on in-memory data (no input pipeline)."""
    model = models.build(model_name, (size, size, 3), 4, image_size=size, weights="none")
    training.compile_model(model, RunConfig("x", model_name, weights="none", label_smoothing=0.0), steps)
    x = np.random.default_rng(0).integers(0, 255, (batch * steps, size, size, 3)).astype("uint8")
    y = np.eye(4, dtype="float32")[np.arange(batch * steps) % 4]
    model.fit(x[:batch], y[:batch], batch_size=batch, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, verbose=0)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--workers", default="1,2,4,8", help="comma-separated worker-thread counts to try")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp), args.images)
        start = time.perf_counter()
        ds = data.load(f"folder:{tmp}", split="0.9,0.05,0.05", image_size=args.size)
        check = args.images / (time.perf_counter() - start)
        shape = ds.image_shape
        rows = []
        for workers in map(int, args.workers.split(",")):
            for augment in ("none", "basic"):
                layers = augmentation(augment, channels=3, seed=0)
                batches = Batches(ds.train, shape, ds.num_classes, args.batch_size, shuffle=True, augment=layers,
                                  workers=workers)
                rows.append((workers, augment, pipeline_rate(batches)))
        model = step_rate(args.model, args.size, args.batch_size, args.steps)
    print(f"backend {keras.backend.backend()} on {device_names()[0]}, {os.cpu_count()} CPUs, {len(ds.train)} JPEGs "
          f"at {args.size}x{args.size},"
          f" batch {args.batch_size}")
    print(f"{args.model} training step: {model:.1f} images/s; loading (listing + checking every file decodes): "
          f"{check:.0f} images/s")
    print("| workers | augmentation | pipeline images/s | pipeline / training step |")
    print("| --- | --- | --- | --- |")
    for workers, augment, rate in rows:
        print(f"| {workers} | {augment} | {rate:.1f} | {rate / model:.1f}x |")


if __name__ == "__main__":
    main()

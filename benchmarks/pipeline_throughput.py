"""Does the input pipeline keep up with training? Images/s delivered by the pipeline over image files,
measured side by side in one process against the model's training step:

- today's path without a cache: every epoch decodes its files in worker threads (``--cache none``),
  with augmentation run as before (the Keras layers on each batch) or as now (`Augmenter`);
- the decoded-image cache: the first (decoding) pass, then later epochs read from RAM, with no
  augmentation, ``--augment basic`` (flip + translation) as now and as before, and ``strong``.

    python benchmarks/pipeline_throughput.py [--images 4500] [--size 224] [--batch-size 32] [--json]
    python benchmarks/pipeline_throughput.py --decoders 1200     # threads against processes for decoding

It writes a replica of JPEG photos (Animals-10-like: 300x225 to 640x480) to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from kerascnn import data, models, training  # noqa: E402
from kerascnn.config import RunConfig  # noqa: E402
from kerascnn.data.augment import Augmenter, augmentation  # noqa: E402
from kerascnn.data.cache import decode_into, decode_splits  # noqa: E402
from kerascnn.data.images import read_image  # noqa: E402
from kerascnn.data.pipeline import Batches  # noqa: E402
from kerascnn.distribute import device_names  # noqa: E402
from kerascnn.resolution import resolve  # noqa: E402


def write_photos(root: Path, n: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    sizes = [(300, 225), (400, 300), (640, 480), (500, 375)]
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = sizes[i % len(sizes)]
        smooth = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(smooth).resize((w, h), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg", quality=90)


class KerasLayerBatches(Batches):
    """Today's augmentation before this benchmark's change: a NumPy flip, then the other Keras layers
    called on the batch (Keras 3.15 on torch resamples one image at a time)."""

    def __init__(self, *args, augment: Augmenter, **kwargs) -> None:
        super().__init__(*args, augment=augmentation("none", flip=True), **kwargs)
        geometric = [layer for layer in augment.layers if not isinstance(layer, keras.layers.RandomFlip)]
        self.layers = keras.layers.Pipeline(geometric)

    def __getitem__(self, batch: int):
        x, *rest = super().__getitem__(batch)
        return (keras.ops.convert_to_numpy(self.layers(x.astype("float32"), training=True)), *rest)


def _decode_chunk(task: tuple[list[str], tuple[int, int, int]]) -> np.ndarray:
    paths, shape = task
    return np.stack([read_image(p, shape) for p in paths])


def decoder_rates(paths: list[str], shape: tuple[int, int, int], workers: int) -> dict[str, float]:
    """Images/s of decoding ``paths`` into one array: in one thread, in ``workers`` threads writing
    into it (what the cache does), and in ``workers`` processes whose pixels are sent back."""
    out = np.empty((len(paths), *shape), np.uint8)
    rates = {}
    for name, threads in (("1 thread", 1), (f"{workers} threads", workers)):
        start = time.perf_counter()
        decode_into(out, paths, shape, threads)
        rates[name] = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    tasks = [(paths[i:i + 64], shape) for i in range(0, len(paths), 64)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, chunk in zip(range(0, len(paths), 64), pool.map(_decode_chunk, tasks)):
            out[i:i + len(chunk)] = chunk
    rates[f"{workers} processes (spawned, pixels pickled back)"] = len(paths) / (time.perf_counter() - start)
    return rates


def epoch_rate(batches: Batches, epochs: int = 1) -> float:
    """Images/s of ``epochs`` whole epochs run by Keras' own PyDataset machinery (its worker threads)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(batches, shuffle=False)
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for x, *_ in adapter.get_numpy_iterator():
            count += len(x)
        adapter.on_epoch_end()
    return count / (time.perf_counter() - start)


def step_rate(model_name: str, size: int, batch: int, steps: int, classes: int) -> float:
    """Images/s of the model's training step on in-memory data (no input pipeline)."""
    model = models.build(model_name, (size, size, 3), classes, image_size=size, weights="none")
    config = resolve(RunConfig("x", model_name, weights="none", label_smoothing=0.0)).training
    training.compile_model(model, config, steps)
    x = np.random.default_rng(0).integers(0, 255, (batch * steps, size, size, 3)).astype("uint8")
    y = np.eye(classes, dtype="float32")[np.arange(batch * steps) % classes]
    model.fit(x[:batch], y[:batch], batch_size=batch, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, verbose=0)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4500, help="JPEGs in the replica (Animals-10's test set: 4,500)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--workers", type=int, default=0, help="pipeline threads (default: kerascnn's)")
    p.add_argument("--epochs", type=int, default=2, help="cached epochs timed per row")
    p.add_argument("--decoders", type=int, default=0, metavar="N",
                   help="only compare decoding N of the files in 1 thread, in threads and in processes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if args.decoders:
        with tempfile.TemporaryDirectory() as tmp:
            write_photos(Path(tmp), args.decoders)
            paths = sorted(str(f) for f in Path(tmp).rglob("*.jpg"))
            workers = os.cpu_count() or 1
            rates = decoder_rates(paths, (args.size, args.size, 3), workers)
        print(f"decoding {len(paths)} JPEGs at {args.size}x{args.size} on {workers} CPUs:")
        print("| decoder | images/s |\n| --- | --- |")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.0f} |")
        return
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp), args.images)
        ds = data.load(f"folder:{tmp}", image_size=args.size)
        every = data.Split.concat([ds.train, ds.val, ds.test])  # all the replica's files, as one epoch
        shape, n = ds.image_shape, len(every)

        def batches(augment: str, before: bool = False) -> Batches:
            kind = KerasLayerBatches if before and augment != "none" else Batches
            kwargs = {"augment": augmentation(augment)} if augment != "none" else {}
            return kind(every, shape, ds.num_classes, args.batch_size, shuffle=True, workers=args.workers or None,
                        **kwargs)

        def row(cache: str, epoch: str, augment: str, rate: float) -> None:
            rows.append({"cache": cache, "epoch": epoch, "augment": augment, "images_per_s": rate})

        row("none", "every", "none", epoch_rate(batches("none")))
        row("none", "every", "basic (Keras layers, before)", epoch_rate(batches("basic", before=True)))
        row("none", "every", "basic", epoch_rate(batches("basic")))
        start = time.perf_counter()
        decode_splits({"train": every}, shape, "ram")
        row("ram", "first (decoding)", "none", n / (time.perf_counter() - start))
        row("ram", "later", "none", epoch_rate(batches("none"), args.epochs))
        row("ram", "later", "basic (Keras layers, before)", epoch_rate(batches("basic", before=True), 1))
        row("ram", "later", "basic", epoch_rate(batches("basic"), args.epochs))
        row("ram", "later", "strong", epoch_rate(batches("strong"), 1))
        step = step_rate(args.model, args.size, args.batch_size, args.steps, ds.num_classes)
    today = {r["augment"]: r["images_per_s"] for r in rows if r["cache"] == "none"}
    for r in rows:
        r["vs_training_step"] = r["images_per_s"] / step
        before = {"none": today["none"], "basic": today["basic (Keras layers, before)"]}.get(r["augment"].split()[0])
        r["vs_today_uncached"] = r["images_per_s"] / before if before else None  # strong: no such row before
    result = {"backend": keras.backend.backend(), "device": device_names()[0], "cpus": os.cpu_count(),
              "images": n, "size": args.size, "batch_size": args.batch_size, "model": args.model,
              "training_step_images_per_s": step, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"backend {result['backend']} on {result['device']}, {result['cpus']} CPUs, {n} JPEGs at "
          f"{args.size}x{args.size}, batch {args.batch_size}; {args.model} training step: {step:.1f} images/s")
    print("| cache | epoch | augmentation | pipeline images/s | / training step | / today (no cache, as before) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        today_ratio = "-" if r["vs_today_uncached"] is None else f"{r['vs_today_uncached']:.1f}x"
        print(f"| {r['cache']} | {r['epoch']} | {r['augment']} | {r['images_per_s']:.0f} | "
              f"{r['vs_training_step']:.1f}x | {today_ratio} |")


if __name__ == "__main__":
    main()

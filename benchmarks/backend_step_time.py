"""Training-step time of the default CNN on each Keras backend installed here, one table.

    python benchmarks/backend_step_time.py [--steps 60] [--batch-size 128] [--jit/--no-jit]

Each backend runs in its own process (Keras picks its backend once per process), one after the
other, on Fashion-MNIST-shaped data (28x28x1, 10 classes) through kerascnn's own input pipeline and
compile settings. An environment with all three backends: `tox -e portability --notest`, then
`.tox/portability/bin/python benchmarks/backend_step_time.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

BACKENDS = ("torch", "jax", "tensorflow")


def measure(steps: int, batch_size: int, jit: bool | None) -> dict:
    import time

    import numpy as np

    from kerascnn import models, training
    from kerascnn.config import RunConfig
    from kerascnn.data import Split
    from kerascnn.data.pipeline import Batches
    from kerascnn.distribute import device_names
    from kerascnn.resolution import resolve

    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 10, steps * batch_size), images=rng.integers(0, 256, (steps * batch_size, 28, 28, 1),
                                                                                dtype=np.uint8))
    batches = Batches(split, (28, 28, 1), 10, batch_size, shuffle=True)
    model = models.build("cnn", (28, 28, 1), 10)
    config = resolve(RunConfig("bench", "cnn", batch_size=batch_size, jit=jit, label_smoothing=0.0)).training
    training.compile_model(model, config, steps)
    model.fit(batches, epochs=1, verbose=0)  # warm-up: tracing, compilation, allocator
    start = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0)
    train = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    model.predict(batches, verbose=0)
    predict = (time.perf_counter() - start) / steps
    return {"train_ms": 1000 * train, "predict_ms": 1000 * predict, "jit": str(model.jit_compile),
            "device": device_names()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, help="force jit on or off (default: Keras' auto)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.steps, args.batch_size, args.jit)))
        return
    rows = {}
    for backend in BACKENDS:
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: not installed, skipped", file=sys.stderr)
            continue
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=path)
        command = [sys.executable, __file__, "--child", backend, "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size)]
        if args.jit is not None:
            command.append("--jit" if args.jit else "--no-jit")
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"{backend}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rows.get("torch", next(iter(rows.values()), None))
    print(f"default cnn, batch {args.batch_size}, {args.steps} steps, {os.cpu_count()} CPUs")
    print("| backend | device | jit | train ms/step | predict ms/step | train time vs torch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for backend, r in rows.items():
        ratio = r["train_ms"] / base["train_ms"] if base else float("nan")
        print(f"| {backend} | {r['device']} | {r['jit']} | {r['train_ms']:.1f} | {r['predict_ms']:.1f} "
              f"| {ratio:.2f}x |")


if __name__ == "__main__":
    main()

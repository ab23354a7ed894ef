"""Time to accuracy: how long the main job takes to reach 93% and 94% test accuracy on Fashion-MNIST.

    python benchmarks/time_to_accuracy.py [--targets 0.93,0.94] [run options, e.g. --backend jax]

Runs ``python -m experiments.run fashion_mnist cnn [run options]`` in a child process with one extra
callback that scores the official test set after every epoch (its own time is left out of every
figure). Reports, per target, the first epoch whose test accuracy reaches it, the training time to
the end of that epoch (``history.csv`` seconds: training and validation) and the wall time since the
child process started; and the wall time from process start to ``metrics.json`` less the
callback's time. One table per machine: run it on each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(out: Path, targets: list[float], run_args: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from experiments.cli import select_backend, setup_logging
    from experiments.run import config_from_args, parser

    argv = ["fashion_mnist", "cnn", "--out", str(out / "run"), *run_args]
    args = parser().parse_args(argv)
    args.argv = argv
    select_backend(args.backend)
    setup_logging()
    import keras
    import numpy as np

    import kerascnn
    from kerascnn import data

    start = float(os.environ["TTA_START"])
    test = data.load("fashion_mnist").test
    rows: list[dict] = []

    class TestAccuracy(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.train_seconds = self.probe_seconds = 0.0

        def on_epoch_end(self, epoch, logs=None):
            self.train_seconds += (logs or {}).get("seconds", 0.0)
            begin = time.time()
            proba = self.model.predict(test.images, batch_size=512, verbose=0)
            accuracy = float(np.mean(proba.argmax(1) == test.labels))
            rows.append({"epoch": epoch + 1, "test_accuracy": accuracy, "train_seconds": self.train_seconds,
                         "wall_seconds": begin - start - self.probe_seconds})
            self.probe_seconds += time.time() - begin

    probe = TestAccuracy()
    config = config_from_args(args)
    run_dir = kerascnn.run(config, callbacks=[probe])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = {"epochs": rows, "final_accuracy": metrics["accuracy"], "backend": keras.backend.backend(),
              "wall_to_metrics_seconds": time.time() - start - probe.probe_seconds,
              "device": config.environment.get("device"), "precision": config.precision,
              "targets": {f"{t:.2f}": next((r for r in rows if r["test_accuracy"] >= t), None) for t in targets}}
    (out / "result.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="0.93,0.94")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args, run_args = p.parse_known_args()
    targets = [float(t) for t in args.targets.split(",")]
    if args.child:
        child(Path(args.child), targets, run_args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, TTA_START=repr(time.time()), PYTHONPATH=path)
        done = subprocess.run([sys.executable, __file__, "--child", tmp, "--targets", args.targets, *run_args],
                              env=env, cwd=ROOT)
        if done.returncode:
            sys.exit(done.returncode)
        result = json.loads((Path(tmp) / "result.json").read_text())
    print(f"python -m experiments.run fashion_mnist cnn {' '.join(run_args)}".strip())
    print(f"{result['backend']} on {result['device']}, precision {result['precision']}: final test accuracy "
          f"{100 * result['final_accuracy']:.2f}%, {result['wall_to_metrics_seconds']:.0f} s from process start "
          "to metrics.json")
    print("| target | first epoch | training time | wall time since start |")
    print("| --- | --- | --- | --- |")
    for target, row in result["targets"].items():
        if row is None:
            print(f"| {100 * float(target):.0f}% | not reached | - | - |")
        else:
            print(f"| {100 * float(target):.0f}% | {row['epoch']} | {row['train_seconds']:.1f} s "
                  f"| {row['wall_seconds']:.1f} s |")


if __name__ == "__main__":
    main()

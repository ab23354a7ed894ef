"""The framework tax: kerascnn's training path against a hand-written PyTorch loop, side by side.

    python benchmarks/framework_tax.py [--json] [--cases cnn,resnet18] [--repeats 5] [--steps N]
                                       [--image-size N] [--batch-size N]
                                       [--precision auto|float32|mixed_bfloat16] [--jit/--no-jit] [--keras]
                                       [--uncaptured]
                                       [--best-practice/--no-best-practice] [--record LABEL]

Both sides train the same network (the default ``cnn`` at 28x28x1, batch 128; ``resnet18`` at 64x64
on CPU with batch 32, at 224 on CUDA with batch 64) with AdamW (3e-3, weight decay 1e-4 off biases and
norms) and a one-cycle schedule, on the same batches already in memory, for the same steps:

- kerascnn: `kerascnn.models.build` + `kerascnn.training.compile_model` + ``model.fit`` over the
  real input pipeline (`kerascnn.data.pipeline.Batches.for_fit` of an in-memory split), as a run does
  (on a GPU the split is copied there once and each batch gathered there: `Batches.on_device`);
- plain PyTorch: an ``nn.Module`` of the same architecture, ``torch.optim.AdamW`` (fused on CUDA),
  ``OneCycleLR``, the idiomatic loop (``zero_grad``, ``backward``, ``step``), NCHW batches already on
  the device.

Both sides compute in ``--precision``: ``auto`` (the default) is what a run's ``--precision auto``
picks on this machine (bfloat16 on a GPU that has it and on a CPU with AMX, see
`kerascnn.models.ModelSpec.auto_precision`); with ``mixed_bfloat16`` kerascnn builds its model under that
Keras dtype policy and the plain loop runs its forward under ``torch.autocast(dtype=torch.bfloat16)``.

The paths alternate (A, B, A, B, ...) ``--repeats`` times in one process after a warm-up each; the
ratio is kerascnn's median time per step over plain PyTorch's. ``--keras`` adds Keras' own train
step (kerascnn's ``--no-jit``, the path before kerascnn's fast steps) as a third path, and
``vs_keras``, the fast path's time over it: the margin the fast path keeps on the installed Keras. Under mixed
precision kerascnn's float32 path runs too, and ``vs_float32`` is the ratio of the two.
``--uncaptured`` adds kerascnn with its train step not captured as a CUDA graph (`FastSteps.GRAPHS`;
the same as the default path off CUDA), and ``vs_uncaptured`` is the ratio of the two. The
best-practice path (channels_last, bf16 autocast on CUDA and under mixed precision,
``torch.compile``) is the limit to aim at.
``--record LABEL`` appends the result, with the command, commit, machine and date, to
``docs/results/framework_tax.json`` as the measurement LABEL (then ``python docs/render_results.py``).
Torch backend only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

LR, WEIGHT_DECAY, EPSILON = 3e-3, 1e-4, 1e-7
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "framework_tax.json"


# -- plain PyTorch models of the same architectures ------------------------------------------------
class PlainCNN(nn.Module):
    """kerascnn's default ``cnn``: 2 blocks of 2x (3x3 conv, BN, ReLU), max-pool, dropout 0.1;
    FC 128 with BN, ReLU, dropout 0.5; FC out. Normalises 0..255 inputs by mean and std."""

    def __init__(self, channels: int, num_classes: int, size: int, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        blocks, cin = [], channels
        for width in (32, 64):
            for _ in range(2):
                blocks += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width, momentum=0.1,
                                                                                           eps=1e-3), nn.ReLU()]
                cin = width
            blocks += [nn.MaxPool2d(2), nn.Dropout(0.1)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 128, bias=False),
                                  nn.BatchNorm1d(128, momentum=0.1, eps=1e-3), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - self.mean) / self.std))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.down = None
        if stride != 1 or cin != width:
            self.down = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class PlainResNet18(nn.Module):
    """torchvision's ResNet-18 with ImageNet normalisation of 0..255 inputs and a new head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", 255 * torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for stage, width in enumerate((64, 128, 256, 512)):
            for b in range(2):
                blocks.append(BasicBlock(cin, width, 2 if b == 0 and stage else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem((x - self.mean) / self.std))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# -- the two training paths ------------------------------------------------------------------------
CASES = {  # name: (kerascnn model, channels, classes, (cpu size, cpu batch), (cuda size, cuda batch))
    "cnn": ("cnn", 1, 10, (28, 128), (28, 128)),
    "resnet18": ("resnet18", 3, 10, (64, 32), (224, 64)),
}


def case_shape(name: str, cuda: bool, size: int | None = None, batch: int | None = None) -> tuple[int, int, int, int]:
    """(image size, channels, classes, batch) of a case on this device; ``size``/``batch`` override."""
    model, channels, classes, cpu, gpu = CASES[name]
    default_size, default_batch = gpu if cuda else cpu
    return size or default_size, channels, classes, batch or default_batch


class KerascnnPath:
    """kerascnn's real path: build, compile as a run does, ``model.fit`` over the input pipeline."""

    def __init__(self, model: str, images: np.ndarray, labels: np.ndarray, classes: int, batch: int,
                 steps: int, jit: bool | None, precision: str, captured: bool = True) -> None:
        """``model``: a kerascnn model name; a scratch CNN normalises with ``images``' statistics, a
        backbone works at their size. ``captured`` False: no CUDA graph of the train step."""
        from kerascnn import models, training
        from kerascnn.config import RunConfig
        from kerascnn.data import Split
        from kerascnn.data.pipeline import Batches
        from kerascnn.resolution import resolve
        from kerascnn.torch_fast import FastSteps

        kwargs = {}
        if models.get(model).cnn is not None:
            kwargs["sample"] = images
        else:
            kwargs["image_size"] = images.shape[1]
        config = resolve(RunConfig("bench", model, batch_size=batch, lr=LR, weight_decay=WEIGHT_DECAY, jit=jit,
                                   weights="none", label_smoothing=0.0, epochs=1000, precision=precision)).training
        # the table of graph classes empty while this model's fast steps are made: none is captured
        with mock.patch.dict(FastSteps.GRAPHS, clear=not captured), models.dtype_policy(precision):
            self.model = models.build(model, images.shape[1:], classes, **kwargs)  # as runner.train builds
            training.compile_model(self.model, config, steps)
        self.batches = Batches(Split(labels, images=images), images.shape[1:], classes, batch, shuffle=True)
        self.fast = training.uses_fast_path(self.model)

    @property
    def captured(self) -> bool:
        """Whether the train step is replayed as a CUDA graph (after the warm-up epoch)."""
        from kerascnn import training

        steps = training.fast_steps(self.model)
        return steps is not None and steps.captured

    def epoch(self) -> None:
        self.model.fit(self.batches.for_fit(), epochs=1, shuffle=False, verbose=0)  # as training.fit


class PlainPath:
    """An idiomatic PyTorch loop over NCHW batches already on the device."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, classes: int, batch: int, steps: int,
                 device: torch.device, precision: str, best_practice: bool = False) -> None:
        size, channels = images.shape[1], images.shape[3]
        if name == "cnn":
            module = PlainCNN(channels, classes, size, float(images.mean()), float(images.std()))
        else:
            module = PlainResNet18(classes)
        self.device, self.best = device, best_practice
        self.bf16 = precision == "mixed_bfloat16" or (best_practice and device.type == "cuda")
        self.model = module.to(device)
        fmt = torch.channels_last if best_practice else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
        self.data = [(x[i:i + batch].to(device), torch.from_numpy(labels[i:i + batch]).long().to(device))
                     for i in range(0, steps * batch, batch)]
        decay = [p for p in self.model.parameters() if p.dim() > 1]
        rest = [p for p in self.model.parameters() if p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=LR, eps=EPSILON, fused=device.type == "cuda" or None)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, LR, total_steps=1000 * steps,
                                                            pct_start=0.3, div_factor=25.0)
        self.step = torch.compile(self._step) if best_practice else self._step

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x.float())
            loss = F.cross_entropy(out.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), (out.argmax(1) == y).sum()

    def epoch(self) -> None:
        self.model.train()
        total, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for x, y in self.data:
            loss, right = self.step(x, y)
            self.optimizer.step()
            self.schedule.step()
            total += loss
            correct += right
        float(total), float(correct)  # the epoch's logs, read once


def timed(path, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    path.epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, repeats: int, steps: int | None, jit: bool | None, best_practice: bool, keras_steps: bool,
            precision: str, size: int | None = None, batch: int | None = None, uncaptured: bool = False) -> dict:
    import keras

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, channels, classes, batch = case_shape(name, device.type == "cuda", size, batch)
    steps = steps or (50 if name == "cnn" else 30) * (2 if device.type == "cuda" else 1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (steps * batch, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, classes, steps * batch)
    paths = {"kerascnn": KerascnnPath(CASES[name][0], images, labels, classes, batch, steps, jit, precision),
             "pytorch": PlainPath(name, images, labels, classes, batch, steps, device, precision)}
    if keras_steps:
        paths["keras"] = KerascnnPath(CASES[name][0], images, labels, classes, batch, steps, False, precision)
    if uncaptured:  # what the CUDA graph of the train step buys, side by side
        paths["kerascnn_uncaptured"] = KerascnnPath(CASES[name][0], images, labels, classes, batch, steps, jit,
                                                    precision, captured=False)
    if precision != "float32":  # what the lower precision buys, side by side
        paths["kerascnn_float32"] = KerascnnPath(CASES[name][0], images, labels, classes, batch, steps, jit, "float32")
    if best_practice:
        paths["pytorch_best"] = PlainPath(name, images, labels, classes, batch, steps, device, precision,
                                          best_practice=True)
    times: dict[str, list[float]] = {k: [] for k in paths}
    for path in paths.values():
        path.epoch()  # warm-up: allocation, cuDNN autotuning, compilation
    for _ in range(repeats):
        for key, path in paths.items():
            times[key].append(timed(path, device) / steps)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    row = {"case": name, "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{os.cpu_count()}",
           "image": f"{size}x{size}x{channels}", "batch": batch, "steps": steps, "repeats": repeats,
           "precision": precision, "fast_path": paths["kerascnn"].fast, "captured": paths["kerascnn"].captured,
           "torch": torch.__version__, "keras": keras.version(),
           **{f"{k}_ms": round(v, 2) for k, v in ms.items()},
           **{f"{k}_images_per_s": round(1000 * batch / v, 1) for k, v in ms.items()},
           "ratio": round(ms["kerascnn"] / ms["pytorch"], 3)}
    if keras_steps:  # vs_keras below 1: the fast path pays on this Keras
        row["keras_ratio"] = round(ms["keras"] / ms["pytorch"], 3)
        row["vs_keras"] = round(ms["kerascnn"] / ms["keras"], 3)
    if uncaptured:
        row["vs_uncaptured"] = round(ms["kerascnn"] / ms["kerascnn_uncaptured"], 3)
    if precision != "float32":
        row["vs_float32"] = round(ms["kerascnn"] / ms["kerascnn_float32"], 3)
    if best_practice:
        row["ratio_vs_best"] = round(ms["kerascnn"] / ms["pytorch_best"], 3)
    return row


def machine() -> str:
    """This machine in words: CPU model and cores, memory, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores of {cpu}, {gpu}"


def record(path: Path, label: str, rows: list[dict], command: str) -> None:
    """Append ``rows`` to the results file ``path`` as the measurement ``label``, with their provenance."""
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                           text=True).stdout.strip()
    data = json.loads(path.read_text())
    if label in data.setdefault("measurements", {}):
        sys.exit(f"{path} already has a measurement {label!r}; choose another --record label")
    short = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    data["measurements"][label] = {"commit": commit, "date": datetime.date.today().isoformat(), "command": command,
                                   "machine": machine(), "machine_short": short,
                                   **({"note": "uncommitted changes"} if dirty else {}), "rows": rows}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"recorded as {label!r} in {path}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="cnn,resnet18")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image-size", type=int, help="image side for every case (default: the case's)")
    p.add_argument("--batch-size", type=int, help="batch for every case (default: the case's)")
    p.add_argument("--steps", type=int, help="steps per timed epoch (default: 50 cnn, 30 resnet18; x2 on CUDA)")
    p.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16"), default="auto",
                   help="both sides' arithmetic (auto: what a run's --precision auto picks here)")
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                   help="kerascnn's --jit/--no-jit (default: the default path)")
    p.add_argument("--best-practice", action=argparse.BooleanOptionalAction, default=None,
                   help="add the channels_last + compile (+ bf16 on CUDA) PyTorch row (default: on CUDA only)")
    p.add_argument("--keras", action="store_true", help="add Keras' own train step (--no-jit) as a path")
    p.add_argument("--uncaptured", action="store_true",
                   help="add kerascnn without the CUDA graph of its train step as a path (vs_uncaptured)")
    p.add_argument("--json", action="store_true", help="print one JSON object with a row per case")
    p.add_argument("--record", metavar="LABEL", help="append the result to docs/results/framework_tax.json as the "
                   "measurement LABEL")
    args = p.parse_args()
    import keras

    if keras.backend.backend() != "torch":
        sys.exit("framework_tax.py measures the torch backend; unset KERAS_BACKEND or set it to torch")
    from kerascnn import models

    cuda = torch.cuda.is_available()
    best = cuda if args.best_practice is None else args.best_practice
    rows = []
    for name in args.cases.split(","):
        size = case_shape(name, cuda, args.image_size)[0]
        precision = args.precision if args.precision != "auto" else models.get(CASES[name][0]).auto_precision(size)
        rows.append(measure(name, args.repeats, args.steps, args.jit, best, args.keras, precision, args.image_size,
                            args.batch_size, args.uncaptured))
    if args.record:
        record(RESULTS, args.record, rows, shlex.join(["python", "benchmarks/framework_tax.py", *sys.argv[1:]]))
    if args.json:
        print(json.dumps({row["case"]: row for row in rows}, indent=2))
        return
    print("| case | device | precision | image, batch | kerascnn ms/step | PyTorch ms/step | ratio "
          "| Keras' step (ratio) | kerascnn float32 ms/step | kerascnn uncaptured ms/step | best practice ms/step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        keras_ms = f"{r['keras_ms']:.1f} ({r['keras_ratio']:.2f}x)" if "keras_ms" in r else "-"
        best_ms = f"{r['pytorch_best_ms']:.1f}" if "pytorch_best_ms" in r else "-"
        float32_ms = f"{r['kerascnn_float32_ms']:.1f}" if "kerascnn_float32_ms" in r else "-"
        uncaptured_ms = f"{r['kerascnn_uncaptured_ms']:.1f}" if "kerascnn_uncaptured_ms" in r else "-"
        print(f"| {r['case']} | {r['device']} | {r['precision']} | {r['image']}, {r['batch']} | {r['kerascnn_ms']:.1f} "
              f"| {r['pytorch_ms']:.1f} | **{r['ratio']:.2f}x** | {keras_ms} | {float32_ms} | {uncaptured_ms} "
              f"| {best_ms} |")


if __name__ == "__main__":
    main()

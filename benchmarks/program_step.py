"""The fast path's forward and backward (`kerascnn.torch_fast.TorchProgram`) against another
revision's, side by side in one process: what a change to the program's ops buys, model by model.

    python benchmarks/program_step.py MODEL [MODEL ...] --against REV [--size 96] [--batch-size 64]
        [--precision float32|mixed_bfloat16] [--repeats 5]

Both programs run the very same Keras model (same variables) on the same batch in training mode:
forward to the logits, then backward of their sum; no optimizer, no ``model.fit``. ``REV`` is any
git revision whose fast path (``kerascnn/torch_fast/``, or ``kerascnn/torch_step.py`` before it
was split) is loaded beside the working tree's. Prints one JSON
line per model: median ms per step of each (alternating, after two warm-up steps each) and
``ratio`` (this tree against REV; below 1 this tree is faster). Torch backend, on the CPU. Both
programs store the shared kernels in the layout they want (`relayout`), the last one built winning:
compare revisions whose `relayout` agrees (bc0cd30's and a9ecbd1's do).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kerascnn import models, torch_fast  # noqa: E402


def module_at(rev: str, folder: Path) -> ModuleType:
    """The fast path as it is at git revision ``rev`` (the ``kerascnn/torch_fast`` package, or the
    ``kerascnn/torch_step.py`` module before it), imported under another name."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "kerascnn/torch_fast"],
                            check=True, capture_output=True, text=True).stdout
    if not listed.strip():
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:kerascnn/torch_step.py"],
                                check=True, capture_output=True, text=True).stdout
        path = folder / "torch_step_at_rev.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("torch_step_at_rev", path)
    else:  # the package's modules import each other relatively: it loads under any name
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "kerascnn/torch_fast"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        package = folder / "kerascnn" / "torch_fast"
        spec = importlib.util.spec_from_file_location("torch_fast_at_rev", package / "__init__.py",
                                                      submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(name: str, other: ModuleType, size: int, batch: int, precision: str, repeats: int) -> dict:
    model = models.build(name, (size, size, 3), 10, image_size=size)
    programs = {"this": torch_fast.TorchProgram(model), "against": other.TorchProgram(model)}
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    bf16 = precision == "mixed_bfloat16"

    def step(program) -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = program(images, training=True, logits=True)
        logits.float().sum().backward()

    times: dict[str, list[float]] = {k: [] for k in programs}
    for program in programs.values():  # warm-up: first-call costs
        step(program)
        step(program)
    for _ in range(repeats):
        for key, program in programs.items():
            start = time.perf_counter()
            step(program)
            times[key].append((time.perf_counter() - start) * 1000)
    ms = {k: round(statistics.median(v), 1) for k, v in times.items()}
    return {"model": name, "size": size, "batch": batch, "precision": precision, "ms_per_step": ms,
            "ratio": round(ms["this"] / ms["against"], 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="kerascnn backbones: mobilenet_v2, efficientnet_b0, ...")
    p.add_argument("--against", required=True, help="the git revision to compare with, e.g. HEAD~1")
    p.add_argument("--size", type=int, default=96, help="working size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per program (median)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        other = module_at(args.against, Path(folder))
        for name in args.models:
            print(json.dumps(measure(name, other, args.size, args.batch_size, args.precision, args.repeats)),
                  flush=True)


if __name__ == "__main__":
    main()

"""A strategy search against the full grid of its space: whether the test accuracy of the search's
confirmed winner (chosen on the confirmation runs' validation accuracy) lies in the 95% interval of
the grid's best configuration (chosen on validation), and the training epochs each spent.

    python -m experiments.study search_digits --out runs/search
    python -m experiments.study search_digits --full-grid --out runs/grid
    python benchmarks/search_vs_grid.py runs/search runs/grid [--record LABEL]

Epochs count the trials, the race's and the winners' confirmation runs against the grid's runs; the runs both
share (what they fine-tune from) and the baselines are left out of both. ``--record LABEL`` appends
the row to docs/results/search_vs_grid.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "search_vs_grid.json"


def trained(study_dir: Path, runs: list[str]) -> tuple[int, float]:
    """Epochs and training seconds of ``runs`` of ``study_dir``, as the search's report counts them
    (`kerascnn.study.search.trained`: their history.csv)."""
    from kerascnn.study.search import trained as trained_run

    counts = [trained_run(study_dir / run) for run in runs]
    return sum(epochs for epochs, _ in counts), sum(seconds for _, seconds in counts)


def compare(search_dir: Path, grid_dir: Path) -> dict:
    """One row: the search's winner, the grid's best by validation, and the epochs of each."""
    search = json.loads((search_dir / "study.json").read_text())
    grid = json.loads((grid_dir / "study.json").read_text())
    name = search["search"].get("winner") or search["search"]["chosen"][0]["config"]  # a report before it: the first
    winner = next(c for c in search["configurations"] if c["configuration"] == name)
    grid_rows = [c for c in grid["configurations"] if c["config"] == "grid" and c.get("val_accuracy") is not None]
    best = max(grid_rows, key=lambda c: c["val_accuracy"])
    low, high = best["accuracy"]["ci95"]
    mean = winner["accuracy"]["mean"]
    compute = search["search"]["compute"]
    grid_epochs, grid_seconds = trained(grid_dir, [run for c in grid_rows for run in c["runs"]])
    chosen = next(c for c in search["search"]["chosen"] if c["config"] == winner["config"])["params"]
    trials = search["search"]["trials"]
    return {
        "search_winner": ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items()),
        "search_test": round(100 * mean, 2),
        "search_std": round(100 * winner["accuracy"]["std"], 2),
        "grid_best": best["configuration"].removeprefix("grid "),
        "grid_test": round(100 * best["accuracy"]["mean"], 2),
        "grid_low": round(100 * low, 2), "grid_high": round(100 * high, 2),
        "within": "yes" if low <= mean <= high else "above" if mean > high else "no",  # above: better than it
        "settings": compute["grid_configurations"],
        "trials": len(trials), "pruned": sum(t["state"] == "pruned" for t in trials),
        "search_epochs": compute["search_epochs"], "grid_epochs": grid_epochs,
        "epoch_ratio": round(compute["search_epochs"] / grid_epochs, 3),
        "search_seconds": round(compute["search_seconds"]),
        "grid_seconds": round(grid_seconds),
    }


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown CPU"
    return f"{os.cpu_count()} cores of {cpu}, no GPU"


def versions() -> dict[str, str]:
    """The libraries a run's numbers depend on, and torch's CPU kernels: a grid reproduces only where all match."""
    from importlib import metadata

    import torch

    found = {name: metadata.version(name) for name in ("torch", "keras", "optuna", "numpy", "pillow", "scikit-learn")}
    return {**found, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("search", type=Path, help="the search's study folder")
    p.add_argument("grid", type=Path, help="the --full-grid study folder of the same file")
    p.add_argument("--record", metavar="LABEL", help="append the row to docs/results/search_vs_grid.json")
    args = p.parse_args()
    row = compare(args.search, args.grid)
    print(json.dumps(row, indent=2))
    if args.record:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        data = json.loads(RESULTS.read_text())
        if args.record in data.setdefault("measurements", {}):
            sys.exit(f"{RESULTS} already has a measurement {args.record!r}; choose another --record label")
        data["measurements"][args.record] = {
            "commit": commit, "date": datetime.date.today().isoformat(), "machine": machine(), "versions": versions(),
            "command": shlex.join(["python", "benchmarks/search_vs_grid.py", *sys.argv[1:]]), "rows": [row]}
        RESULTS.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

"""python -m experiments.study DATASET MODEL --folds 0,1,2,3,4 [run options]: the same run on each
official fold (deep_weeds), then the mean and standard deviation of the test metrics.

Example:
  python -m experiments.study deep_weeds resnet18 --folds 0,1,2,3,4 --unfreeze layer4 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from experiments import run as run_cli
from experiments.cli import add_common_options, main
from kerascnn.errors import KerascnnError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("model")
    p.add_argument("--folds", default="0,1,2,3,4", help="folds to run, comma-separated (default: 0,1,2,3,4)")
    p.add_argument("--out", help="study folder (default: runs/study-DATASET-MODEL-TIMESTAMP); never overwritten")
    add_common_options(p)
    return p


def body(args: argparse.Namespace) -> int:
    from kerascnn.reports import mean_and_std, runs_table, summarize_run

    run_options = parser().parse_known_args(args.argv)[1]
    try:
        folds = [int(f) for f in args.folds.split(",")]
    except ValueError:
        raise KerascnnError(f"--folds takes comma-separated integers, got {args.folds!r}") from None
    out = Path(args.out or f"runs/study-{args.dataset}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists():
        raise KerascnnError(f"study folder {out} already exists; choose another --out")
    run_parser = run_cli.parser()
    for fold in folds:  # check every fold's options before the first one trains
        run_parser.parse_args([args.dataset, args.model, *run_options, "--fold", str(fold), "--out", str(out / "x")])
    rows = []
    for fold in folds:
        argv = [args.dataset, args.model, *run_options, "--fold", str(fold), "--out", str(out / f"fold{fold}")]
        if main(run_cli.body, run_parser, argv) != 0:
            raise KerascnnError(f"fold {fold} failed; the folds before it are in {out}")
        rows.append(summarize_run(out / f"fold{fold}"))
    summary = mean_and_std(rows)
    (out / "study.json").write_text(json.dumps({"folds": folds, "runs": rows, "summary": summary}, indent=2) + "\n")
    means = " | ".join(f"{m} {100 * s['mean']:.2f} ± {100 * s['std']:.2f}" for m, s in summary.items())
    text = f"# {args.dataset} · {args.model} over folds {args.folds}\n\n{runs_table(rows)}\nMean ± std: {means}\n"
    (out / "study.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(body, parser(), known_only=True))

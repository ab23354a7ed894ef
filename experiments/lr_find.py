"""python -m experiments.lr_find DATASET MODEL [--steps 200] [run options] : the learning-rate range
test. Trains for up to STEPS steps with an LR growing exponentially from --start-lr to --end-lr,
plots the smoothed loss against the LR (lr_find.png), prints the suggested LR (a tenth of the one
with the lowest loss) and saves both in lr_find.json. Run options (--unfreeze, --weights,
--optimizer, --batch-size, ...) are experiments.run's; --lr is what the test searches for.

Example:
  python -m experiments.lr_find digits resnet18 --weights none --image-size 32 --batch-size 32
"""

from __future__ import annotations

import argparse
import sys

from experiments import run as run_cli
from experiments.cli import Parser, add_common_options, main


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.lr_find", description=__doc__)
    p.add_argument("dataset")
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=200, help="training steps at most (default: 200)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="LR of the first step (default: 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="LR the last step would reach (default: 10)")
    p.add_argument("--out", help="folder for lr_find.png and lr_find.json (default: RUNS_DIR/lr_find-DATASET-MODEL-"
                   "TIMESTAMP); never overwritten")
    add_common_options(p)
    return p


def body(args: argparse.Namespace) -> int:
    from kerascnn import lr_find, rundir

    run_options = parser().parse_known_args(args.argv)[1]
    argv = [args.dataset, args.model, *run_options]
    run_args = run_cli.parser().parse_args(argv)
    run_args.argv = argv
    config = run_cli.config_from_args(run_args)
    out = rundir.new_path(args.out, config.runs_dir, "lr_find", args.dataset, args.model)
    result = lr_find.range_test(config, steps=args.steps, start=args.start_lr, end=args.end_lr)
    out.mkdir(parents=True, exist_ok=True)
    lr_find.write(result, out)
    print(f"suggested lr: {result.suggestion:.3g} (a tenth of the LR with the lowest smoothed loss)\n{out}")
    return 0


def cli() -> int:
    """The ``kerascnn-lr-find`` console script."""
    return main(body, parser(), known_only=True)


if __name__ == "__main__":
    sys.exit(cli())

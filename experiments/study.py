"""python -m experiments.study DATASET MODEL --folds 0,1,2,3,4 [run options]: the same run on each
official fold (deep_weeds), then the mean and standard deviation of the test metrics.

Example:
  python -m experiments.study deep_weeds resnet18 --folds 0,1,2,3,4 --unfreeze layer4 --epochs 10
"""

from __future__ import annotations

import argparse
import sys

from experiments import run as run_cli
from experiments.cli import Parser, add_common_options, main
from kerascnn.errors import KerascnnError


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.study", description=__doc__)
    p.add_argument("dataset")
    p.add_argument("model")
    p.add_argument("--folds", help="folds to run, comma-separated (default: every official fold of the dataset)")
    p.add_argument("--out", help="study folder (default: RUNS_DIR/study-DATASET-MODEL-TIMESTAMP, RUNS_DIR from "
                   "--runs-dir); never overwritten")
    add_common_options(p)
    return p


def body(args: argparse.Namespace) -> int:
    from kerascnn import rundir
    from kerascnn.config import RunConfig
    from kerascnn.data.registry import FOLDS
    from kerascnn.reports import mean_and_std, runs_table, summarize_run
    from kerascnn.runner import resolve_config, run

    run_options = parser().parse_known_args(args.argv)[1]
    try:
        folds = [int(f) for f in args.folds.split(",")] if args.folds else list(range(FOLDS.get(args.dataset, 1)))
    except ValueError:
        raise KerascnnError(f"--folds takes comma-separated integers, got {args.folds!r}") from None
    if len(set(folds)) != len(folds):
        raise KerascnnError(f"--folds {args.folds}: give each fold once")
    run_parser = run_cli.parser()

    def config(*extra: str) -> RunConfig:
        argv = [args.dataset, args.model, *run_options, *extra]
        run_args = run_parser.parse_args(argv)
        run_args.argv = argv
        return run_cli.config_from_args(run_args)

    out = rundir.new_path(args.out, config().runs_dir, "study", args.dataset, args.model)
    # every fold's config is checked before the first one trains
    configs = [resolve_config(config("--fold", str(fold), "--out", str(out / f"fold{fold}"))) for fold in folds]
    rows = []
    for fold, config in zip(folds, configs):
        try:
            rows.append(summarize_run(run(config)))
        except KerascnnError as exc:
            done = f"; the folds before it are in {out}" if rows else ""
            raise KerascnnError(f"fold {fold} failed: {exc}{done}") from exc
    summary = mean_and_std(rows)
    rundir.write_json(out / "study.json", {"folds": folds, "runs": rows, "summary": summary})
    fold_text = ",".join(map(str, folds))
    means = " | ".join(f"{m} {100 * s['mean']:.2f} ± {100 * s['std']:.2f}" for m, s in summary.items())
    text = f"# {args.dataset} · {args.model} over folds {fold_text}\n\n{runs_table(rows)}\nMean ± std: {means}\n"
    (out / "study.md").write_text(text)
    print(text)
    return 0


def cli() -> int:
    """The ``kerascnn-study`` console script."""
    return main(body, parser(), known_only=True)


if __name__ == "__main__":
    sys.exit(cli())

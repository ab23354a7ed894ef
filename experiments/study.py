"""python -m experiments.study DATASET MODEL --folds 0,1,2,3,4 [run options]: the same run on each
official fold (deep_weeds), then the mean and standard deviation of the test metrics.

Example:
  python -m experiments.study deep_weeds resnet18 --folds 0,1,2,3,4 --unfreeze layer4 --epochs 10
"""

from __future__ import annotations

import argparse
import sys

from experiments import run as run_cli
from experiments.cli import add_common_options, main
from kerascnn.errors import KerascnnError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("model")
    p.add_argument("--folds", default="0,1,2,3,4", help="folds to run, comma-separated (default: 0,1,2,3,4)")
    p.add_argument("--out", help="study folder (default: RUNS_DIR/study-DATASET-MODEL-TIMESTAMP, RUNS_DIR from "
                   "--runs-dir); never overwritten")
    add_common_options(p)
    return p


def body(args: argparse.Namespace) -> int:
    from kerascnn import rundir
    from kerascnn.reports import mean_and_std, runs_table, summarize_run
    from kerascnn.runner import resolve_config, run

    run_options = parser().parse_known_args(args.argv)[1]
    try:
        folds = [int(f) for f in args.folds.split(",")]
    except ValueError:
        raise KerascnnError(f"--folds takes comma-separated integers, got {args.folds!r}") from None
    if len(set(folds)) != len(folds):
        raise KerascnnError(f"--folds {args.folds}: each fold once")
    run_parser = run_cli.parser()
    configs = []
    for fold in folds:  # every fold's config is checked before the first one trains
        argv = [args.dataset, args.model, *run_options, "--fold", str(fold)]
        run_args = run_parser.parse_args(argv)
        run_args.argv = argv
        if hasattr(run_args, "out"):
            raise KerascnnError("--out names the study folder here; each fold's run goes in it as foldN")
        configs.append(resolve_config(run_cli.config_from_args(run_args)))
    out = rundir.create(args.out, configs[0].runs_dir, "study", args.dataset, args.model)
    rows = []
    for fold, config in zip(folds, configs):
        config.out = str(out / f"fold{fold}")
        try:
            run(config)
        except KerascnnError as exc:
            raise KerascnnError(f"fold {fold} failed: {exc}; the folds before it are in {out}") from exc
        rows.append(summarize_run(config.out))
    summary = mean_and_std(rows)
    rundir.write_json(out / "study.json", {"folds": folds, "runs": rows, "summary": summary})
    means = " | ".join(f"{m} {100 * s['mean']:.2f} ± {100 * s['std']:.2f}" for m, s in summary.items())
    text = f"# {args.dataset} · {args.model} over folds {args.folds}\n\n{runs_table(rows)}\nMean ± std: {means}\n"
    (out / "study.md").write_text(text)
    print(text)
    return 0


def cli() -> int:
    """The ``kerascnn-study`` console script."""
    return main(body, parser(), known_only=True)


if __name__ == "__main__":
    sys.exit(cli())

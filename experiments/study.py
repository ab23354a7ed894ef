"""python -m experiments.study STUDY.toml|NAME [--out DIR] [--workers N] [--dry-run] [--only CONFIG] :
a comparison of training strategies, as one study folder of ordinary run folders with study.md,
study.json and comparison.png. A file with a [search] table searches its space with Optuna first,
then confirms the best trials against its baselines (--full-grid runs the whole grid instead).

Running the same command again skips finished runs and resumes interrupted ones from their last
finished epoch (a search goes on with its trials). NAME is a bundled study
(kerascnn/study/bundled/NAME.toml), e.g. transfer_digits or search_digits.

Examples:
  python -m experiments.study transfer_digits
  python -m experiments.study my_study.toml --workers 2
  python -m experiments.study search_digits --workers 2
  python -m experiments.study deep_weeds --engine slurm --engine-option partition=gpu --engine-option gpus_per_node=1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.cli import Parser, add_common_options, main
from kerascnn.errors import KerascnnError

ENGINES = ("local", "submitit-local", "slurm")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.study", description=__doc__)
    p.add_argument("study", help="a study file (.toml) or the name of a bundled one")
    p.add_argument("--out", help="study folder (default: RUNS_DIR/study-NAME, RUNS_DIR from --runs-dir); the same "
                   "folder again resumes the study")
    p.add_argument("--runs-dir", default="runs", help="where the default study folder goes (default: runs)")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at a time on this machine: one GPU each when several are visible, else the CPU "
                        "threads split between them (default: 1)")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this machine; slurm: one SLURM job per run through submitit (pip install "
                        "'kerascnn[slurm]'); submitit-local: submitit's local executor, to try it (default: local)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit parameter (partition=gpu, gpus_per_node=1, timeout_min=600, ...); repeatable")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what has run; train nothing")
    p.add_argument("--only", metavar="CONFIG", help="run one configuration (and what it fine-tunes from)")
    p.add_argument("--full-grid", action="store_true",
                   help="for a search file: run the full grid of its space with the confirmation seeds, as a "
                        "study (default folder RUNS_DIR/study-NAME-grid), to check what the search chose")
    add_common_options(p)
    return p


def body(args: argparse.Namespace) -> int:
    from kerascnn import rundir
    from kerascnn.study import estimated_seconds, load_study, run_study, select, state_of
    from kerascnn.study.search import describe_search, full_grid_study, run_search

    if args.workers < 1:
        raise KerascnnError(f"--workers must be >= 1, got {args.workers}")
    options = {}
    for item in args.engine_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise KerascnnError(f"--engine-option takes KEY=VALUE, got {item!r}")
        options[key] = value
    if options and args.engine == "local":
        raise KerascnnError("--engine-option needs --engine slurm or submitit-local")
    study = load_study(args.study)
    name = f"study-{rundir.slug(study.name)}"
    if args.full_grid:
        if study.search is None:
            raise KerascnnError(f"--full-grid needs a search file (one with a [search] table); {study.path} has none")
        study, name = full_grid_study(study.search, study), f"{name}-grid"
    elif study.search is not None and args.only:
        raise KerascnnError(f"--only is for studies; {study.path} is a search (--full-grid runs its grid)")
    out = Path(args.out).expanduser() if args.out else Path(args.runs_dir).expanduser() / name
    if study.search is not None and args.dry_run:
        print(describe_search(study.search, study, out))
        return 0
    if study.search is not None:
        summary = run_search(study, out, workers=args.workers, engine=args.engine, engine_options=options)
        return _report(summary, out)
    chosen = select(study, args.only)
    if args.dry_run:
        estimates = estimated_seconds(study, out) if out.is_dir() else {}
        print(f"study {study.name} from {study.path} -> {out}")
        for run in chosen:
            state = state_of(run, out) if out.is_dir() else "new"
            role = " (dependency)" if run.dependency else ""
            guess = estimates.get(run.name)
            print(f"  {run.name}{role}: {state}" + (f", about {_duration(guess)} of training" if guess else ""))
        known = [v for v in estimates.values() if v]
        if known:
            print(f"about {_duration(sum(known))} of training left for {len(known)} of {len(estimates)} "
                  "unfinished runs (from the epochs run so far)")
        return 0
    summary = run_study(study, out, workers=args.workers, engine=args.engine, engine_options=options, only=args.only)
    return _report(summary, out)


def _report(summary: dict, out: Path) -> int:
    print((out / "study.md").read_text())
    print(out)
    if summary["failed"]:
        raise KerascnnError(f"{len(summary['failed'])} run(s) failed ({next(iter(summary['failed'].values()))}); "
                            f"the rest are in {out}; fix and run the same command again")
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def cli() -> int:
    """The ``kerascnn-study`` console script."""
    return main(body, parser())


if __name__ == "__main__":
    sys.exit(cli())

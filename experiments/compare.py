"""python -m experiments.compare RUN_DIR... : one table of several runs' settings and test metrics.
Runs tested on different test sets (another dataset, split, fold or split seed) are refused."""

from __future__ import annotations

import argparse
import sys

from experiments.cli import Parser, add_common_options, main


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.compare", description=__doc__)
    p.add_argument("runs", nargs="+", help="run folders (each with config.json and metrics.json)")
    p.add_argument("--markdown", metavar="OUT", help="also write the table to this file (never overwritten)")
    add_common_options(p)
    return p


def body(args: argparse.Namespace) -> int:
    from kerascnn.reports import check_same_test_set, runs_table, summarize_run
    from kerascnn.rundir import check_free

    markdown = check_free(args.markdown, "--markdown", folder=False) if args.markdown else None
    rows = [summarize_run(r) for r in args.runs]
    check_same_test_set(rows)
    table = runs_table(rows)
    print(table, end="")
    if markdown:
        markdown.write_text(table)
    return 0


def cli() -> int:
    """The ``kerascnn-compare`` console script."""
    return main(body, parser())


if __name__ == "__main__":
    sys.exit(cli())

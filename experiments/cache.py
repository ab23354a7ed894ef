"""python -m experiments.cache [--clear | --unused-for DAYS] : the decoded-image cache's entries.

Lists the entries in $KERASCNN_CACHE/decoded (default ~/.cache/kerascnn/decoded), most recently used
first, with their size, image count and shape, and the first file of each (what it is of). --clear
removes every entry, --unused-for DAYS those no run has read for DAYS days; a run that needs a
removed entry decodes its files again. Entries in use by a running process are waited for.

Examples:
  python -m experiments.cache
  python -m experiments.cache --unused-for 30
"""

from __future__ import annotations

import argparse
import sys
import time

from experiments.cli import Parser, main


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.cache", description=__doc__)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--clear", action="store_true", help="remove every entry")
    what.add_argument("--unused-for", type=float, metavar="DAYS", help="remove the entries not read for DAYS days")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def body(args: argparse.Namespace) -> int:
    from kerascnn.data.cache import cache_dir, entries, remove
    from kerascnn.errors import KerascnnError

    if args.unused_for is not None and args.unused_for < 0:
        raise KerascnnError(f"--unused-for must be a number of days >= 0, got {args.unused_for:g}")
    found = entries()
    if args.clear or args.unused_for is not None:
        cutoff = time.time() - 86400 * (args.unused_for or 0)
        gone = [e for e in found if args.clear or e.last_used < cutoff]
        for entry in gone:
            remove(entry)
        kept = len(found) - len(gone)
        print(f"removed {len(gone)} entries ({_gib(sum(e.bytes for e in gone))}) from {cache_dir()}; {kept} kept")
        return 0
    if not found:
        print(f"{cache_dir()}: no entries")
        return 0
    print(f"{cache_dir()}: {len(found)} entries, {_gib(sum(e.bytes for e in found))}")
    print("| key | last used | size | images | shape | first file |\n| --- | --- | --- | --- | --- | --- |")
    for e in found:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        shape = "x".join(map(str, e.shape)) if e.complete else "incomplete (being written, or a killed write)"
        print(f"| {e.key} | {used} | {_gib(e.bytes)} | {e.files if e.complete else '-'} | {shape} | {e.first or '-'} |")
    return 0


def cli() -> int:
    """The ``kerascnn-cache`` console script."""
    return main(body, parser())


if __name__ == "__main__":
    sys.exit(cli())

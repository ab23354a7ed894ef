"""Render the tables of measured results in the docs from the data files in ``docs/results/``.

A page holds a table between two markers; everything between them is generated::

    <!-- results: main_job -->
    ... (the table, rendered from docs/results/main_job.json)
    <!-- /results -->

``<!-- results: NAME key=value ... -->`` keeps only the rows whose ``key`` is ``value``.

A data file has a ``table`` (its ``columns``: ``[title, template]`` pairs, each template a
``str.format`` string over a row's fields) and its rows, either as ``rows`` or grouped under
``measurements`` (``{label: {"commit": ..., "rows": [...]}}``). A row inherits the fields of its group
and of the file (``commit``, ``command``, ``machine``, ``versions``, ...), and ``measurement`` is its
group's label. A cell whose template names a field the row lacks is empty.

    python docs/render_results.py           rewrite the tables of every page under docs/
    python docs/render_results.py --check   exit 1 when a page and its data disagree
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
RESULTS = DOCS / "results"
MARKER = re.compile(r"<!-- results: (?P<name>[\w-]+)(?P<filters>(?: [\w-]+=\S+)*) -->\n.*?<!-- /results -->", re.S)
TABLE_KEYS = ("table", "rows", "measurements")


def load(name: str) -> dict:
    """The data file ``docs/results/NAME.json``."""
    return json.loads((RESULTS / f"{name}.json").read_text())


def rows(data: dict) -> list[dict]:
    """Every row of a data file, with the fields of its group and of the file filled in."""
    shared = {k: v for k, v in data.items() if k not in TABLE_KEYS}
    out = [{**shared, **row} for row in data.get("rows", [])]
    for label, group in data.get("measurements", {}).items():
        fields = {k: v for k, v in group.items() if k != "rows"}
        out += [{**shared, "measurement": label, **fields, **row} for row in group["rows"]]
    return out


class _Fields(dict):
    def __missing__(self, key):
        raise KeyError(key)


def _cell(template: str, row: dict) -> str:
    try:
        text = string.Formatter().vformat(template, (), _Fields(row))
    except (KeyError, ValueError, TypeError):
        return ""
    return text.replace("|", "\\|").replace("\n", " ")


def table(name: str, filters: dict[str, str] | None = None, page: Path | None = None) -> str:
    """The Markdown table of ``docs/results/NAME.json`` (rows matching ``filters``), with a link to the
    file relative to ``page``."""
    data = load(name)
    columns = data["table"]["columns"]
    selected = [r for r in rows(data) if all(str(r.get(k)) == v for k, v in (filters or {}).items())]
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(template, r) for _, template in columns) + " |" for r in selected]
    where = Path(os.path.relpath(RESULTS, (page or DOCS / "index.md").resolve().parent)).as_posix()
    return "\n".join(lines) + f"\n\nData, with commands, machines and versions: [`{name}.json`]({where}/{name}.json)\n"


def render(text: str, page: Path | None = None) -> str:
    """``text`` with every marked table rendered from its data file."""
    def replace(match: re.Match) -> str:
        filters = dict(f.split("=", 1) for f in match["filters"].split())
        head = match.group(0).split("\n", 1)[0]
        return f"{head}\n{table(match['name'], filters, page)}<!-- /results -->"

    return MARKER.sub(replace, text)


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report pages whose tables disagree with the data")
    args = p.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()
        new = render(text, page)
        if new != text:
            stale.append(page.relative_to(DOCS))
            if not args.check:
                page.write_text(new)
    verb = "disagree with their data (run python docs/render_results.py)" if args.check else "rewritten"
    for page in stale:
        print(f"{page}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

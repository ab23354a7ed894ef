"""MkDocs hooks: pages generated from the code at build time, and results checked against their data.

``<!-- options: experiments.run -->`` in a page becomes the option reference of that command, read from
its argparse parser (flags, default, choices, help), so the page cannot drift from the command line.
A page whose results tables (``<!-- results: NAME -->``) disagree with ``docs/results/`` fails the build.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
for path in (DOCS, DOCS.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import render_results  # noqa: E402

OPTIONS = re.compile(r"<!-- options: (?P<module>[\w.]+) -->")


def _escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action: argparse.Action, defaults: dict) -> str:
    default = action.default
    if default is argparse.SUPPRESS:  # a run option: the default lives in RunConfig
        default = defaults.get(action.dest)
    if default is None or default is dataclasses.MISSING or default == []:
        return ""
    if isinstance(default, list):
        default = ",".join(map(str, default))
    return f"`{default}`"


def options(module_name: str) -> str:
    """The Markdown reference of ``python -m MODULE``'s options, one table per argument group."""
    module = importlib.import_module(module_name)
    parser = module.parser()
    formatter = parser._get_formatter()
    from kerascnn.config import RunConfig  # the defaults of options generated from it (argparse.SUPPRESS)

    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = {"positional arguments": "arguments", "optional arguments": "options"}.get(group.title, group.title)
        out += [f"**{title}**", "", "| option | default | choices | what it does |", "| --- | --- | --- | --- |"]
        for action in actions:
            if action.option_strings:
                flags = ", ".join(action.option_strings)
                if action.nargs != 0:
                    flags += " " + (action.metavar or action.dest.upper())
            else:
                flags = action.metavar or action.dest.upper()
            choices = ", ".join(f"`{c}`" for c in action.choices) if action.choices else ""
            help_text = formatter._expand_help(action) if action.help else ""
            out.append(f"| `{_escape(flags)}` | {_escape(_default(action, defaults))} | {choices} "
                       f"| {_escape(help_text)} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    from mkdocs.exceptions import PluginError

    source = Path(page.file.abs_src_path)
    if render_results.render(markdown, source) != markdown:
        raise PluginError(f"{page.file.src_path}: its results tables disagree with docs/results/; "
                          "run python docs/render_results.py")
    return OPTIONS.sub(lambda m: options(m["module"]), markdown)

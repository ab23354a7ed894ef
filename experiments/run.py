"""python -m experiments.run DATASET MODEL [options]: train, evaluate and report one run.

Examples:
  python -m experiments.run fashion_mnist cnn
  python -m experiments.run fashion_mnist cnn2bn --optimizer adam --lr 1e-3 --lr-schedule constant \\
      --epochs 20 --flip --rotate 10
  python -m experiments.run folder:~/photos/pets cnn --image-size 96 --augment basic
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from experiments.cli import Parser, add_common_options, main
from kerascnn import config as schema
from kerascnn.config import RunConfig
from kerascnn.errors import KerascnnError

COMMAND_ARGS = ("backend", "debug", "argv", "list_stages", "resume")  # what is not a RunConfig setting


def add_run_options(parser: argparse.ArgumentParser, config_class: type | None = None) -> None:
    """One argument per option of ``config_class`` (default: `RunConfig`), generated from its
    `kerascnn.config.Option` fields: help, choices, type and group. An option left out is absent from
    the parsed namespace, so that the dataclass applies its default."""
    config_class = config_class or schema.RunConfig
    hints = schema.field_types(config_class)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(config_class):
        rules = field.metadata.get("option")
        if rules is None:
            continue
        help_text = rules.text()
        if rules.positional:
            parser.add_argument(field.name, nargs="?", help=help_text)
            continue
        if rules.group not in groups:
            groups[rules.group] = parser.add_argument_group(rules.group)
        kind = schema.value_type(hints[field.name])
        kwargs: dict = {"metavar": rules.metavar}
        if kind is bool:
            kwargs = {"action": argparse.BooleanOptionalAction}
        else:
            kwargs["type"] = rules.parse or (schema.int_list if kind is list else kind)
            if rules.choices:
                kwargs["choices"] = rules.choices
        if field.default not in (None, dataclasses.MISSING) and "default:" not in help_text \
                and "preset" not in help_text:
            help_text = f"{help_text} (default: {field.default})"
        groups[rules.group].add_argument(schema.flag(field.name), dest=field.name, default=argparse.SUPPRESS,
                           help=help_text.replace("%", "%%"), **kwargs)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.run", description=__doc__)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted or failed run from its last complete "
                   "epoch, with the settings in its config.json")
    p.add_argument("--list-stages", metavar="MODEL",
                   help="print MODEL's stages with their parameter counts (at --image-size) and exit")
    add_run_options(p)
    add_common_options(p)
    return p


def list_stages(model_name: str, image_size: int | None) -> None:
    """Print each stage of ``model_name`` with its learnable parameters (head for 10 classes), at
    ``image_size`` (default: the model's own size, else the size image files are decoded at)."""
    from kerascnn import data, models

    spec = models.get(model_name)
    size = image_size or spec.decode_size(None) or data.DEFAULT_FILE_IMAGE_SIZE
    model = models.build(model_name, (size, size, 1 if spec.cnn else 3), 10)
    print(f"{model_name} stages at {size}x{size} (--unfreeze names; head for 10 classes):")
    for stage, params in models.stage_params(model).items():
        print(f"  {stage:<12} {params:>12,}")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The `RunConfig` of parsed ``experiments.run`` arguments (with the command line recorded)."""
    if not args.dataset or not args.model:
        raise KerascnnError("give a DATASET and a MODEL, e.g. python -m experiments.run fashion_mnist cnn")
    options = {k: v for k, v in vars(args).items() if k not in COMMAND_ARGS}
    command = shlex.join(["python", "-m", "experiments.run", *args.argv])
    return schema.RunConfig(**options, environment={"command": command})


def body(args: argparse.Namespace) -> int:
    from kerascnn.runner import resume, run

    if args.list_stages:
        list_stages(args.list_stages, getattr(args, "image_size", None))
        return 0
    if args.resume:
        settings = [k for k in vars(args) if k not in (*COMMAND_ARGS, "dataset", "model")]
        if settings or args.dataset or args.model:
            raise KerascnnError("--resume takes every setting from RUN_DIR/config.json; give it alone")
        print(resume(args.resume))
        return 0
    print(run(config_from_args(args)))
    return 0


def cli() -> int:
    """The ``kerascnn-run`` console script."""
    return main(body, parser())


if __name__ == "__main__":
    sys.exit(cli())

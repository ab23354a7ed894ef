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
from collections.abc import Callable

from experiments.cli import Parser, add_common_options, int_list, main
from kerascnn.config import (
    ACTIVATIONS,
    AUGMENTS,
    BN_POLICIES,
    CACHE_MODES,
    CALIBRATIONS,
    CLASS_WEIGHTS,
    DEEP_FINETUNE_LR,
    DEFAULT_LR,
    LR_SCALINGS,
    LR_SCHEDULES,
    OPTIMIZERS,
    POOLS,
    PRECISIONS,
    TTAS,
    RunConfig,
)
from kerascnn.data.registry import DEFAULT_FILE_IMAGE_SIZE, FOLDS, dataset_names
from kerascnn.errors import KerascnnError
from kerascnn.models.registry import MODELS, ModelSpec, model_names

DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}
COMMAND_ARGS = ("backend", "debug", "argv", "list_stages", "resume")  # what is not a RunConfig setting


def _opt(group, flag: str, help: str, **kwargs) -> None:
    """An option whose default lives in `RunConfig` (shown in the help, applied by the dataclass)."""
    dest = flag.lstrip("-").replace("-", "_")
    default = DEFAULTS.get(dest)
    if default is not None and default is not dataclasses.MISSING and "preset" not in help:
        help = f"{help} (default: {default})"
    group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=help, **kwargs)


def _by_model(value: Callable[[ModelSpec], object], otherwise: object) -> str:
    """A registry default for the help: ``"224 for resnet18, ...; else 64"``, read from the records."""
    groups: dict[object, list[str]] = {}
    for name, spec in MODELS.items():
        if value(spec) not in (None, otherwise):
            groups.setdefault(value(spec), []).append(name)
    return ", ".join(f"{v} for {'/'.join(names)}" for v, names in groups.items()) + f"; else {otherwise}"


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.run", description=__doc__)
    p.add_argument("dataset", nargs="?", help=", ".join(dataset_names()) + " (CSV columns: path,label[,split])")
    p.add_argument("model", nargs="?", help=", ".join(model_names()))
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted or failed run from its last complete "
                   "epoch, with the settings in its config.json")
    p.add_argument("--list-stages", metavar="MODEL",
                   help="print MODEL's stages with their parameter counts (at --image-size) and exit")
    d = p.add_argument_group("data")
    _opt(d, "--data-dir", "folder holding the dataset (default: $KERASCNN_DATA, ~/.kerascnn/datasets/NAME)")
    _opt(d, "--split", "re-split all data: per-class counts 300,75,75 or fractions 0.7,0.15,0.15")
    _opt(d, "--fold", "which official fold (" + ", ".join(f"{name}: 0..{n - 1}" for name, n in FOLDS.items()) + ")",
         type=int)
    _opt(d, "--val-split", "fraction of each class of train kept for validation when a set has no validation split",
         type=float)
    working = _by_model(lambda s: s.image_size, "the data's own size")
    decoded = _by_model(lambda s: s.decode_size(None), DEFAULT_FILE_IMAGE_SIZE)
    _opt(d, "--image-size", "square size the model works at (resized inside the model; file datasets are "
         f"decoded at it; default: {working}; image files: {decoded})", type=int)
    m = p.add_argument_group("scratch CNN architecture (defaults: the model preset)")
    _opt(m, "--filters", "conv widths, one block each, e.g. 32,64 (preset)", type=int_list)
    _opt(m, "--convs-per-block", "convolutions per block: one count, or one per block, e.g. 1,2,2 (preset)",
         type=int_list)
    _opt(m, "--kernel-size", "convolution kernel size (preset)", type=int)
    _opt(m, "--batch-norm", "batch normalisation after each conv (preset)", action=argparse.BooleanOptionalAction)
    _opt(m, "--activation", "activation (preset)", choices=ACTIVATIONS)
    _opt(m, "--pool", "pooling after each block (preset)", choices=POOLS)
    _opt(m, "--norm-after-pool", "pool each block's last convolution before its batch norm and activation, a "
         "quarter of their work (preset)", action=argparse.BooleanOptionalAction)
    _opt(m, "--dropout", "dropout after each conv block (preset)", type=float)
    _opt(m, "--dense", "hidden fully connected layers, e.g. 128 or none (preset)", type=int_list)
    _opt(m, "--head-dropout", "dropout before the classifier (preset; 0 for backbones)", type=float)
    f = p.add_argument_group("transfer learning")
    ported = "/".join(name for name, spec in MODELS.items() if spec.torchvision_url)
    _opt(f, "--weights", f"imagenet, none, or a .pth ({ported}), .weights.h5 or earlier run's model.keras "
         "(default: imagenet for pretrained models, else none)")
    _opt(f, "--unfreeze", "none, all or STAGE[,STAGE...] (e.g. layer3,layer4) trained beside the head "
         "(default: none with pretrained weights, all from scratch); see --list-stages")
    _opt(f, "--unfreeze-at", "train the head alone until this epoch, then the --unfreeze stages too", type=int,
         metavar="EPOCH")
    _opt(f, "--finetune-lr", "peak LR after --unfreeze-at (default: --lr / 10)", type=float)
    _opt(f, "--bn-policy", "batch norms of unfrozen stages: train (update statistics) or frozen",
         choices=BN_POLICIES)
    _opt(f, "--backbone-lr-scale", "backbone LR = this x the head's LR (discriminative learning rates)", type=float)
    t = p.add_argument_group("training")
    _opt(t, "--epochs", "maximum epochs", type=int)
    _opt(t, "--batch-size", "images per step", type=int)
    _opt(t, "--optimizer", "optimizer", choices=OPTIMIZERS)
    _opt(t, "--lr", f"peak learning rate (default: {DEFAULT_LR:g}; {DEEP_FINETUNE_LR:g} when two or more stages of a "
         "pretrained backbone train from the first epoch, as the transfer_digits study chose)", type=float)
    _opt(t, "--momentum", "SGD momentum", type=float)
    _opt(t, "--nesterov", "Nesterov momentum for SGD", action="store_true")
    _opt(t, "--weight-decay", "decoupled weight decay (not on biases and norms)", type=float)
    _opt(t, "--label-smoothing", "label smoothing of the cross-entropy "
         f"(default: {_by_model(lambda s: s.label_smoothing, 0.0)})",
         type=float)
    _opt(t, "--lr-schedule", "learning-rate schedule (default: step with --lr-step, else onecycle)",
         choices=LR_SCHEDULES)
    _opt(t, "--lr-step", "epochs between step decays (implies --lr-schedule step)", type=int)
    _opt(t, "--lr-gamma", "factor of each step decay or plateau reduction", type=float)
    _opt(t, "--patience", "early stopping: epochs without a better validation loss; 0 turns it off", type=int)
    _opt(t, "--augment", "augmentation preset: basic = flip + translate 0.1; strong adds zoom 0.1, rotation 15 and "
         "RandAugment (2 ops per image at magnitude 9, as timm's rand-m9-n2)",
         choices=AUGMENTS)
    _opt(t, "--flip", "random horizontal flips", action="store_true")
    _opt(t, "--rotate", "random rotation up to DEG degrees", type=float, metavar="DEG")
    _opt(t, "--translate", "random shifts up to this fraction of the size", type=float, metavar="F")
    _opt(t, "--erase", "random erasing: the probability that a training image gets one box (2-33%% of it) of "
         "noise, e.g. 0.25", type=float, metavar="P")
    _opt(t, "--mixup", "MixUp with Beta(ALPHA, ALPHA) mixing weights (timm uses 0.8; 0: off)", type=float,
         metavar="ALPHA")
    _opt(t, "--cutmix", "CutMix with Beta(ALPHA, ALPHA) box areas (timm uses 1.0; 0: off); with --mixup each "
         "batch takes one of the two", type=float, metavar="ALPHA")
    _opt(t, "--class-weight", "weight the loss by inverse class frequency", choices=CLASS_WEIGHTS)
    _opt(t, "--seed", "seed of splits, initialisation, shuffling and augmentation", type=int)
    _opt(t, "--split-seed", "seed of the train/val/test split alone (default: --seed)", type=int)
    _opt(t, "--workers", "input pipeline threads (default: 0 = automatic)", type=int)
    _opt(t, "--cache", "decoded-image cache of image-file datasets: ram, disk (a memory map in $KERASCNN_CACHE, "
         "default ~/.cache/kerascnn, reused by later runs), auto (a disk entry if one exists, else RAM when it "
         "fits in half the free memory, else disk) or none (decode every epoch)", choices=CACHE_MODES)
    n = p.add_argument_group("devices and numerics")
    _opt(n, "--devices", "N or all: data-parallel training on N devices (jax: keras.distribution.DataParallel, "
         "tensorflow: MirroredStrategy; not on torch); --batch-size is per device", metavar="N|all")
    _opt(n, "--lr-scaling", "with several devices: linear multiplies --lr by their number, none keeps it",
         choices=LR_SCALINGS)
    _opt(n, "--precision", "Keras dtype policy (auto: mixed_bfloat16 on a GPU that has bfloat16 and, on torch, a CPU "
         "with AMX; else float32); "
         "softmax and loss stay float32", choices=PRECISIONS)
    _opt(n, "--jit", "torch: --no-jit trains with Keras' own steps instead of kerascnn's fast torch steps, "
         "--jit compiles those with torch.compile; jax/tensorflow: jit_compile (default: Keras' auto)",
         action=argparse.BooleanOptionalAction)
    o = p.add_argument_group("output")
    _opt(o, "--out", "run folder to create (default: RUNS_DIR/DATASET-MODEL-TIMESTAMP); never overwritten")
    _opt(o, "--runs-dir", "where default run folders go")
    _opt(o, "--tta", "test-time augmentation of the test set: flip averages each image's probabilities with its "
         "mirror's (metrics.json also gives the scores without)", choices=TTAS)
    _opt(o, "--calibrate", "temperature: fit one temperature on the validation split (minimum NLL) and divide the "
         "logits by it in model.keras, its exports and predictions (metrics.json gives the test scores before and "
         "after; accuracy does not change)", choices=CALIBRATIONS)
    _opt(o, "--top-k", "k of the top-k accuracy reported, below the number of classes (default: 5 where there are "
         "more classes; 2 and 3 are always reported)", type=int)
    _opt(o, "--verbose", "Keras progress: 0 silent, 1 progress bar, 2 one line per epoch", type=int, choices=(0, 1, 2))
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
    return RunConfig(**options, environment={"command": command})


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

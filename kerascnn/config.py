"""`RunConfig`: every setting of one run, validated up front and saved as ``config.json``.

Each option is one field declared with `option`: its help, group, choices or range, and whether it is a
hyper-parameter. The command line (`experiments.run`), validation, a study's hyper-parameters and the
docs' options page are generated from those fields.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerascnn.data.splits import parse_split
from kerascnn.errors import KerascnnError
from kerascnn.models import registry
from kerascnn.models.stages import choose_stages

# Peak LRs of AdamW with one-cycle: the lower one whenever two or more stages of a pretrained backbone
# train from the first epoch, else the higher one (docs/design/learning-rates.md).
DEFAULT_LR, DEEP_FINETUNE_LR = 3e-3, 3e-4
EXPORT_FORMATS = ("onnx", "savedmodel", "keras")  # experiments.export's (kerascnn.export)
GROUPS = ("run", "data", "scratch CNN architecture (defaults: the model preset)", "transfer learning", "training",
          "devices and numerics", "output")


@dataclass(frozen=True)
class Option:
    """How a `RunConfig` field is given on the command line and in study files, and checked.

    ``low``/``high`` bound a number (or each integer of a list), open where ``open`` says so
    (``"low"``, ``"high"``, ``"both"``); ``hyper`` marks a setting that tunes a strategy rather than
    makes another one (`kerascnn.study`); ``applies`` is ``"all"`` or ``"cnn"`` (scratch CNNs only).
    ``help`` may be a function, for text read from the registries when the parser is built.
    """

    help: str | Callable[[], str]
    group: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    open: str = ""
    what: str = ""  # the kind of value in the range's error: "a probability", "degrees"
    hyper: bool = False
    applies: str = "all"
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # the command line's parser of the text (default: the field's type)
    positional: bool = False

    def text(self) -> str:
        """The help text (a ``help`` function is called now)."""
        return self.help() if callable(self.help) else self.help


def option(default: Any, help: str | Callable[[], str], group: str, **rules: Any) -> Any:
    """A `RunConfig` field with its `Option` (the keyword arguments), the one place an option is defined."""
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}")
    return field(default=default, metadata={"option": Option(help, group, **rules)})


def int_list(text: str) -> list[int]:
    """``"32,64"`` -> [32, 64]; ``"none"`` or ``""`` -> []."""
    import argparse

    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _verbosity(text: str) -> int | str:
    """``--verbose``: ``auto`` or a number."""
    return text if text == "auto" else int(text)


def _by_model(value: Callable[[registry.ModelSpec], object], otherwise: object) -> str:
    """A registry default for the help: ``"224 for resnet18/..., ...; else 64"``."""
    groups: dict[object, list[str]] = {}
    for name, spec in registry.MODELS.items():
        if value(spec) not in (None, otherwise):
            groups.setdefault(value(spec), []).append(name)
    return ", ".join(f"{v} for {'/'.join(names)}" for v, names in groups.items()) + f"; else {otherwise}"


def _folds_help() -> str:
    from kerascnn.data.registry import FOLDS

    return "which official fold (" + ", ".join(f"{name}: 0..{n - 1}" for name, n in FOLDS.items()) + ")"


def _image_size_help() -> str:
    from kerascnn.data.registry import DEFAULT_FILE_IMAGE_SIZE

    working = _by_model(lambda s: s.image_size, "the data's own size")
    decoded = _by_model(lambda s: s.decode_size(None), DEFAULT_FILE_IMAGE_SIZE)
    return ("square size the model works at (resized inside the model; file datasets are decoded at it; "
            f"default: {working}; image files: {decoded})")


def _dataset_help() -> str:
    from kerascnn.data.registry import dataset_names

    return ", ".join(dataset_names()) + " (CSV columns: path,label[,split])"


DATA, CNN, TRANSFER, TRAINING, DEVICES, OUTPUT = GROUPS[1:]


@dataclass
class RunConfig:
    """All settings of one run. ``None`` means "the dataset's or model preset's default"."""

    dataset: str = option(dataclasses.MISSING, _dataset_help, "run", positional=True)
    model: str = option(dataclasses.MISSING, lambda: ", ".join(registry.model_names()), "run", positional=True)
    # data
    data_dir: str | None = option(None, "folder holding the dataset (default: $KERASCNN_DATA, "
                                  "~/.kerascnn/datasets/NAME)", DATA)
    split: str | None = option(None, "re-split all data: per-class counts 300,75,75 or fractions 0.7,0.15,0.15",
                               DATA)
    val_split: float = option(0.1, "fraction of each class of train kept for validation when a set has no "
                              "validation split", DATA, low=0, high=1, open="high")
    image_size: int | None = option(None, _image_size_help, DATA, low=1)
    fold: int = option(0, _folds_help, DATA, low=0)
    # scratch CNN architecture (None: the preset's value)
    filters: list[int] | None = option(None, "conv widths, one block each, e.g. 32,64 (preset)", CNN, low=1,
                                       applies="cnn")
    convs_per_block: list[int] | None = option(None, "convolutions per block: one count, or one per block, "
                                               "e.g. 1,2,2 (preset)", CNN, low=1, applies="cnn")
    kernel_size: int | None = option(None, "convolution kernel size (preset)", CNN, low=1, applies="cnn")
    batch_norm: bool | None = option(None, "batch normalisation after each conv (preset)", CNN, applies="cnn")
    activation: str | None = option(None, "activation (preset)", CNN, choices=("relu", "leaky_relu", "gelu"),
                                    applies="cnn")
    pool: str | None = option(None, "pooling after each block (preset)", CNN, choices=("max", "avg"), applies="cnn")
    norm_after_pool: bool | None = option(None, "pool each block's last convolution before its batch norm and "
                                          "activation, a quarter of their work (preset)", CNN, applies="cnn")
    dropout: float | None = option(None, "dropout after each conv block (preset)", CNN, low=0, high=1, open="high",
                                   hyper=True, applies="cnn")
    dense: list[int] | None = option(None, "hidden fully connected layers, e.g. 128 or none (preset)", CNN, low=1,
                                     applies="cnn")
    head_dropout: float | None = option(None, "dropout before the classifier (preset; 0 for backbones)", CNN, low=0,
                                        high=1, open="high", hyper=True)
    # transfer learning (None: imagenet for pretrained models, else none; none/all by weights)
    weights: str | None = option(
        None, lambda: "imagenet, none, or a .pth (" + "/".join(n for n, s in registry.MODELS.items()
                                                            if s.torchvision_url)
        + "), .weights.h5 or earlier run's model.keras (default: imagenet for pretrained models, else none)", TRANSFER)
    unfreeze: str | None = option(None, "none, all or STAGE[,STAGE...] (e.g. layer3,layer4) trained beside the head "
                                  "(default: none with pretrained weights, all from scratch); see --list-stages",
                                  TRANSFER)
    unfreeze_at: int | None = option(None, "train the head alone for the first EPOCH epochs (0: none), then the "
                                     "--unfreeze stages too", TRANSFER, metavar="EPOCH")
    finetune_lr: float | None = option(None, "peak LR after --unfreeze-at (default: --lr / 10)", TRANSFER, low=0,
                                       open="low", hyper=True)
    bn_policy: str = option("train", "batch norms of unfrozen stages: train (update statistics) or frozen", TRANSFER,
                            choices=("train", "frozen"))
    backbone_lr_scale: float = option(1.0, "backbone LR = this x the head's LR (discriminative learning rates)",
                                      TRANSFER, low=0, hyper=True)
    # training
    epochs: int = option(14, "maximum epochs", TRAINING, low=1, hyper=True)
    batch_size: int = option(128, "images per step", TRAINING, low=1, hyper=True)
    optimizer: str = option("adamw", "optimizer", TRAINING, choices=("adam", "adamw", "sgd"), hyper=True)
    lr: float | None = option(None, f"peak learning rate (default: {DEFAULT_LR:g}; {DEEP_FINETUNE_LR:g} when two or "
                              "more stages of a pretrained backbone train from the first epoch, as the transfer_digits "
                              "study chose)", TRAINING, low=0, open="low", hyper=True)
    momentum: float = option(0.9, "SGD momentum", TRAINING, low=0, hyper=True)
    nesterov: bool = option(False, "Nesterov momentum for SGD", TRAINING, hyper=True)
    weight_decay: float = option(1e-4, "decoupled weight decay (not on biases and norms)", TRAINING, low=0, hyper=True)
    label_smoothing: float | None = option(
        None, lambda: f"label smoothing of the cross-entropy (default: {_by_model(lambda s: s.label_smoothing, 0.0)})",
        TRAINING, low=0, high=1, open="high", hyper=True)
    lr_schedule: str | None = option(None, "learning-rate schedule (default: step with --lr-step, else onecycle)",
                                     TRAINING, choices=("constant", "step", "cosine", "onecycle", "plateau"),
                                     hyper=True)
    lr_step: int | None = option(None, "epochs between step decays (implies --lr-schedule step)", TRAINING, low=1,
                                 hyper=True)
    lr_gamma: float = option(0.1, "factor of each step decay or plateau reduction", TRAINING, low=0, high=1,
                             open="low", hyper=True)
    patience: int = option(5, "early stopping: epochs without a better validation loss; 0 turns it off", TRAINING,
                           low=0, hyper=True)
    augment: str = option("none", "augmentation preset: basic = flip + translate 0.1; strong adds zoom 0.1, rotation "
                          "15 and RandAugment (2 ops per image at magnitude 9, as timm's rand-m9-n2)", TRAINING,
                          choices=("none", "basic", "strong"), hyper=True)
    flip: bool = option(False, "random horizontal flips", TRAINING, hyper=True)
    rotate: float = option(0.0, "random rotation up to DEG degrees", TRAINING, low=0, high=180, what="degrees",
                           metavar="DEG", hyper=True)
    translate: float = option(0.0, "random shifts up to this fraction of the size", TRAINING, low=0, high=1,
                              open="high", what="a fraction", metavar="F", hyper=True)
    erase: float = option(0.0, "random erasing: the probability that a training image gets one box (2-33% of it) of "
                          "noise, e.g. 0.25", TRAINING, low=0, high=1, what="a probability", metavar="P", hyper=True)
    mixup: float = option(0.0, "MixUp with Beta(ALPHA, ALPHA) mixing weights (timm uses 0.8; 0: off)", TRAINING,
                          low=0, what="the alpha of a Beta distribution (0: off)", metavar="ALPHA", hyper=True)
    cutmix: float = option(0.0, "CutMix with Beta(ALPHA, ALPHA) box areas (timm uses 1.0; 0: off); with --mixup each "
                           "batch takes one of the two", TRAINING, low=0,
                           what="the alpha of a Beta distribution (0: off)", metavar="ALPHA", hyper=True)
    class_weight: str = option("none", "weight the loss by inverse class frequency", TRAINING,
                               choices=("none", "balanced"))
    seed: int = option(0, "seed of splits, initialisation, shuffling and augmentation", TRAINING, low=0)
    split_seed: int | None = option(None, "seed of the train/val/test split alone (default: --seed)", TRAINING, low=0)
    workers: int = option(0, "input pipeline threads (default: 0 = automatic)", TRAINING, low=0)
    cache: str = option("auto", "decoded-image cache of image-file datasets: ram, disk (a memory map in "
                        "$KERASCNN_CACHE, default ~/.cache/kerascnn, reused by later runs), auto (a disk entry if one "
                        "exists, else RAM when it fits in half the free memory, else disk) or none (decode every "
                        "epoch)", TRAINING, choices=("auto", "ram", "disk", "none"))
    # devices and numerics
    devices: str = option("1", "N or all: data-parallel training on N devices (jax: keras.distribution.DataParallel, "
                          "tensorflow: MirroredStrategy; not on torch); --batch-size is per device", DEVICES,
                          metavar="N|all")
    lr_scaling: str = option("linear", "with several devices: linear multiplies --lr by their number, none keeps it",
                             DEVICES, choices=("linear", "none"))
    precision: str = option("auto", "Keras dtype policy (auto: mixed_bfloat16 on a GPU that has bfloat16 and, on "
                            "torch, a CPU with AMX; else float32); softmax and loss stay float32", DEVICES,
                            choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"))
    jit: bool | None = option(None, "torch: --no-jit trains with Keras' own steps instead of kerascnn's fast torch "
                              "steps, --jit compiles those with torch.compile; jax/tensorflow: jit_compile (default: "
                              "Keras' auto)", DEVICES)
    # outputs
    out: str | None = option(None, "run folder to create (default: RUNS_DIR/DATASET-MODEL-TIMESTAMP); never "
                             "overwritten", OUTPUT)
    runs_dir: str = option("runs", "where default run folders go", OUTPUT)
    tta: str = option("none", "test-time augmentation of the test set: flip averages each image's probabilities with "
                      "its mirror's (metrics.json also gives the scores without)", OUTPUT, choices=("none", "flip"))
    calibrate: str = option("none", "temperature: fit one temperature on the validation split (minimum NLL) and "
                            "divide the logits by it in model.keras, its exports and predictions (metrics.json gives "
                            "the test scores before and after; accuracy does not change)", OUTPUT,
                            choices=("none", "temperature"))
    top_k: int | None = option(None, "k of the top-k accuracy reported, below the number of classes (default: 5 where "
                               "there are more classes; 2 and 3 are always reported)", OUTPUT, low=1)
    verbose: int | str = option("auto", "Keras progress: 0 silent, 1 progress bar, 2 one line per epoch (auto: the "
                                "bar on a terminal, else 2)", OUTPUT, choices=("auto", 0, 1, 2), parse=_verbosity)
    # filled in by `kerascnn.resolution.resolve`: the resolved architecture; backend, device, versions, command line
    architecture: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.convs_per_block, int):  # a config.json written before counts per block
            self.convs_per_block = [self.convs_per_block]

    def validate(self) -> RunConfig:
        """Raise `KerascnnError` (naming its option) for the first invalid value; return self. Each
        option is checked against its `Option` rules, then the rules between options."""
        for name, rules in options(type(self)).items():
            value, annotation = getattr(self, name), field_types(type(self))[name]
            if value is not None or type(None) not in typing.get_args(annotation):
                check_value(name, value, rules, annotation)
        if self.weights is not None and not self.weights.strip():
            raise KerascnnError("--weights is empty; give none, imagenet or a weights file (.keras, .weights.h5, .pth)",
                                option="weights")
        if self.lr_schedule == "step" and not self.lr_step:
            raise KerascnnError("--lr-schedule step needs --lr-step N (epochs between decays)", option="lr_schedule")
        if self.convs_per_block == []:
            raise KerascnnError("--convs-per-block needs a count, e.g. 2, or one per block, e.g. 1,2,2",
                                option="convs_per_block")
        if self.split is not None:
            parse_split(self.split)
        if self.calibrate != "none" and self.split is not None and parse_split(self.split)[1][1] == 0:
            raise KerascnnError(f"--calibrate {self.calibrate} fits on the validation split, and --split {self.split} "
                                "has none; give a split with validation images, or leave --calibrate out",
                                option="calibrate")
        if str(self.devices).lower() != "all" and not (str(self.devices).isdigit() and int(self.devices) >= 1):
            raise KerascnnError(f"--devices takes a number >= 1 or all, got {self.devices!r}", option="devices")
        if self.finetune_lr is not None and not self.unfreeze_at:
            raise KerascnnError("--finetune-lr is the LR after --unfreeze-at EPOCH (>= 1); give that too or leave "
                                "it out", option="finetune_lr")
        if self.nesterov and self.optimizer != "sgd":
            raise KerascnnError(f"--nesterov applies to --optimizer sgd, not {self.optimizer}", option="nesterov")
        if self.unfreeze_at is not None:
            if not isinstance(self.unfreeze_at, int) or not 0 <= self.unfreeze_at < self.epochs:
                raise KerascnnError(f"--unfreeze-at must be an epoch in 0..{self.epochs - 1} (--epochs {self.epochs}; "
                                    f"0: the stages train from the start), got {self.unfreeze_at}",
                                    option="unfreeze_at")
            if self.unfreeze_at and self.unfreeze is not None and self.unfreeze.strip().lower() == "none":
                raise KerascnnError("--unfreeze-at needs stages to unfreeze; give --unfreeze all or STAGE[,STAGE...]",
                                    option="unfreeze_at")
        return self

    def uses_fast_path(self, backend: str) -> bool:
        """Whether ``backend`` trains with kerascnn's fast steps (`kerascnn.torch_fast`): torch unless
        ``--no-jit``."""
        return backend == "torch" and self.jit is not False

    def backbone_stages_trained_at_start(self, spec: registry.ModelSpec) -> int:
        """How many of a backbone's stages train from the first epoch (0 for scratch CNN presets,
        and with ``unfreeze_at``, whose first epochs train the head alone)."""
        if spec.cnn is not None or self.unfreeze_at:
            return 0
        return len(choose_stages(self.unfreeze or "none", spec.stage_names(self.filters), self.model))

    @property
    def data_seed(self) -> int:
        """The seed of the train/val/test split."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from kerascnn.rundir import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        data = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def flag(name: str) -> str:
    """The command line's flag of option ``name``: ``--batch-size`` for ``batch_size``."""
    return "--" + name.replace("_", "-")


def options(config_class: type | None = None) -> dict[str, Option]:
    """Every option of ``config_class`` (default: `RunConfig`) by field name, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(config_class or RunConfig)
            if "option" in f.metadata}


def hyper_parameters(config_class: type | None = None) -> tuple[str, ...]:
    """The options that tune a strategy rather than make another one (`Option.hyper`)."""
    return tuple(name for name, rules in options(config_class).items() if rules.hyper)


@functools.cache
def field_types(config_class: type) -> dict[str, Any]:
    """The type annotation of each field of ``config_class``, resolved (`typing.get_type_hints`)."""
    return typing.get_type_hints(config_class)


def value_type(annotation: Any) -> Any:
    """The type an option's value has when given: ``int`` of ``int | None``, ``list`` of ``list[int]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return value_type(args[0]) if len(args) == 1 else args[0]
    return typing.get_origin(annotation) or annotation


def check_value(name: str, value: Any, rules: Option, annotation: Any) -> None:
    """Raise `KerascnnError` unless ``value`` keeps option ``name``'s `Option` rules and type."""
    kind = value_type(annotation)
    if rules.choices:
        if value not in rules.choices:
            raise KerascnnError(f"{flag(name)} {value!r} is not valid; choose one of: "
                                f"{', '.join(map(str, rules.choices))}", option=name)
        return
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        low = f" >= {rules.low:g}" if rules.low is not None else ""
        raise KerascnnError(f"{flag(name)} must be an integer{low}, got {value!r}", option=name)
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise KerascnnError(f"{flag(name)} must be a number, got {value!r}", option=name)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise KerascnnError(f"{flag(name)} takes a list of integers, got {value!r}", option=name)
        if rules.low is not None and any(v < rules.low for v in value):
            which = "positive integers" if rules.low == 1 else f"integers >= {rules.low:g}"
            raise KerascnnError(f"{flag(name)} takes {which}, got {value}", option=name)
        return
    if kind in (int, float) and not _in_range(value, rules):
        raise KerascnnError(f"{flag(name)} must be {_range_text(rules, kind)}, got {value!r}", option=name)


def _in_range(value: float, rules: Option) -> bool:
    low_open, high_open = rules.open in ("low", "both"), rules.open in ("high", "both")
    above = rules.low is None or (value > rules.low if low_open else value >= rules.low)
    below = rules.high is None or (value < rules.high if high_open else value <= rules.high)
    return bool(above and below)  # False for NaN


def _range_text(rules: Option, kind: type) -> str:
    what = rules.what or ("an integer" if kind is int else "")
    if rules.high is None:
        bound = f"{'>' if rules.open in ('low', 'both') else '>='} {rules.low:g}"
    else:
        left = "(" if rules.open in ("low", "both") else "["
        right = ")" if rules.open in ("high", "both") else "]"
        bound = f"in {left}{rules.low:g}, {rules.high:g}{right}"
    return f"{what} {bound}".strip()

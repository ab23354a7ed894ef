"""`RunConfig`: every setting of one run, validated up front and saved as ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerascnn.errors import KerascnnError
from kerascnn.models import registry
from kerascnn.models.stages import choose_stages

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")
AUGMENTS = ("none", "basic", "strong")
CLASS_WEIGHTS = ("none", "balanced")
ACTIVATIONS = ("relu", "leaky_relu", "gelu")
POOLS = ("max", "avg")
BN_POLICIES = ("train", "frozen")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")  # auto: see ModelSpec.auto_precision
LR_SCALINGS = ("linear", "none")
# Peak LRs of AdamW with one-cycle: the lower one whenever two or more stages of a pretrained backbone
# train from the first epoch, else the higher one (docs/design/learning-rates.md).
DEFAULT_LR, DEEP_FINETUNE_LR = 3e-3, 3e-4
EXPORT_FORMATS = ("onnx", "savedmodel", "keras")  # kerascnn.export
CACHE_MODES = ("auto", "ram", "disk", "none")  # decoded-image cache of image-file datasets: kerascnn.data.cache
TTAS = ("none", "flip")  # test-time augmentation: flip averages the probabilities of each image and its mirror
CALIBRATIONS = ("none", "temperature")  # kerascnn.calibration: temperature fits one on the validation split


@dataclass
class RunConfig:
    """All settings of one run. ``None`` means "the dataset's or model preset's default"."""

    dataset: str
    model: str
    # data
    data_dir: str | None = None
    split: str | None = None
    val_split: float = 0.1
    image_size: int | None = None
    fold: int = 0
    # scratch CNN architecture (None: the preset's value)
    filters: list[int] | None = None
    convs_per_block: list[int] | None = None  # one count for every block, or one per block
    kernel_size: int | None = None
    batch_norm: bool | None = None
    activation: str | None = None
    pool: str | None = None
    norm_after_pool: bool | None = None
    dropout: float | None = None
    dense: list[int] | None = None
    head_dropout: float | None = None
    # transfer learning (None: imagenet for pretrained models, else none; none/all by weights)
    weights: str | None = None
    unfreeze: str | None = None
    unfreeze_at: int | None = None
    finetune_lr: float | None = None
    bn_policy: str = "train"
    backbone_lr_scale: float = 1.0
    # training
    epochs: int = 14
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float | None = None  # None: DEFAULT_LR, or DEEP_FINETUNE_LR to fine-tune several backbone stages (resolve)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    label_smoothing: float | None = None  # None: the model's default (ModelSpec.label_smoothing)
    lr_schedule: str | None = None
    lr_step: int | None = None
    lr_gamma: float = 0.1
    patience: int = 5
    augment: str = "none"
    flip: bool = False
    rotate: float = 0.0
    translate: float = 0.0
    erase: float = 0.0  # random erasing probability
    mixup: float = 0.0  # Beta(alpha, alpha) of MixUp; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix; 0: off (with mixup, each batch takes one)
    class_weight: str = "none"
    seed: int = 0
    split_seed: int | None = None  # None: seed (a study's seeds axis keeps the split and changes training)
    workers: int = 0
    cache: str = "auto"
    # devices and numerics
    devices: str = "1"
    lr_scaling: str = "linear"
    precision: str = "auto"
    jit: bool | None = None
    # outputs
    out: str | None = None
    runs_dir: str = "runs"
    tta: str = "none"
    calibrate: str = "none"
    top_k: int | None = None  # None: 5 (evaluation.DEFAULT_TOP_K) where there are more classes
    verbose: int | str = "auto"
    # filled in by the runner: the model's resolved architecture; backend, device, versions, command line
    architecture: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.convs_per_block, int):  # a config.json written before counts per block
            self.convs_per_block = [self.convs_per_block]
        if self.lr_schedule is None:
            self.lr_schedule = "step" if self.lr_step else "onecycle"

    def validate(self) -> RunConfig:
        """Raise `KerascnnError` for the first invalid value; return self."""
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("patience", self.patience, allow_zero=True)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("augment", self.augment, AUGMENTS)
        _choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        _choice("cache", self.cache, CACHE_MODES)
        for name in ("mixup", "cutmix"):
            alpha = getattr(self, name)
            if not alpha >= 0:
                raise KerascnnError(f"--{name} is the alpha of a Beta distribution, >= 0 (0: off), got {alpha}")
        if self.weights is not None and not self.weights.strip():
            raise KerascnnError("--weights is empty; give none, imagenet or a weights file (.keras, .weights.h5, .pth)")
        if self.lr is not None and not self.lr > 0:
            raise KerascnnError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise KerascnnError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.val_split < 1:
            raise KerascnnError(f"--val-split must be in [0, 1), got {self.val_split}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise KerascnnError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr_schedule == "step" and not self.lr_step:
            raise KerascnnError("--lr-schedule step needs --lr-step N (epochs between decays)")
        if self.lr_step is not None:
            _positive_int("lr_step", self.lr_step)
        if not 0 < self.lr_gamma <= 1:
            raise KerascnnError(f"--lr-gamma must be in (0, 1], got {self.lr_gamma}")
        if self.image_size is not None:
            _positive_int("image_size", self.image_size)
        if not 0 <= self.translate < 1:
            raise KerascnnError(f"--translate must be a fraction in [0, 1), got {self.translate}")
        if not 0 <= self.erase <= 1:
            raise KerascnnError(f"--erase must be a probability in [0, 1], got {self.erase}")
        if not 0 <= self.rotate <= 180:
            raise KerascnnError(f"--rotate must be degrees in [0, 180], got {self.rotate}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise KerascnnError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.activation is not None:
            _choice("activation", self.activation, ACTIVATIONS)
        if self.pool is not None:
            _choice("pool", self.pool, POOLS)
        for name in ("filters", "dense", "convs_per_block"):
            values = getattr(self, name)
            if values is not None and any(v <= 0 for v in values):
                raise KerascnnError(f"--{name.replace('_', '-')} takes positive integers, got {values}")
        if self.convs_per_block == []:
            raise KerascnnError("--convs-per-block needs a count, e.g. 2, or one per block, e.g. 1,2,2")
        if self.top_k is not None:
            _positive_int("top_k", self.top_k)
        _positive_int("workers", self.workers, allow_zero=True)
        if self.split_seed is not None:
            _positive_int("split_seed", self.split_seed, allow_zero=True)
        if self.kernel_size is not None:
            _positive_int("kernel_size", self.kernel_size)
        if self.split is not None:
            parse_split(self.split)
        _choice("bn_policy", self.bn_policy, BN_POLICIES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("lr_scaling", self.lr_scaling, LR_SCALINGS)
        _choice("tta", self.tta, TTAS)
        _choice("calibrate", self.calibrate, CALIBRATIONS)
        if self.calibrate != "none" and self.split is not None and parse_split(self.split)[1][1] == 0:
            raise KerascnnError(f"--calibrate {self.calibrate} fits on the validation split, and --split {self.split} "
                                "has none; give a split with validation images, or leave --calibrate out")
        if str(self.devices).lower() != "all" and not (str(self.devices).isdigit() and int(self.devices) >= 1):
            raise KerascnnError(f"--devices takes a number >= 1 or all, got {self.devices!r}")
        if self.head_dropout is not None and not 0 <= self.head_dropout < 1:
            raise KerascnnError(f"--head-dropout must be in [0, 1), got {self.head_dropout}")
        if self.backbone_lr_scale < 0:
            raise KerascnnError(f"--backbone-lr-scale must be >= 0, got {self.backbone_lr_scale}")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise KerascnnError(f"--finetune-lr must be > 0, got {self.finetune_lr}")
        if self.finetune_lr is not None and self.unfreeze_at is None:
            raise KerascnnError("--finetune-lr is the LR after --unfreeze-at EPOCH; give that too or leave it out")
        if self.nesterov and self.optimizer != "sgd":
            raise KerascnnError(f"--nesterov applies to --optimizer sgd, not {self.optimizer}")
        if self.unfreeze_at is not None:
            if not isinstance(self.unfreeze_at, int) or not 1 <= self.unfreeze_at < self.epochs:
                raise KerascnnError(f"--unfreeze-at must be an epoch in 1..{self.epochs - 1} (--epochs {self.epochs}), "
                                    f"got {self.unfreeze_at}")
            if self.unfreeze is not None and self.unfreeze.strip().lower() == "none":
                raise KerascnnError("--unfreeze-at needs stages to unfreeze; give --unfreeze all or STAGE[,STAGE...]")
        return self

    def resolve(self) -> RunConfig:
        """Fill the defaults that depend on the model (its `kerascnn.models.ModelSpec`): ``weights``
        (imagenet for a pretrained model, else none), ``unfreeze`` (none for pretrained weights, all
        when training from scratch or with ``unfreeze_at``), ``label_smoothing`` (the model's) and
        ``lr`` (`DEEP_FINETUNE_LR` when two or more stages of a pretrained backbone train from the
        first epoch, else `DEFAULT_LR`). Settings already given are kept, so resolving twice changes nothing;
        returns self."""
        spec = registry.get(self.model)
        if self.label_smoothing is None:
            self.label_smoothing = spec.label_smoothing
        if self.weights is None:
            self.weights = "imagenet" if spec.pretrained else "none"
        if self.unfreeze is None:
            self.unfreeze = "all" if self.weights == "none" or self.unfreeze_at else "none"
        if self.lr is None:
            fine_tuned = self.weights != "none" and self.backbone_stages_trained_at_start(spec) >= 2
            self.lr = DEEP_FINETUNE_LR if fine_tuned else DEFAULT_LR
        return self

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


def parse_split(text: str) -> tuple[str, tuple[float, float, float]]:
    """Parse ``--split``: per-class counts ``"300,75,75"`` or fractions ``"0.7,0.15,0.15"``.

    Returns ``("counts", (train, val, test))`` or ``("fractions", (train, val, test))``.
    """
    parts = [p.strip() for p in str(text).split(",")]
    hint = "use per-class counts like 300,75,75 or fractions like 0.7,0.15,0.15"
    if len(parts) != 3:
        raise KerascnnError(f"--split needs three values train,val,test, got {text!r}; {hint}")
    try:
        if all(p.isdigit() for p in parts):
            counts = tuple(float(int(p)) for p in parts)
            if counts[0] < 1 or counts[2] < 1:
                raise ValueError
            return "counts", counts  # type: ignore[return-value]
        fractions = tuple(float(p) for p in parts)
    except ValueError:
        raise KerascnnError(f"--split {text!r} is not valid; {hint}") from None
    if any(f < 0 for f in fractions) or fractions[0] <= 0 or fractions[2] <= 0 or sum(fractions) > 1 + 1e-6:
        raise KerascnnError(f"--split fractions must be >= 0 with train, test > 0 and sum <= 1, got {text!r}")
    return "fractions", fractions  # type: ignore[return-value]


def _positive_int(name: str, value: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or value < low:
        flag = "--" + name.replace("_", "-")
        raise KerascnnError(f"{flag} must be an integer >= {low}, got {value!r}")


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        flag = "--" + name.replace("_", "-")
        raise KerascnnError(f"{flag} {value!r} is not valid; choose one of: {', '.join(valid)}")

"""The model registry: one `ModelSpec` per model name, read by building, preprocessing, stage
names and freezing, weights, the command line's choices and help, and the docs' model table.

Adding a backbone is one `register` call with its builder and stage mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kerascnn import distribute
from kerascnn.errors import KerascnnError, unknown_name
from kerascnn.models.stages import (
    efficientnet_stage,
    features,
    keras_resnet_stage,
    mobilenet_v2_stage,
    mobilenet_v3_stage,
    resnet_stage,
)

PREPROCESSINGS = ("torch", "caffe", "tf", "inside")
# (input_shape, imagenet) -> a functional keras.Model named "backbone"
BackboneBuilder = Callable[[tuple[int, int, int], bool], Any]


@dataclass(frozen=True)
class CNNSpec:
    """Architecture of a plain CNN.

    ``filters`` gives one block per entry, each of ``convs_per_block`` convolutions (one count for
    every block, or one per block) with batch norm if set and the activation, then 2x2 pooling and
    ``dropout``; with ``norm_after_pool`` a block pools its last convolution's output before that
    convolution's batch norm and activation (airbench's order: a quarter of their work; max-pooling
    commutes with ReLU, not with batch norm). The head flattens (or
    global-average-pools), applies ``dense`` hidden layers (with batch norm if ``head_batch_norm``)
    and ``head_dropout``, and a softmax.
    """

    filters: tuple[int, ...] = (32, 64)
    convs_per_block: int | tuple[int, ...] = 2
    kernel_size: int = 3
    batch_norm: bool = True
    activation: str = "relu"
    pool: str = "max"
    norm_after_pool: bool = False
    dropout: float = 0.25
    dense: tuple[int, ...] = (128,)
    head_dropout: float = 0.5
    head_batch_norm: bool = True
    global_pool: bool = False

    def block_convs(self) -> tuple[int, ...]:
        """The number of convolutions in each block; a single count applies to every block."""
        counts = self.convs_per_block
        if isinstance(counts, int):
            return (counts,) * len(self.filters)
        if len(counts) == 1:
            return tuple(counts) * len(self.filters)
        if len(counts) != len(self.filters):
            raise KerascnnError(f"--convs-per-block gives {len(counts)} counts for {len(self.filters)} blocks "
                                f"(--filters); give one count, or one per block")
        return tuple(counts)

    def replace(self, **changes) -> CNNSpec:
        """A copy with the changes that are not None."""
        changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)


# the CNNSpec fields a run's options set (`kerascnn.config.Option.applies` "cnn"): all but the head's
# dropout, which every model takes, and the preset-only head batch norm and global pooling
CNN_OPTIONS = tuple(f.name for f in dataclasses.fields(CNNSpec)
                    if f.name not in ("head_dropout", "head_batch_norm", "global_pool"))


def keras_application(class_name: str) -> BackboneBuilder:
    """A builder of ``keras.applications.<class_name>`` without its top, ImageNet weights if asked."""

    def build(input_shape: tuple[int, int, int], imagenet: bool) -> Any:
        import keras

        app = getattr(keras.applications, class_name)
        return app(include_top=False, weights="imagenet" if imagenet else None, input_shape=input_shape,
                   name="backbone")

    return build


def torchvision_resnet(name: str) -> BackboneBuilder:
    """A builder of our ResNet ``name`` (torchvision's layout); its ImageNet weights are ported."""

    def build(input_shape: tuple[int, int, int], imagenet: bool) -> Any:
        from kerascnn.models.resnet import resnet_backbone

        return resnet_backbone(name, input_shape)

    return build
RESNET_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


# The smallest working size at which a ResNet trains in bfloat16 on an AMX CPU; backbones of depthwise
# convolutions need larger maps (their `amx_min_size` below). Measurements: docs/design/precision.md.
AMX_MIN_BACKBONE_SIZE = 48

@dataclass(frozen=True)
class Weights:
    """Where a backbone's ImageNet weights come from: ``keras.applications`` (Keras downloads them)
    or a ``torchvision`` checkpoint at ``url``, ported once; the ``preprocess``ing they expect
    (``torch``: 0..1 then ImageNet mean/std; ``caffe``: minus the mean pixel; ``tf``: -1..1;
    ``inside``: the Keras model does it); the checkpoint's ``sha256`` where known, checked by
    ``keras.utils.get_file``; and the ImageNet-1k ``top1`` accuracy its source reports."""

    source: str
    preprocess: str
    url: str | None = None
    sha256: str | None = None
    top1: float | None = None

    def __post_init__(self) -> None:
        if self.source not in ("keras.applications", "torchvision"):
            raise ValueError(f"weights source must be keras.applications or torchvision, not {self.source!r}")
        if (self.source == "torchvision") != (self.url is not None and self.url.startswith("https://")):
            raise ValueError("torchvision weights need their checkpoint's https:// URL (and only they have one)")
        if self.preprocess not in PREPROCESSINGS:
            raise ValueError(f"weights preprocess must be one of {PREPROCESSINGS}, not {self.preprocess!r}")

    @property
    def hash_prefix(self) -> str | None:
        """The start of the checkpoint's sha256 that torchvision puts in its file name
        (``resnet18-f37072fd.pth``), checked as torchvision's ``check_hash`` does."""
        if self.url is None:
            return None
        stem = self.url.rsplit("/", 1)[-1].split(".")[0]
        prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
        return prefix if len(prefix) >= 6 and all(c in "0123456789abcdef" for c in prefix) else None


@dataclass(frozen=True)
class ModelSpec:
    """Everything kerascnn knows about one model name.

    A scratch CNN has a ``cnn`` architecture preset; it normalises with the training set's
    statistics and its stages are its ``blockN``. A backbone has a ``backbone`` builder
    ``(input_shape, imagenet) -> keras.Model`` (a functional model named ``backbone``), its ``stages``
    in input order with ``stage_of(layer_name)``, and its ImageNet `Weights` (None: none exist).
    ``image_size`` is the working size when ``--image-size`` is not given (None: the data's own
    size); ``file_image_size`` the size image files are decoded at then (None: ``image_size``, else
    the data's default, 64).
    """

    name: str
    description: str
    cnn: CNNSpec | None = None
    backbone: BackboneBuilder | None = None
    stages: tuple[str, ...] = ()
    stage_of: Callable[[str], str | None] | None = None
    weights: Weights | None = None
    image_size: int | None = None
    file_image_size: int | None = None
    label_smoothing: float = 0.0  # the --label-smoothing default when training this model
    # a backbone's smallest working size that --precision auto trains in bfloat16 on an AMX CPU
    amx_min_size: int = AMX_MIN_BACKBONE_SIZE

    def __post_init__(self) -> None:
        if (self.cnn is None) == (self.backbone is None):
            raise ValueError(f"model {self.name!r}: give exactly one of cnn= and backbone=")
        if self.backbone is not None and (not self.stages or self.stage_of is None):
            raise ValueError(f"model {self.name!r}: a backbone needs stages= and stage_of=")

    @property
    def pretrained(self) -> bool:
        """Whether ImageNet weights exist (then ``--weights imagenet`` is the default)."""
        return self.weights is not None

    @property
    def preprocess(self) -> str:
        """The input normalisation the backbone expects (its weights'; ``inside`` without any)."""
        return self.weights.preprocess if self.weights is not None else "inside"

    @property
    def torchvision_url(self) -> str | None:
        """The torchvision checkpoint our builder's ImageNet weights are ported from, if any."""
        return self.weights.url if self.weights is not None and self.weights.source == "torchvision" else None

    def stage_names(self, filters: list[int] | None = None) -> list[str]:
        """The ``--unfreeze`` names, head last; a scratch CNN has one ``blockN`` per entry of
        ``filters`` (default: its preset's)."""
        if self.cnn is None:
            return [*self.stages, "head"]
        return [f"block{i}" for i in range(1, len(filters or self.cnn.filters) + 1)] + ["head"]

    def working_size(self, image_size: int | None, input_size: int) -> int:
        """The size the model works at: ``--image-size``, else the model's own, else the input's."""
        return image_size or self.image_size or input_size

    def auto_precision(self, image_size: int | None = None,
                       environment: distribute.Environment | None = None) -> str:
        """What ``--precision auto`` picks for this model at ``--image-size`` (None: the model's own) on
        ``environment`` (default: this machine): `distribute.auto_precision`, told whether a backbone
        works below its `amx_min_size`."""
        size = image_size or self.image_size
        return distribute.auto_precision(self.cnn is None and size is not None and size < self.amx_min_size,
                                         environment)

    def decode_size(self, image_size: int | None) -> int | None:
        """The size image files are decoded at for ``--image-size`` (None: the data's default)."""
        return image_size or self.file_image_size or self.image_size


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (its name must be new); return it."""
    if spec.name in MODELS:
        raise KerascnnError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def model_names() -> list[str]:
    """Every model name accepted by `kerascnn.models.build`."""
    return list(MODELS)


def get(name: str) -> ModelSpec:
    """The registry entry for ``name``; unknown names list the valid ones."""
    if name not in MODELS:
        raise unknown_name("model", name, model_names())
    return MODELS[name]


def markdown_table() -> str:
    """The model table of docs/models.md: name, what it is, ImageNet weights, stages."""
    lines = ["| name | what | ImageNet weights | stages (`--unfreeze` names) |", "| --- | --- | --- | --- |"]
    for spec in MODELS.values():
        if spec.cnn is not None:
            blocks = [f"`block{i}`" for i in range(1, len(spec.cnn.filters) + 1)]
            stages = ", ".join(blocks if len(blocks) <= 2 else [f"{blocks[0]}..{blocks[-1]}"]) + ", `head`"
            weights = "-"
        else:
            stages = ", ".join(f"`{s}`" for s in (spec.stages[0], spec.stages[-1]))
            stages = stages.replace(", ", "..") if len(spec.stages) > 2 else stages
            stages += ", `head`"
            weights = "-" if spec.weights is None else "torchvision's, ported" if spec.torchvision_url else (
                spec.weights.source)
        lines.append(f"| `{spec.name}` | {spec.description} | {weights} | {stages} |")
    return "\n".join(lines) + "\n"


def _resnet(name: str, weights: Weights) -> ModelSpec:
    return ModelSpec(name, f"{name[:6].replace('resnet', 'ResNet')}-{name[6:]}, our functional model with "
                     "torchvision's layout and layer names",
                     backbone=torchvision_resnet(name), stages=RESNET_STAGES, stage_of=resnet_stage, weights=weights,
                     image_size=224)


def _application(name: str, class_name: str, description: str, weights: Weights, stages: tuple[str, ...],
                 stage_of: Callable[[str], str | None], amx_min_size: int = AMX_MIN_BACKBONE_SIZE
                 ) -> ModelSpec:
    return ModelSpec(name, description, backbone=keras_application(class_name), stages=stages, stage_of=stage_of,
                     weights=weights, image_size=224, amx_min_size=amx_min_size)


def _keras(preprocess: str, top1: float) -> Weights:
    return Weights("keras.applications", preprocess, top1=top1)


for _spec in (
    # The default: two VGG-style blocks with batch norm, light dropout (0.1) in the blocks, label
    # smoothing 0.1: the main job's recipe (docs/design/main-job-recipe.md).
    ModelSpec("cnn", "the configurable CNN: 2 VGG blocks 32/64 (two 3x3 convs, batch norm, max-pool, dropout "
              "0.1), FC 128; every architecture option applies", cnn=CNNSpec(dropout=0.1), label_smoothing=0.1),
    ModelSpec("cnn3", "3 conv (32/64/128) + ReLU + max-pool + dropout, FC 128",
              cnn=CNNSpec(filters=(32, 64, 128), convs_per_block=1, batch_norm=False, dropout=0.25, dense=(128,),
                          head_dropout=0.5, head_batch_norm=False)),
    ModelSpec("cnn2bn", "two 5x5 convs 32/64 with batch norm and LeakyReLU(0.01), max-pool, FC 1000, FC out",
              cnn=CNNSpec(filters=(32, 64), convs_per_block=1, kernel_size=5, activation="leaky_relu", dropout=0.0,
                          dense=(1000,), head_dropout=0.0, head_batch_norm=False)),
    ModelSpec("cnn5", "5 conv layers (32...256) with batch norm + one FC, for 256x256 colour images",
              cnn=CNNSpec(filters=(32, 64, 128, 256, 256), convs_per_block=1, dropout=0.0, dense=(),
                          head_dropout=0.5, head_batch_norm=False), file_image_size=256),
    # top1: torchvision's and keras.io's (or the Keras docstring's) ImageNet-1k figures, for reference
    _resnet("resnet18", Weights("torchvision", "torch", "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                                sha256="f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
                                top1=69.758)),
    _resnet("resnet34", Weights("torchvision", "torch", "https://download.pytorch.org/models/resnet34-b627a593.pth",
                                top1=73.314)),
    _application("resnet50", "ResNet50", "ResNet-50 from keras.applications (its conv2_..conv5_ are layer1..layer4)",
                 _keras("caffe", 74.9), RESNET_STAGES, keras_resnet_stage),
    # amx_min_size: AMX does not speed up depthwise convolutions, so these need larger maps than the
    # ResNets before bfloat16 pays (docs/results/precision_by_size.json; MobileNetV3-Small by analogy).
    _application("mobilenet_v2", "MobileNetV2", "MobileNetV2 from keras.applications, torchvision's stage names",
                 _keras("tf", 71.3), features(19), mobilenet_v2_stage, amx_min_size=96),
    _application("mobilenet_v3_small", "MobileNetV3Small", "MobileNetV3-Small from keras.applications",
                 _keras("inside", 68.1), features(13), mobilenet_v3_stage(12), amx_min_size=128),
    _application("mobilenet_v3_large", "MobileNetV3Large", "MobileNetV3-Large from keras.applications",
                 _keras("inside", 75.6), features(17), mobilenet_v3_stage(16), amx_min_size=128),
    _application("efficientnet_b0", "EfficientNetB0", "EfficientNet-B0 from keras.applications",
                 _keras("inside", 77.1), features(9), efficientnet_stage, amx_min_size=128),
):
    register(_spec)

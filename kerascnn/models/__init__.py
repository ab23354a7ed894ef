"""Model registry: scratch CNNs and pretrained backbones, built as Keras functional models that
take raw 0..255 pixels (preprocessing inside) and output class probabilities."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from kerascnn.errors import KerascnnError, unknown_name
from kerascnn.models.backbones import BACKBONES, build_backbone, imagenet_preprocessing
from kerascnn.models.cnn import PRESETS, CNNSpec, build_cnn
from kerascnn.models.freezing import set_trainable, stage_params, trainable_params
from kerascnn.models.preprocessing import adapt_input, channel_stats
from kerascnn.models.weights import load_weights


@dataclass(frozen=True)
class ModelInfo:
    """What the runner needs to know about a model name before building it."""

    description: str
    default_image_size: int | None = None  # None: the data's own size (array datasets)
    file_image_size: int = 64  # decoding size for image-file datasets when --image-size is not given
    pretrained: bool = False  # has ImageNet weights (--weights imagenet is its default)
    label_smoothing: float = 0.0  # the --label-smoothing default when training this model


MODELS: dict[str, ModelInfo] = {
    "cnn": ModelInfo("configurable CNN (default: 2 VGG blocks 32/64 with batch norm, FC 128)", label_smoothing=0.1),
    "cnn3": ModelInfo("3 conv + ReLU + max-pool + dropout + FC"),
    "cnn2bn": ModelInfo("two 5x5 convs 32/64 with batch norm and LeakyReLU(0.01), FC 1000"),
    "cnn5": ModelInfo("5 conv layers + one FC, for 256x256 colour images", file_image_size=256),
    "resnet18": ModelInfo("ResNet-18, torchvision layout; ImageNet weights ported from torchvision", 224, 224, True),
    "resnet34": ModelInfo("ResNet-34, torchvision layout; ImageNet weights ported from torchvision", 224, 224, True),
    "resnet50": ModelInfo("ResNet-50 from keras.applications", 224, 224, True),
    "mobilenet_v2": ModelInfo("MobileNetV2 from keras.applications", 224, 224, True),
    "mobilenet_v3_small": ModelInfo("MobileNetV3-Small from keras.applications", 224, 224, True),
    "mobilenet_v3_large": ModelInfo("MobileNetV3-Large from keras.applications", 224, 224, True),
    "efficientnet_b0": ModelInfo("EfficientNet-B0 from keras.applications", 224, 224, True),
}
MIN_BACKBONE_SIZE = 32


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build (and train) models inside this context with Keras dtype policy ``name``
    (``float32``, ``mixed_bfloat16``, ``mixed_float16``); the softmax output stays float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def model_names() -> list[str]:
    """Every model name accepted by `build`."""
    return list(MODELS)


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; unknown names list the valid ones."""
    if name not in MODELS:
        raise unknown_name("model", name, model_names())
    return MODELS[name]


def build(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    image_size: int | None = None,
    mean: list[float] | None = None,
    variance: list[float] | None = None,
    weights: str = "none",
    head_dropout: float | None = None,
    **options: Any,
) -> keras.Model:
    """Build model ``name`` for raw 0..255 images of ``input_shape`` (h, w, c).

    ``image_size`` resizes inside the model. Scratch CNNs normalise with ``mean``/``variance``
    (per channel, 0..255 units) and take architecture ``options`` (``filters``, ``dropout``, ...)
    over their preset. Backbones use their ImageNet normalisation, turn grey into RGB, load
    ``weights`` (``imagenet`` or ``none``) and get a new head: global average pooling,
    ``head_dropout`` (default 0; a CNN's default is its preset's) and a dense softmax layer.
    """
    info = model_info(name)
    if name in PRESETS:
        spec = PRESETS[name].replace(head_dropout=head_dropout, **options)
        return build_cnn(spec, tuple(input_shape), num_classes, image_size=image_size, mean=mean,
                         variance=variance, name=name)
    size = image_size or info.default_image_size
    if size < MIN_BACKBONE_SIZE:
        raise KerascnnError(f"{name} needs --image-size of at least {MIN_BACKBONE_SIZE}, got {size}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = adapt_input(inputs, image_size=size, channels=3, **imagenet_preprocessing(BACKBONES[name].preprocess))
    backbone = build_backbone(name, (size, size, 3), "imagenet" if weights == "imagenet" else None)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    if head_dropout:
        x = layers.Dropout(head_dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="head_logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


__all__ = ["MODELS", "PRESETS", "CNNSpec", "ModelInfo", "build", "channel_stats", "dtype_policy", "load_weights",
           "model_info",
           "model_names", "set_trainable", "stage_params", "trainable_params"]

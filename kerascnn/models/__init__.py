"""Model registry: scratch CNNs (and, later, pretrained backbones) built as Keras functional models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from kerascnn.errors import unknown_name
from kerascnn.models.cnn import PRESETS, CNNSpec, build_cnn
from kerascnn.models.preprocessing import channel_stats


@dataclass(frozen=True)
class ModelInfo:
    """What the runner needs to know about a model name before building it."""

    description: str
    default_image_size: int | None = None  # None: the data's own size (array datasets)
    file_image_size: int = 64  # decoding size for image-file datasets when --image-size is not given


MODELS: dict[str, ModelInfo] = {
    "cnn": ModelInfo("configurable CNN (default: 2 VGG blocks 32/64 with batch norm, FC 128)"),
    "cnn3": ModelInfo("3 conv + ReLU + max-pool + dropout + FC"),
    "cnn2bn": ModelInfo("two 5x5 convs 32/64 with batch norm and LeakyReLU(0.01), FC 1000"),
    "cnn5": ModelInfo("5 conv layers + one FC, for 256x256 colour images", file_image_size=256),
}


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
    **options: Any,
) -> keras.Model:
    """Build model ``name`` for raw uint8-valued images of ``input_shape`` (h, w, c).

    ``image_size`` resizes inside the model; ``mean``/``variance`` (per channel, 0..255 units)
    normalise inside it. Scratch CNN ``options`` (``filters``, ``dropout``, ...) override the preset.
    """
    model_info(name)
    spec = PRESETS[name].replace(**options)
    return build_cnn(spec, tuple(input_shape), num_classes, image_size=image_size, mean=mean,
                     variance=variance, name=name)


__all__ = ["MODELS", "PRESETS", "CNNSpec", "ModelInfo", "build", "channel_stats", "model_info", "model_names"]

"""Pretrained backbones: ResNet-18/34 (ours, torchvision layout) and keras.applications models,
each with its ImageNet preprocessing, its stage names and its ImageNet weights."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kerascnn.errors import KerascnnError
from kerascnn.models.resnet import port_torchvision_resnet, resnet_backbone

# torchvision's ImageNet checkpoints (the weights the source studies used)
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone and name its stages.

    ``preprocess`` maps raw 0..255 RGB to what the ImageNet weights expect: ``torch`` (scale to
    0..1 and normalise with ImageNet mean/std), ``caffe`` (subtract the mean pixel), ``tf``
    (scale to -1..1) or ``inside`` (the Keras model does it itself). ``stages`` are in input order.
    """

    name: str
    build: Callable[[tuple[int, int, int], str | None], keras.Model]
    preprocess: str
    stages: tuple[str, ...]
    stage_of: Callable[[str], str | None]


def _keras_app(fn: Callable, **extra) -> Callable[[tuple[int, int, int], str | None], keras.Model]:
    def build(input_shape, weights):
        return fn(include_top=False, weights=weights, input_shape=input_shape, name="backbone", **extra)

    return build


def _resnet_stage(name: str) -> str | None:
    if name.startswith(("conv1", "bn1", "maxpool")):
        return "conv1"
    match = re.match(r"layer(\d)_", name)
    return f"layer{match.group(1)}" if match else None


def _keras_resnet_stage(name: str) -> str | None:
    if name.startswith(("conv1_", "pool1_")):
        return "conv1"
    match = re.match(r"conv(\d)_", name)
    return f"layer{int(match.group(1)) - 1}" if match else None


def _mobilenet_v2_stage(name: str) -> str | None:
    if name in ("Conv1", "bn_Conv1", "Conv1_relu", "Conv1_pad"):
        return "features.0"
    if name.startswith("expanded_conv_"):
        return "features.1"
    match = re.match(r"block_(\d+)_", name)
    if match:
        return f"features.{int(match.group(1)) + 1}"
    return "features.18" if name in ("Conv_1", "Conv_1_bn", "out_relu") else None


def _mobilenet_v3_stage(last: int) -> Callable[[str], str | None]:
    def stage_of(name: str) -> str | None:
        if name in ("conv", "conv_bn"):
            return "features.0"
        match = re.match(r"expanded_conv_(\d+)_", name)
        if match:
            return f"features.{int(match.group(1)) + 1}"
        if name.startswith("expanded_conv_"):
            return "features.1"
        return f"features.{last}" if name in ("conv_1", "conv_1_bn") else None

    return stage_of


def _efficientnet_stage(name: str) -> str | None:
    if name.startswith("stem_"):
        return "features.0"
    match = re.match(r"block(\d)[a-z]_", name)
    if match:
        return f"features.{match.group(1)}"
    return "features.8" if name.startswith("top_") else None


def _features(n: int) -> tuple[str, ...]:
    return tuple(f"features.{i}" for i in range(n))


def _apps():
    A = keras.applications
    return {
        "resnet50": Backbone("resnet50", _keras_app(A.ResNet50), "caffe",
                             ("conv1", "layer1", "layer2", "layer3", "layer4"), _keras_resnet_stage),
        "mobilenet_v2": Backbone("mobilenet_v2", _keras_app(A.MobileNetV2), "tf", _features(19), _mobilenet_v2_stage),
        "mobilenet_v3_small": Backbone("mobilenet_v3_small", _keras_app(A.MobileNetV3Small), "inside",
                                       _features(13), _mobilenet_v3_stage(12)),
        "mobilenet_v3_large": Backbone("mobilenet_v3_large", _keras_app(A.MobileNetV3Large), "inside",
                                       _features(17), _mobilenet_v3_stage(16)),
        "efficientnet_b0": Backbone("efficientnet_b0", _keras_app(A.EfficientNetB0), "inside",
                                    _features(9), _efficientnet_stage),
    }


BACKBONES: dict[str, Backbone] = {
    name: Backbone(name, lambda shape, weights, name=name: resnet_backbone(name, shape), "torch",
                   ("conv1", "layer1", "layer2", "layer3", "layer4"), _resnet_stage)
    for name in ("resnet18", "resnet34")
}
BACKBONES.update(_apps())


def imagenet_preprocessing(kind: str) -> dict:
    """Keyword arguments of `adapt_input` for a backbone's ImageNet preprocessing."""
    if kind == "torch":
        return {"mean": [255 * m for m in IMAGENET_MEAN], "variance": [(255 * s) ** 2 for s in IMAGENET_STD]}
    if kind == "caffe":
        return {"mean": list(CAFFE_MEAN_RGB), "variance": [1.0, 1.0, 1.0]}
    if kind == "tf":
        return {"scale": 1 / 127.5, "offset": -1.0}
    return {}


def keras_models_dir() -> Path:
    """Where Keras caches model weights: ``$KERAS_HOME/models``, by default ``~/.keras/models``."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _download_message(name: str, exc: Exception, where: str) -> KerascnnError:
    url = next(iter(re.findall(r"https?://\S+?(?=[:\s]|$)", str(exc))), None)
    file = url.rsplit("/", 1)[-1] if url else "the weights file"
    origin = f" (from {url})" if url else ""
    return KerascnnError(
        f"could not get ImageNet weights for {name} ({type(exc).__name__}); put {file}{origin} in {where}, "
        "or use --weights none or --weights PATH"
    )


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    """The backbone ``name`` (a functional model named ``backbone``), with ImageNet weights if asked."""
    spec = BACKBONES[name]
    if name in TORCHVISION_URLS:
        model = spec.build(input_shape, None)
        if weights == "imagenet":
            model.load_weights(torchvision_imagenet_weights(name, input_shape))
        return model
    try:
        model = spec.build(input_shape, weights)
    except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception when the download fails
        if weights == "imagenet" and ("URL fetch failure" in str(exc) or isinstance(exc, OSError)):
            raise _download_message(name, exc, str(keras_models_dir())) from exc
        raise
    if weights == "imagenet" and spec.preprocess == "caffe":
        flip_first_conv_to_rgb(model.get_layer("conv1_conv"))
    return model


def flip_first_conv_to_rgb(conv: keras.layers.Conv2D) -> None:
    """Keras' ResNet-50 weights expect BGR input; reverse the first kernel's input channels for RGB."""
    weights = conv.get_weights()
    weights[0] = weights[0][:, :, ::-1, :].copy()
    conv.set_weights(weights)


def torchvision_imagenet_weights(name: str, input_shape: tuple[int, int, int] = (224, 224, 3)) -> str:
    """Path of ``name``'s ImageNet weights as a Keras ``.weights.h5``, downloading torchvision's
    checkpoint through Keras' cache and converting it once (no PyTorch needed)."""
    from kerascnn.models.torch_state import read_state_dict

    url = TORCHVISION_URLS[name]
    cache = keras_models_dir()
    converted = cache / (Path(url).stem + ".weights.h5")
    if converted.is_file():
        return str(converted)
    try:
        pth = keras.utils.get_file(Path(url).name, url, cache_dir=str(cache.parent), cache_subdir=cache.name)
    except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception when the download fails
        raise _download_message(name, exc, str(cache)) from exc
    model = resnet_backbone(name, input_shape)
    port_torchvision_resnet(read_state_dict(pth), model)
    converted.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(converted)
    return str(converted)


def count_params(weights: list) -> int:
    return int(sum(np.prod(w.shape) for w in weights))

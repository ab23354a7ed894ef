"""Building a registered backbone with its ImageNet weights (keras.applications downloads,
torchvision checkpoints ported once) and its ImageNet preprocessing. Which model uses which:
`kerascnn.models.registry`; stage names: `kerascnn.models.stages`."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import keras

from kerascnn.errors import KerascnnError
from kerascnn.models.batch_norm import BN_MOMENTUM
from kerascnn.models.registry import ModelSpec
from kerascnn.models.resnet import port_torchvision_resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)


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
    cause = (str(exc.__cause__ or exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
    return KerascnnError(
        f"could not get ImageNet weights for {name} ({cause}); put {file}{origin} in {where}, "
        "or use --weights none or --weights PATH"
    )


def build_backbone(spec: ModelSpec, input_shape: tuple[int, int, int], imagenet: bool) -> keras.Model:
    """The backbone of ``spec`` (a functional model named ``backbone``), with ImageNet weights if asked;
    its batch norms move at `BN_MOMENTUM`."""
    if spec.torchvision_url:  # our own builder; torchvision's checkpoint ported once, then cached
        model = spec.backbone(input_shape, False)
        if imagenet:
            model.load_weights(torchvision_imagenet_weights(spec, input_shape))
        return model
    try:
        model = spec.backbone(input_shape, imagenet)
    except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception when the download fails
        if imagenet and ("URL fetch failure" in str(exc) or isinstance(exc, OSError)):
            raise _download_message(spec.name, exc, str(keras_models_dir())) from exc
        raise
    if imagenet and spec.preprocess == "caffe":
        flip_first_conv_to_rgb(model.get_layer("conv1_conv"))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return model


def flip_first_conv_to_rgb(conv: keras.layers.Conv2D) -> None:
    """Keras' ResNet-50 weights expect BGR input; reverse the first kernel's input channels for RGB."""
    weights = conv.get_weights()
    weights[0] = weights[0][:, :, ::-1, :].copy()
    conv.set_weights(weights)


def check_hash_prefix(path: str | Path, prefix: str | None) -> None:
    """Raise `KerascnnError` unless the sha256 of the file at ``path`` starts with ``prefix`` (the
    hash torchvision names its checkpoints by; None: nothing to check)."""
    if prefix is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix):
        raise KerascnnError(f"{path}: its sha256 does not start with {prefix}, as its name says; the download is "
                            "damaged or not the checkpoint it names: delete it and run again")


def torchvision_imagenet_weights(spec: ModelSpec, input_shape: tuple[int, int, int] = (224, 224, 3)) -> str:
    """Path of ``spec``'s ImageNet weights as a Keras ``.weights.h5``, downloading its torchvision
    checkpoint through Keras' cache and converting it once (no PyTorch needed)."""
    from kerascnn.models.torch_state import read_state_dict

    url = spec.torchvision_url
    cache = keras_models_dir()
    converted = cache / (Path(url).stem + ".weights.h5")
    if converted.is_file():
        return str(converted)
    weights = spec.weights
    try:
        pth = keras.utils.get_file(Path(url).name, url, cache_dir=str(cache.parent), cache_subdir=cache.name,
                                   file_hash=weights.sha256, hash_algorithm="sha256")
    except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception when the download fails
        raise _download_message(spec.name, exc, str(cache)) from exc
    check_hash_prefix(pth, weights.hash_prefix)
    model = spec.backbone(input_shape, False)
    port_torchvision_resnet(read_state_dict(pth), model)
    converted.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(converted)
    return str(converted)

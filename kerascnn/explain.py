"""Grad-CAM (Selvaraju et al., ICCV 2017): where a model looks when it scores a class.

The map of an image is ``relu(sum_k w_k A_k)`` over the target layer's channels ``A_k``, with ``w_k``
the spatial mean of ``d logit_c / d A_k``; it is scaled to [0, 1] and resized (bilinear) to the image.
The gradient comes from the backend's own differentiation (`layer_gradients`), so the same
``model.keras`` gives the same maps on torch, JAX and TensorFlow. See ``docs/design/explain.md``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kerascnn.calibration import logits_model, softmax
from kerascnn.errors import KerascnnError

log = logging.getLogger("kerascnn")


@dataclass(frozen=True)
class Target:
    """Grad-CAM's layer: ``layer``, at the model's top level or inside the nested model ``inside``
    (a backbone); ``name`` is what it was asked as (a stage such as ``layer4``, or the layer's name)."""

    name: str
    layer: str
    inside: str | None = None


def _top_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _is_map(layer: keras.layers.Layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):
        return False


def _nested(model: keras.Model) -> keras.Model | None:
    return next((layer for layer in _top_layers(model) if isinstance(layer, keras.Model)), None)


def stages(model: keras.Model, model_name: str | None) -> dict[str, Target]:
    """The model's stages with a feature map, in input order, each at its last layer: a scratch
    CNN's ``blockN``; a registered backbone's stages (``layer1``..``layer4``, ``features.N``)."""
    from kerascnn.models import registry

    found: dict[str, Target] = {}
    backbone = _nested(model)
    if backbone is None:
        for layer in _top_layers(model):
            match = re.match(r"(block\d+)_", layer.name)
            if match and _is_map(layer):
                found[match.group(1)] = Target(match.group(1), layer.name)
        return found
    spec = registry.MODELS.get(model_name or "")
    if spec is None or spec.stage_of is None:
        return {backbone.name: Target(backbone.name, backbone.name)}
    for layer in backbone.layers:
        stage = spec.stage_of(layer.name)
        if stage is not None and _is_map(layer):
            found[stage] = Target(stage, layer.name, backbone.name)
    ordered = {name: found[name] for name in spec.stages if name in found}
    if ordered:  # the last stage ends the backbone: its output, where the model can always be cut
        last = list(ordered)[-1]
        ordered[last] = Target(last, backbone.name)
    return ordered


def target_of(model: keras.Model, layer: str | None = None, model_name: str | None = None) -> Target:
    """The target named ``layer`` (a stage, or a layer of the model or of its backbone with a feature
    map); None: the last stage (a CNN's last block, a ResNet's ``layer4``). An unknown name lists the
    valid ones."""
    named = stages(model, model_name)
    if layer is None:
        if named:
            return list(named.values())[-1]
        maps = [item for item in _top_layers(model) if _is_map(item)]
        if not maps:
            raise KerascnnError(f"{model.name} has no layer with a feature map to explain")
        return Target(maps[-1].name, maps[-1].name)
    if layer in named:
        return named[layer]
    top = {item.name: item for item in _top_layers(model)}
    if layer in top and _is_map(top[layer]):
        return Target(layer, layer)
    backbone = _nested(model)
    if backbone is not None and any(item.name == layer for item in backbone.layers) and _is_map(
            backbone.get_layer(layer)):
        return Target(layer, layer, backbone.name)
    maps = [name for name, item in top.items() if _is_map(item)]
    inside = f", or any layer of {backbone.name} with a feature map" if backbone is not None else ""
    raise KerascnnError(f"--layer {layer}: {model.name} has no such layer with a feature map; valid: "
                        f"{', '.join(dict.fromkeys([*named, *maps]))}{inside}")


def split(model: keras.Model, target: Target) -> tuple[Callable, Callable]:
    """``features(images) -> A`` (the target's activations) and ``head(A) -> logits``, both in
    inference mode: the model cut at the target, which every path from the input to the logits must
    pass through."""
    logits = logits_model(model).outputs[0]
    top = _top_layers(model)
    before = rest = None
    try:
        if target.inside is None:
            layer = model.get_layer(target.layer)
            # a nested model's own .output is in its graph; in this one, it is what the next layer takes
            activations = top[top.index(layer) + 1].input if isinstance(layer, keras.Model) else layer.output
            to_target, after = keras.Model(model.input, activations), keras.Model(activations, logits)
        else:
            nested = model.get_layer(target.inside)
            position = top.index(nested)
            inner = nested.get_layer(target.layer).output
            before = keras.Model(model.input, top[position - 1].output) if position else None
            to_target = keras.Model(nested.input, inner)
            rest = None if inner is nested.outputs[0] else keras.Model(inner, nested.outputs[0])
            after = keras.Model(top[position + 1].input, logits)
    except ValueError as exc:  # a layer some path goes around (inside a residual block)
        raise _cannot_cut(target, exc) from None

    def features(x: object) -> object:  # training=False: batch norms use, and keep, their moving statistics
        return to_target(before(x, training=False) if before is not None else x, training=False)

    def head(a: object) -> object:
        return after(rest(a, training=False) if rest is not None else a, training=False)

    shape = model.input_shape[1:]
    if all(shape):  # older Keras builds a model cut inside a block and fails only when it is called
        try:
            head(features(np.zeros((1, *shape), np.float32)))
        except (ValueError, KeyError) as exc:
            raise _cannot_cut(target, exc) from None
    return features, head


def _cannot_cut(target: Target, exc: Exception) -> KerascnnError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
    return KerascnnError(f"--layer {target.name}: the model cannot be cut at {target.layer} ({reason}); give a "
                         "stage or a block's output")


def layer_gradients(head: Callable, activations: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The logits of ``head(activations)`` and the gradient of each image's logit of its class in
    ``classes`` with respect to its activations, by the backend's own differentiation."""
    backend = keras.backend.backend()
    rows = np.arange(len(classes))
    if backend == "torch":
        import torch

        a = keras.ops.convert_to_tensor(activations).detach().requires_grad_(True)
        logits = head(a)
        (grads,) = torch.autograd.grad(logits[rows, torch.as_tensor(classes, device=logits.device)].sum(), a)
        return keras.ops.convert_to_numpy(logits.detach()), keras.ops.convert_to_numpy(grads)
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.convert_to_tensor(activations)
        with tf.GradientTape() as tape:
            tape.watch(a)
            logits = head(a)
            score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
        return logits.numpy(), tape.gradient(score, a).numpy()
    if backend == "jax":
        import jax

        def score(a: object) -> tuple[object, object]:
            logits = head(a)
            return logits[rows, classes].sum(), logits

        (_, logits), grads = jax.value_and_grad(score, has_aux=True)(jax.numpy.asarray(activations))
        return np.asarray(logits), np.asarray(grads)
    raise KerascnnError(f"Grad-CAM has no gradient for the {backend} backend; use torch, jax or tensorflow")


def scale(maps: np.ndarray) -> np.ndarray:
    """Each map shifted and divided so that it spans [0, 1] (a constant map becomes 0)."""
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    return maps / (1e-7 + maps.max(axis=(1, 2), keepdims=True))


@dataclass
class Explanation:
    """Grad-CAM maps (n, h, w) in [0, 1] at the images' size, the class each explains, the model's
    probabilities (n, classes) and the target layer."""

    maps: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    target: Target


def grad_cam(model: keras.Model, images: np.ndarray, *, classes: np.ndarray | list[int] | None = None,
             layer: str | None = None, model_name: str | None = None, batch_size: int = 32) -> Explanation:
    """Grad-CAM maps of ``images`` (n, h, w, c; raw pixels, as the model takes them) for ``classes``
    (default: each image's predicted class) at ``layer`` (`target_of`)."""
    target = target_of(model, layer, model_name)
    return _explain(*split(model, target), target, images, classes, batch_size)


def _explain(features: Callable, head: Callable, target: Target, images: np.ndarray,
             classes: np.ndarray | list[int] | None, batch_size: int = 32) -> Explanation:
    """`grad_cam` with the model already cut at ``target``."""
    images = np.asarray(images, np.float32)
    maps, chosen, probabilities = [], [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        activations = keras.ops.convert_to_numpy(features(batch)).astype(np.float32)
        if classes is None:
            logits = keras.ops.convert_to_numpy(head(activations))
            wanted = logits.argmax(axis=1)
        else:
            wanted = np.asarray(classes)[start:start + batch_size]
        logits, grads = (np.asarray(a, np.float32) for a in layer_gradients(head, activations, wanted))
        weights = grads.mean(axis=(1, 2), keepdims=True)
        cam = scale(np.maximum((weights * activations).sum(axis=-1), 0))
        resized = keras.ops.image.resize(cam[..., None], images.shape[1:3], interpolation="bilinear")
        maps.append(scale(keras.ops.convert_to_numpy(resized)[..., 0]))
        chosen.append(wanted)
        probabilities.append(softmax(logits))
    return Explanation(np.concatenate(maps), np.concatenate(chosen), np.concatenate(probabilities), target)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` (h, w, c uint8) with the map ``heat`` (h, w in [0, 1]) blended over it in the jet
    colours, as an RGB uint8 array."""
    from matplotlib import colormaps

    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    colour = colormaps["jet"](heat)[..., :3] * 255
    return np.clip((1 - alpha) * rgb + alpha * colour, 0, 255).astype(np.uint8)


def explain_files(model_path: str, inputs: list[str], out: Path, *, class_name: str | None = None,
                  layer: str | None = None) -> tuple[list[Path], list[str]]:
    """Write one Grad-CAM overlay per readable image of ``inputs`` (files or folders) into ``out``,
    named after the image and class (an earlier overlay of the same name is replaced, an input image
    never); return the overlays written and the unreadable files skipped."""
    from PIL import Image

    from kerascnn.prediction import expand_inputs, prepare
    from kerascnn.saving import class_names, load_model

    model, metadata = load_model(model_path)
    names = class_names(metadata, model.output_shape[-1])
    if class_name is not None and class_name not in names:
        raise KerascnnError(f"--class {class_name!r}: the model's classes are {', '.join(names)}")
    target = target_of(model, layer, metadata.get("model"))  # a bad --layer fails before any file is read
    paths = expand_inputs(inputs)
    inputs = {Path(p).resolve() for p in paths}  # never written over
    images, kept, skipped = prepare(paths, tuple(model.input_shape[1:]))
    if not images:
        raise KerascnnError("none of the images could be read")
    out.mkdir(parents=True, exist_ok=True)
    features, head = split(model, target)
    wanted = None if class_name is None else [names.index(class_name)]
    written = []
    for path, image in zip(kept, images):  # one at a time: images may differ in size where the model takes any
        result = _explain(features, head, target, image[None], wanted)
        label = names[int(result.classes[0])]
        file = out / f"{Path(path).stem}_cam_{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)}.png"
        if file.resolve() in inputs:
            raise KerascnnError(f"{file} is one of the images given; give --out another folder")
        Image.fromarray(overlay(image, result.maps[0])).save(file)
        log.info("%s: %s %.1f%% at %s -> %s", path, label, 100 * result.probabilities[0, result.classes[0]],
                 target.name, file)
        written.append(file)
    return written, skipped

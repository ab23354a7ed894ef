"""Training-time augmentation: the Keras layers of each preset, and `Augmenter`, which runs them on
a batch fast and reproducibly.

Keras on torch resamples a rotation, translation or zoom one image at a time
(``map_coordinates``; docs/design/input-pipeline.md). `Augmenter` draws those layers' parameters
itself from a per-batch NumPy generator, composes them into one output-to-input pixel map per image
(the same matrices the layers build, `affine_matrices`) and resamples the whole batch once:
``grid_sample`` on torch (on the GPU when there is one), `keras.ops.image.affine_transform` on JAX
and TensorFlow (already batched there). A test checks that the result equals the layers' own.
"""

from __future__ import annotations

import contextlib
import functools

import keras
import numpy as np

from kerascnn import keras_compat

GEOMETRIC = (keras.layers.RandomZoom, keras.layers.RandomRotation, keras.layers.RandomTranslation)


def augmentation(
    preset: str = "none",
    *,
    flip: bool = False,
    rotate: float = 0.0,
    translate: float = 0.0,
    erase: float = 0.0,
) -> Augmenter | None:
    """The augmentation of ``preset`` (none; basic: flip and translation 0.1; strong: flip, zoom 0.1,
    rotation 15 degrees, translation 0.1 and `RandAugment`) plus the single flags, as Keras layers run
    by an `Augmenter`, and `RandomErasing` with probability ``erase``, last; None when nothing is asked
    for. ``rotate`` is in degrees, ``translate`` a fraction of the image size. Inputs and outputs are
    pixels in 0..255. The random draws come from the generator the `Augmenter` is called with, not
    from the layers' seeds."""
    L = keras.layers
    chosen: list[keras.layers.Layer] = []
    if preset in ("basic", "strong") or flip:
        chosen.append(L.RandomFlip("horizontal"))
    if preset == "strong":
        rotate, translate = max(rotate, 15.0), max(translate, 0.1)
        chosen.append(L.RandomZoom(0.1, fill_mode="constant"))
    elif preset == "basic":
        translate = max(translate, 0.1)
    if rotate:
        chosen.append(L.RandomRotation(rotate / 360.0, fill_mode="constant"))
    if translate:
        chosen.append(L.RandomTranslation(translate, translate, fill_mode="constant"))
    randaugment = RandAugment() if preset == "strong" else None
    erasing = RandomErasing(erase) if erase else None
    return Augmenter(chosen, randaugment, erasing) if chosen or randaugment or erasing else None


def affine_matrices(layer: keras.layers.Layer, n: int, height: int, width: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) output-to-input pixel maps of a geometric layer (`GEOMETRIC`), with its random
    parameters drawn from ``rng`` in the ranges it was built with; Keras' conventions: pixel centres
    at integer coordinates, rotation and zoom about the image centre, angles in degrees."""
    if isinstance(layer, keras.layers.RandomRotation):
        return rotation_maps(np.deg2rad(rng.uniform(layer.factor[0] * 360.0, layer.factor[1] * 360.0, n)),
                             height, width)
    m = np.zeros((n, 3, 3))
    m[:, 2, 2] = 1.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    if isinstance(layer, keras.layers.RandomTranslation):
        dy = rng.uniform(layer.height_lower, layer.height_upper, n) * height
        dx = rng.uniform(layer.width_lower, layer.width_upper, n) * width
        m[:, 0, 0] = m[:, 1, 1] = 1.0
        m[:, 0, 2], m[:, 1, 2] = -dx, -dy
    elif isinstance(layer, keras.layers.RandomZoom):
        zy = 1.0 + rng.uniform(layer.height_lower, layer.height_upper, n)
        zx = zy if layer.width_factor is None else 1.0 + rng.uniform(layer.width_lower, layer.width_upper, n)
        m[:, 0, 0], m[:, 1, 1] = zx, zy
        m[:, 0, 2], m[:, 1, 2] = cx * (1.0 - zx), cy * (1.0 - zy)
    else:
        raise TypeError(f"{type(layer).__name__} is not one of {', '.join(g.__name__ for g in GEOMETRIC)}")
    return m


def rotation_maps(angle: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, 3, 3) output-to-input pixel maps rotating by ``angle`` (n,) radians about the image centre."""
    m = np.zeros((len(angle), 3, 3))
    m[:, 2, 2] = 1.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = np.cos(angle), np.sin(angle)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    m[:, 0, 2] = cx - cx * cos + cy * sin
    m[:, 1, 2] = cy - cx * sin - cy * cos
    return m


def resample(images: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """``images`` (n, h, w, c) resampled bilinearly through ``matrices`` (n, 3, 3, output-to-input
    pixel maps), zeros outside; float32 out. On torch it runs where Keras runs, on the GPU when there
    is one (the batch goes up as uint8 and comes back as float32), on a stream of its own, so reading it back
    waits for its own kernels and not for the training step queued before them."""
    n, height, width, _ = images.shape
    if keras.backend.backend() != "torch":
        flat = (matrices / matrices[:, 2:, 2:]).reshape(n, 9)[:, :8].astype(np.float32)
        out = keras.ops.image.affine_transform(np.asarray(images, np.float32), flat, interpolation="bilinear",
                                               fill_mode="constant", data_format="channels_last")
        return keras.ops.convert_to_numpy(out)
    import torch

    device = keras_compat.torch_device_name()  # "cuda" unless KERAS_TORCH_DEVICE says otherwise, as for the model
    # grid_sample with align_corners=True puts -1 and 1 on the first and last pixels' centres
    to_unit = np.array([[2.0 / max(width - 1, 1), 0, -1], [0, 2.0 / max(height - 1, 1), -1], [0, 0, 1]])
    theta = torch.from_numpy((to_unit @ matrices @ np.linalg.inv(to_unit))[:, :2].astype(np.float32))
    with torch.cuda.stream(_side_stream()) if device.startswith("cuda") else contextlib.nullcontext():
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
        grid = torch.nn.functional.affine_grid(theta.to(device), list(x.shape), align_corners=True)
        out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.permute(0, 2, 3, 1).contiguous().cpu().numpy()


@functools.cache
def _side_stream():
    """The CUDA stream augmentation runs on (one per process)."""
    import torch

    return torch.cuda.Stream()


class RandAugment:
    """timm's RandAugment ``rand-m9-n2``, per image: each image draws ``num_ops`` of `OPS` and applies
    each with probability ``prob`` at ``magnitude`` out of 10, with timm's arguments (rotation 30
    degrees, shear 0.3, translation 0.45 of the size, each with a random sign, at magnitude 10;
    posterize keeps int(4 m / 10) bits; solarize above 256 m / 10; enhancements by 1.8 m / 10 + 0.1).
    Geometric ops fill with zeros, as the other layers do (timm fills with grey 128). Keras'
    ``RandAugment`` draws its ops once per batch instead (docs/design/input-pipeline.md)."""

    OPS = ("auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "color",
           "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, prob: float = 0.5) -> None:
        self.num_ops, self.level, self.prob = num_ops, magnitude / 10.0, prob

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``images`` (n, h, w, c) float32 in 0..255, augmented (a new array)."""
        images = np.array(images, np.float32)
        n = len(images)
        ops = rng.integers(len(self.OPS), size=(n, self.num_ops))
        applied = rng.random((n, self.num_ops)) < self.prob
        signs = np.where(rng.random((n, self.num_ops)) < 0.5, -1.0, 1.0)
        for k in range(self.num_ops):
            for op in np.unique(ops[applied[:, k], k]):
                index = np.flatnonzero(applied[:, k] & (ops[:, k] == op))
                images[index] = self.apply(self.OPS[op], images[index], signs[index, k])
        return images

    def apply(self, op: str, x: np.ndarray, sign: np.ndarray) -> np.ndarray:
        """Op ``op`` at this magnitude on ``x`` (m, h, w, c), ``sign`` (m,) of +-1 for geometric ops."""
        level = self.level
        if op in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
            m, height, width = x.shape[:3]
            maps = np.tile(np.eye(3), (m, 1, 1))
            if op == "rotate":
                maps = rotation_maps(np.deg2rad(30.0 * level) * sign, height, width)
            elif op == "shear_x":  # about the top-left corner, as timm (PIL) shears
                maps[:, 0, 1] = 0.3 * level * sign
            elif op == "shear_y":
                maps[:, 1, 0] = 0.3 * level * sign
            else:
                maps[:, 0 if op == "translate_x" else 1, 2] = 0.45 * level * sign * (width if op == "translate_x"
                                                                                     else height)
            return resample(x, maps)
        if op == "auto_contrast":
            low, high = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
            flat = high <= low  # a constant channel stays as it is
            return (x - np.where(flat, 0.0, low)) * np.where(flat, 1.0, 255.0 / np.maximum(high - low, 1e-3))
        if op == "equalize":
            return _equalize(x)
        if op == "invert":
            return 255.0 - x
        if op == "posterize":
            shift = 8 - int(level * 4)  # keeps int(4 * level) bits, as timm does
            return ((x.astype(np.uint8) >> shift) << shift).astype(np.float32)
        if op == "solarize":
            return np.where(x >= int(256 * level), 255.0 - x, x)  # threshold 230 at magnitude 9
        if op == "solarize_add":
            return np.where(x < 128, np.minimum(x + 110.0 * level, 255.0), x)
        factor = 1.8 * level + 0.1  # timm's enhancement factor: 1.72 at magnitude 9
        if op in ("color", "contrast"):
            grey = x if x.shape[-1] == 1 else x @ np.array([[0.299], [0.587], [0.114]], np.float32)
        if op == "brightness":
            blend = np.zeros_like(x)
        elif op == "color":
            blend = np.broadcast_to(grey, x.shape)
        elif op == "contrast":
            blend = np.broadcast_to(grey.mean(axis=(1, 2, 3), keepdims=True), x.shape)
        elif op == "sharpness":  # PIL's smoothing kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, borders kept
            blend = x.copy()
            padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
            h, w = x.shape[1:3]
            smooth = sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) + 4 * x
            blend[:, 1:-1, 1:-1] = (smooth / 13.0)[:, 1:-1, 1:-1]
        else:
            raise ValueError(f"unknown RandAugment op {op!r}")
        return np.clip(blend + factor * (x - blend), 0.0, 255.0)


def _equalize(x: np.ndarray) -> np.ndarray:
    """Histogram equalisation of each image and channel (PIL's ``ImageOps.equalize``)."""
    out = np.empty_like(x)
    pixels = x.astype(np.uint8)
    for i in range(len(x)):
        for c in range(x.shape[-1]):
            channel = pixels[i, ..., c]
            hist = np.bincount(channel.ravel(), minlength=256)
            nonzero = hist[hist > 0]
            step = (nonzero.sum() - nonzero[-1]) // 255 if len(nonzero) else 0
            if step == 0:
                out[i, ..., c] = x[i, ..., c]
                continue
            lut = np.clip((np.cumsum(hist) - hist + step // 2) // step, 0, 255)
            out[i, ..., c] = lut[channel]
    return out


class RandomErasing:
    """Random erasing (Zhong et al. 2017; timm's ``--reprob``): with probability ``prob`` an image
    gets one box of ``area`` (a fraction of the image, uniform in the range) and aspect ratio
    (height / width, log-uniform in ``ratio``) at a uniform position, its pixels replaced by uniform
    noise in 0..255 (the paper's fill; timm draws normal noise after normalisation). Not Keras 3.15's
    ``RandomErasing``: it draws each image's probability uniformly below ``factor``, takes a box side
    (not area) fraction, and fills with normal noise x 255 clipped to 0..255 (half the pixels black)."""

    def __init__(self, prob: float, area: tuple[float, float] = (0.02, 1 / 3),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> None:
        self.prob, self.area, self.log_ratio = prob, area, (np.log(ratio[0]), np.log(ratio[1]))

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``images`` (n, h, w, c) in 0..255 with the boxes erased, in place; returns it."""
        n, height, width, channels = images.shape
        erased = np.flatnonzero(rng.random(n) < self.prob)
        area = rng.uniform(*self.area, len(erased)) * height * width
        ratio = np.exp(rng.uniform(*self.log_ratio, len(erased)))
        box_h = np.clip(np.rint(np.sqrt(area * ratio)), 1, height).astype(int)
        box_w = np.clip(np.rint(np.sqrt(area / ratio)), 1, width).astype(int)
        top = rng.integers(0, height - box_h + 1)
        left = rng.integers(0, width - box_w + 1)
        for i, t, lft, h, w in zip(erased, top, left, box_h, box_w):
            noise = rng.integers(0, 256, (h, w, channels))
            images[i, t:t + h, lft:lft + w] = noise.astype(images.dtype)
        return images


class Augmenter:
    """Runs augmentation layers on a batch of images with a NumPy generator (seeded per epoch and
    batch by `kerascnn.data.pipeline.Batches`, so a resumed run sees the same augmentations).

    ``layers`` are a horizontal ``RandomFlip`` (a NumPy flip of each image with probability 1/2)
    and `GEOMETRIC` layers (one batched resample, module docstring), then ``randaugment``, then
    ``erasing``.
    """

    def __init__(self, layers: list[keras.layers.Layer], randaugment: RandAugment | None = None,
                 erasing: RandomErasing | None = None) -> None:
        for layer in layers:
            flip = isinstance(layer, keras.layers.RandomFlip) and layer.mode == "horizontal"
            if not flip and not isinstance(layer, GEOMETRIC):
                raise ValueError(f"{type(layer).__name__} is not a horizontal flip or one of "
                                 f"{', '.join(g.__name__ for g in GEOMETRIC)}")
            if not flip and (layer.fill_mode, layer.fill_value, layer.interpolation) != ("constant", 0.0, "bilinear"):
                raise ValueError(f"{layer.name}: only fill_mode='constant', fill_value=0 and bilinear interpolation "
                                 "are resampled in batches")
        self.layers, self.randaugment, self.erasing = list(layers), randaugment, erasing
        self.flip = any(isinstance(layer, keras.layers.RandomFlip) for layer in layers)
        self.geometric = [layer for layer in layers if isinstance(layer, GEOMETRIC)]

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The augmented batch: ``images`` itself (flipped and erased in place) while only flips and
        erasing apply, else float32."""
        if not len(images):
            return images
        if self.flip:
            flipped = rng.random(len(images)) < 0.5
            images[flipped] = images[flipped, :, ::-1]
        if self.geometric:
            n, height, width = images.shape[:3]
            maps = np.broadcast_to(np.eye(3), (n, 3, 3))
            for layer in self.geometric:  # applied in order: the first layer's map is the outermost
                maps = maps @ affine_matrices(layer, n, height, width, rng)
            images = resample(images, maps)
        if self.randaugment is not None:
            images = self.randaugment(images, rng)
        if self.erasing is not None:
            images = self.erasing(images, rng)
        return images


class LabelMixing:
    """MixUp and CutMix on a batch and its one-hot labels, as timm does them: one mixing weight
    ``lam ~ Beta(alpha, alpha)`` per batch, the batch mixed with a random permutation of itself
    (timm reverses its batch; ours are sorted by index, so reversing would pair class 0 with the last); CutMix
    pastes a box of area ``1 - lam`` (centre uniform, clipped to the image) and sets ``lam`` from
    the box's pixels. With both, each batch takes one at random (even odds). An alpha of 0 leaves
    one out. Drawn from the batch's generator (`Augmenter`). Not Keras' ``MixUp``/``CutMix``: 3.15's
    CutMix draws its alpha uniformly below ``factor`` and weighs labels by a box area that differs
    from the pasted pixels (0.999 for a box of 81% of a 10x10 image)."""

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0) -> None:
        self.alphas = {name: alpha for name, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha}

    def __bool__(self) -> bool:
        return bool(self.alphas)

    def __call__(self, images: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if not self.alphas or len(images) < 2:
            return images, labels
        name = list(self.alphas)[int(rng.integers(len(self.alphas)))]
        lam = float(rng.beta(self.alphas[name], self.alphas[name]))
        other = rng.permutation(len(images))
        images = np.asarray(images, np.float32)
        if name == "mixup":
            images = lam * images + (1.0 - lam) * images[other]
        else:
            height, width = images.shape[1:3]
            cut_h, cut_w = int(height * np.sqrt(1.0 - lam)), int(width * np.sqrt(1.0 - lam))
            cy, cx = int(rng.integers(height)), int(rng.integers(width))
            y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
            x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
            images = images.copy()
            images[:, y0:y1, x0:x1] = images[other, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        return images, (lam * labels + (1.0 - lam) * labels[other]).astype(np.float32)

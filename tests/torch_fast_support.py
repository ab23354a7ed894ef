"""What the fast torch path's tests share: the device, sample batches, twins of a model, both layouts."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest

if keras.backend.backend() != "torch":
    pytest.skip("the fast path is the torch backend's", allow_module_level=True)

import torch  # noqa: E402

from kerascnn import keras_compat, models  # noqa: E402
from kerascnn.torch_fast import TorchProgram  # noqa: E402

# Where Keras puts the weights: the GPU when there is one (benchmarks/gpu_session.sh runs this file
# there); the tolerances below are float32's, so cuDNN's default TF32 convolutions are off.
DEVICE = torch.device(keras_compat.torch_device_name())
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False  # off by default, but some containers turn it on

STEPS = 6
# Losses after STEPS Adam steps agree to this (float32 rounding through six updates, measured ~1e-6).
LOSS_RTOL = 1e-4


GREY_SAMPLE = np.array([45, 155], np.uint8).reshape(2, 1, 1, 1)  # normalisation statistics: mean 100, variance 3025


def tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` on `DEVICE`."""
    return torch.from_numpy(a).to(DEVICE)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def build(name: str, size: int, channels: int, **options) -> keras.Model:
    keras.utils.set_random_seed(0)
    return models.build(name, (size, size, channels), 4, **options)


def twin(model: keras.Model) -> keras.Model:
    """A second model with the same architecture and weights."""
    other = keras.Model.from_config(model.get_config())
    other.set_weights(model.get_weights())
    return other


def assert_runs_as_torch_ops_like_keras(model: keras.Model, x: torch.Tensor, channels_last: bool = False) -> None:
    """The program runs ``model`` with no Keras layer and computes its forward (float32 rounding)."""
    program = TorchProgram(model, channels_last=channels_last)
    assert program.keras_layers == []
    np.testing.assert_allclose(as_numpy(program(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


CASES = {  # name, size, channels, build options
    "cnn": ("cnn", 16, 1, {"sample": GREY_SAMPLE}),
    "cnn_variant": ("cnn", 16, 1, {"sample": GREY_SAMPLE, "convs_per_block": [1, 2], "norm_after_pool": True}),
    "resnet18": ("resnet18", 32, 3, {"image_size": 32}),
    "mobilenet_v2": ("mobilenet_v2", 32, 3, {"image_size": 32}),
    "resnet18_grey_resized": ("resnet18", 28, 1, {"image_size": 32}),  # the offline transfer study's input
    # MobileNetV3's hard sigmoid is bare operations (x + 3.0, x * (1 / 6)); EfficientNet has squeeze-excite
    # reshapes and per-sample dropout (noise_shape)
    "mobilenet_v3_small": ("mobilenet_v3_small", 32, 3, {"image_size": 32}),
    "efficientnet_b0": ("efficientnet_b0", 32, 3, {"image_size": 32}),
}


class TracedGraph:
    """`CudaGraph`'s semantics on any device: ``make_fx`` records the step's tensor operations while
    it runs it once (so, unlike a CUDA graph, the capture is that step), and `replay` runs the record
    again on the same tensors with every host number the step read frozen into it, as a CUDA graph
    keeps its kernels' arguments. A step that reads a changing number on the host replays it stale.
    What a capture forbids fails here too: reading a value back to the host (``make_fx`` refuses
    ``.item()``) and making a tensor from host data (a copy from pageable memory on CUDA); unlike a
    failed CUDA capture, such a step has run (in part) by then, so the `captured` fixture fails the
    test on the fallback's warning rather than let the step run twice."""

    runs_on_capture = True

    def __init__(self, step: Callable[[], None], stream: None) -> None:
        from torch.fx.experimental.proxy_tensor import make_fx

        self.module = make_fx(step)()
        made = [n.name for n in self.module.graph.nodes if n.target is torch.ops.aten.lift_fresh_copy.default]
        if made:
            raise RuntimeError(f"the step makes tensors from host data: {made}")

    def replay(self) -> None:
        with torch.no_grad():  # the record holds the backward pass as operations of its own
            self.module()

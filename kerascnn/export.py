"""Taking a trained model out of kerascnn: ONNX, TensorFlow SavedModel or a plain ``.keras`` file.

Every exported model takes raw 0..255 pixels, float32, shaped (batch, height, width, channels),
with its preprocessing inside, and outputs class probabilities. A JSON file beside it
(``<file>.json``) names the classes, the input and output, the preprocessing and the source run.

Which backend writes which format (and the packages it needs):

| format | torch | jax | tensorflow |
| --- | --- | --- | --- |
| onnx | yes (onnx, onnxscript) | no | no |
| savedmodel | no | no | yes |
| keras | yes | yes | yes |

A ``.keras`` file loads on every backend, so ``--backend`` picks the one a format needs. ONNX from
jax and tensorflow goes through jax2onnx and tf2onnx in Keras 3.15, and both fail on our models
(jax2onnx: ``Resizing`` with a dynamic batch; tf2onnx: ``Normalization``'s constants become
inputs of the graph), so they are refused rather than half-working.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerascnn.config import EXPORT_FORMATS as FORMATS
from kerascnn.errors import KerascnnError
from kerascnn.rundir import check_free, write_json
from kerascnn.saving import all_layers, class_names, float32_model, load_model, model_file_of, save_model

SUFFIXES = {"onnx": ".onnx", "savedmodel": ".savedmodel", "keras": ".keras"}
# (format, backend) -> the packages the export needs beyond the backend; missing pairs cannot export
NEEDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("onnx", "torch"): ("onnx", "onnxscript"),
    ("savedmodel", "tensorflow"): (),
    ("keras", "torch"): (),
    ("keras", "jax"): (),
    ("keras", "tensorflow"): (),
}
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


def check_format(format: str, backend: str | None = None) -> None:
    """Raise `KerascnnError` unless ``backend`` (default: Keras') can write ``format`` with what is installed."""
    backend = backend or keras.backend.backend()
    if format not in FORMATS:
        raise KerascnnError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    if (format, backend) not in NEEDS:
        able = [b for f, b in NEEDS if f == format]
        raise KerascnnError(f"{format} export needs the {' or '.join(able)} backend, not {backend}; "
                            f"add --backend {able[0]} (a .keras file loads on every backend)")
    missing = [p for p in NEEDS[format, backend] if importlib.util.find_spec(p) is None]
    if missing:
        raise KerascnnError(f"{format} export on the {backend} backend needs {', '.join(missing)}: "
                            f"pip install {' '.join(missing)}")


def default_path(model_path: Path, format: str) -> Path:
    """``export/<model file's stem><suffix>`` beside the model (inside its run folder)."""
    return model_path.parent / "export" / (model_path.stem + SUFFIXES[format])


def description_path(path: str | Path) -> Path:
    """The JSON file that describes an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def export(source: str | Path, format: str = "onnx", out: str | Path | None = None) -> Path:
    """Export the model of ``source`` (a ``.keras`` file or a run folder) as ``format`` to ``out``
    (default: `default_path`) and describe it in `description_path`; return the exported path.
    Nothing is written unless the export can happen, and nothing existing is overwritten."""
    model_path = model_file_of(source)
    check_format(format)
    path = Path(out).expanduser() if out else default_path(model_path, format)
    for target in (path, description_path(path)):
        if out or target.exists():  # the default folder is created below, once the model has loaded
            check_free(target, "--out", folder=False)
    model, metadata = load_model(model_path)
    if any(d is None for d in model.input_shape[1:]):
        raise KerascnnError(f"{model_path} takes images of any size; export needs a model with a fixed input size")
    model = float32_model(model)
    path.parent.mkdir(exist_ok=True)
    try:
        if format == "keras":
            save_model(model, path, metadata)
        elif format == "onnx":
            _export_onnx(model, path)
        else:
            model.export(str(path), format="tf_saved_model", verbose=False)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    write_json(description_path(path), describe(model, metadata, format, path, model_path))
    return path


def _export_onnx(model: keras.Model, path: Path) -> None:
    """ONNX with a dynamic batch axis, through ``torch.onnx``'s dynamo exporter called directly:
    Keras 3.15's ``model.export`` takes the TorchScript exporter whenever the batch is dynamic, and
    that fails on our models (``squeeze`` with a tensor dim)."""
    import torch

    shape = model.input_shape[1:]

    class Inference(torch.nn.Module):
        def __init__(self, wrapped: keras.Model) -> None:
            super().__init__()
            self.wrapped = wrapped

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.wrapped(images, training=False)

    sample = torch.full((2, *shape), 127.0, device=next(iter(model.parameters())).device)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and such
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(Inference(model).eval(), (sample,), dynamo=True, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
    finally:
        exporter_log.setLevel(level)
    program.optimize()
    program.save(str(path))


def preprocessing(model: keras.Model) -> list[str]:
    """What the model does to raw pixels before its first convolution, in order."""
    steps = []
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.Resizing):
            steps.append(f"resize to {layer.height}x{layer.width} ({layer.interpolation})")
        elif layer.name == "grey_to_rgb":
            steps.append("grey copied to 3 channels")
        elif isinstance(layer, keras.layers.Normalization):
            mean = np.ravel(keras.ops.convert_to_numpy(layer.mean)).astype(float).round(3).tolist()
            std = np.sqrt(np.ravel(keras.ops.convert_to_numpy(layer.variance)).astype(float)).round(3).tolist()
            steps.append(f"(x - {mean}) / {std} per channel")
        elif isinstance(layer, keras.layers.Rescaling):
            steps.append(f"x * {float(np.ravel(layer.scale)[0]):.6g} + {float(np.ravel(layer.offset)[0]):.6g}")
    return steps


def describe(model: keras.Model, metadata: dict[str, Any], format: str, path: Path, model_path: Path
             ) -> dict[str, Any]:
    """The JSON written beside an exported model."""
    shape = [None, *model.input_shape[1:]]
    return {
        "format": format,
        "file": path.name,
        "class_names": class_names(metadata, model.output_shape[-1]),
        "input": {"name": INPUT_NAME if format == "onnx" else model.inputs[0].name, "shape": shape,
                  "dtype": "float32", "layout": "batch, height, width, channels", "range": [0, 255]},
        "output": {"name": OUTPUT_NAME if format == "onnx" else model.outputs[0].name,
                   "shape": [None, model.output_shape[-1]],
                   "meaning": "class probabilities (softmax), in class_names order"},
        **({"endpoint": "serve"} if format == "savedmodel" else {}),
        "preprocessing": preprocessing(model),
        "source": {**metadata, "model_file": str(model_path)},
        "exported_with": {"backend": keras.backend.backend(), "keras": keras.__version__},
    }


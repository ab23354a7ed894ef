"""``model.keras`` files that describe themselves: the Keras archive plus a ``kerascnn.json``
entry holding class names and where the model came from."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerascnn.errors import KerascnnError

METADATA_ENTRY = "kerascnn.json"


def save_model(model: keras.Model, path: str | Path, metadata: dict[str, Any]) -> None:
    """Save ``model`` as a ``.keras`` archive for using it, and add ``metadata`` (JSON) to it: its
    layers and weights without a compile configuration or optimizer state (a run's ``checkpoint/``
    keeps those), so plain ``keras.saving.load_model(path)`` loads it on every backend, kerascnn or not."""
    from kerascnn.checkpoint import weights_size, write_whole

    shipped = _rebuilt(model, model.get_config()) if model.compiled else model

    def write(partial: Path) -> None:
        shipped.save(partial)
        with zipfile.ZipFile(partial, "a") as archive:
            archive.writestr(METADATA_ENTRY, json.dumps(metadata, indent=2))
    write_whole(Path(path), write, weights_size(model))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The kerascnn metadata of a ``.keras`` file, or ``{}`` if it has none."""
    with zipfile.ZipFile(path) as archive:
        if METADATA_ENTRY not in archive.namelist():
            return {}
        return json.loads(archive.read(METADATA_ENTRY))


def class_names(metadata: dict[str, Any], count: int) -> list[str]:
    """The class names a model file records, else "0", "1", ... for its ``count`` outputs."""
    return list(metadata.get("class_names") or [str(i) for i in range(count)])


def model_file_of(path: str | Path) -> Path:
    """``path`` itself if it is a file, ``path/model.keras`` if it is a run folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise KerascnnError(f"no model at {str(path)!r}; give a model.keras file or a run folder that holds one")
    return path


def load_model(path: str | Path) -> tuple[keras.Model, dict[str, Any]]:
    """Load a ``.keras`` file (or a run folder's) uncompiled, on any backend, with its metadata."""
    path = model_file_of(path)
    try:
        metadata = read_metadata(path)
        model = keras.saving.load_model(path, compile=False)
    except zipfile.BadZipFile:
        raise KerascnnError(f"{path} is not a .keras model archive") from None
    except (ValueError, TypeError, KeyError, OSError, json.JSONDecodeError) as exc:  # refused by safe mode, or damaged
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise KerascnnError(f"{path} cannot be loaded ({first}); give a model.keras saved by kerascnn or Keras "
                            "(code in a model file, such as a Lambda layer, is never run)") from None
    return model, metadata


def float32_model(model: keras.Model) -> keras.Model:
    """``model`` itself if it computes in float32, else a float32 copy with the same weights
    (mixed-precision training leaves bfloat16/float16 layers, which ONNX exporters do not take and
    CPUs without AMX run slowly). Every export format is written from it, and `load_classifier`
    predicts with it where this machine would not train in the model's precision."""
    if all(layer.dtype_policy.name == "float32" for layer in all_layers(model)):
        return model

    def to_float32(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: to_float32(v) for k, v in node.items()}
        if isinstance(node, list):
            return [to_float32(v) for v in node]
        return node

    return _rebuilt(model, to_float32(model.get_config()), np.float32)


def _rebuilt(model: keras.Model, config: dict[str, Any], dtype: Any = None) -> keras.Model:
    """A new, uncompiled model of ``model``'s class from ``config``, with ``model``'s weights (as ``dtype``)."""
    copy = model.__class__.from_config(config)
    copy.set_weights([np.asarray(w, dtype) for w in model.get_weights()])
    return copy


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of ``model``, nested models' layers included, outermost first."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found += all_layers(layer)
    return found

"""``--weights PATH``: a torchvision ``.pth`` (ResNet-18/34), a Keras ``.weights.h5`` (the whole
model's or its backbone's), or an earlier run's ``model.keras`` (matching layers are taken, the
head is rebuilt when the class count differs)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import keras

from kerascnn.errors import KerascnnError
from kerascnn.models.registry import MODELS
from kerascnn.models.resnet import port_torchvision_resnet

PREPROCESSING = ("normalize", "rescale", "resize", "grey_to_rgb")


def _weighted_layers(model: keras.Model, prefix: str = "") -> dict[str, keras.layers.Layer]:
    """Layers that hold weights, by name (``backbone/NAME`` inside the backbone)."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_weighted_layers(layer, f"{prefix}{layer.name}/"))
        elif layer.weights and layer.name not in PREPROCESSING:
            found[prefix + layer.name] = layer
    return found


def copy_matching(source: keras.Model, target: keras.Model) -> dict[str, Any]:
    """Copy the weights of every layer of ``source`` whose name and shapes match one of ``target``."""
    src, dst = _weighted_layers(source), _weighted_layers(target)
    loaded, new = [], []
    for name, layer in dst.items():
        other = src.get(name)
        if other is not None and [w.shape for w in other.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(other.get_weights())
            loaded.append(name)
        else:
            new.append(name)
    return {"layers_loaded": len(loaded), "layers_new": new}


def weights_file(path: str | Path) -> Path:
    """``--weights PATH`` as an existing file; one error line otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise KerascnnError(f"--weights {str(path)!r}: no such file; give imagenet, none, or a .pth, "
                            ".weights.h5 or model.keras file", option="weights")
    return path


def load_weights(model: keras.Model, path: str | Path) -> dict[str, Any]:
    """Load ``path`` into ``model`` (see module doc); returns what was loaded and what stays new."""
    path = weights_file(path)
    report: dict[str, Any] = {"source": str(path)}
    if path.suffix in (".pth", ".pt"):
        return report | _load_torchvision(model, path)
    if path.name.endswith(".weights.h5"):
        return report | _load_h5(model, path)
    if path.suffix == ".keras":
        try:
            source = keras.saving.load_model(path, compile=False)
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise KerascnnError(f"--weights {path}: not a loadable .keras model ({exc})", option="weights") from None
        result = copy_matching(source, model)
        if not result["layers_loaded"]:
            raise KerascnnError(f"--weights {path}: no layer of that {source.name} model fits {model.name}",
                                option="weights")
        return report | result
    raise KerascnnError(f"--weights {path}: unknown kind of file; give a .pth, .weights.h5 or model.keras",
                        option="weights")


def _load_torchvision(model: keras.Model, path: Path) -> dict[str, Any]:
    from kerascnn.models.torch_state import UnreadableState, read_state_dict

    ported = [name for name, spec in MODELS.items() if spec.torchvision_url]
    if model.name not in ported:
        raise KerascnnError(f"--weights {path}: torchvision .pth checkpoints port to {' and '.join(ported)} only",
                            option="weights")
    try:
        state = read_state_dict(path)
    except UnreadableState as exc:
        raise KerascnnError(f"--weights {exc}; give a state dict saved by torch.save", option="weights") from None
    try:
        used = port_torchvision_resnet(state, model.get_layer("backbone"))
    except ValueError as exc:
        raise KerascnnError(f"--weights {path}: {exc}", option="weights") from None
    head = model.get_layer("head_logits")
    fc_shapes = [tuple(state[k].shape) if k in state else None for k in ("fc.weight", "fc.bias")]
    if fc_shapes == [tuple(head.kernel.shape[::-1]), tuple(head.bias.shape)]:
        head.set_weights([state["fc.weight"].T, state["fc.bias"]])
        return {"tensors_loaded": len(used) + 2, "layers_new": []}
    return {"tensors_loaded": len(used), "layers_new": ["head_logits"]}


def _load_h5(model: keras.Model, path: Path) -> dict[str, Any]:
    import h5py

    if not h5py.is_hdf5(path):
        raise KerascnnError(f"--weights {path}: not an HDF5 file; give a .weights.h5 saved by Keras", option="weights")
    try:
        model.load_weights(path)
        return {"layers_loaded": len(_weighted_layers(model)), "layers_new": []}
    except ValueError:
        pass
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        backbone = None
    if backbone is not None:
        try:
            backbone.load_weights(path)
            return {"layers_loaded": len(_weighted_layers(backbone)),
                    "layers_new": [n for n in _weighted_layers(model) if not n.startswith("backbone/")]}
        except ValueError:
            pass
    raise KerascnnError(f"--weights {path}: its weights fit neither {model.name} nor its backbone", option="weights")

"""Run on one backend (KERAS_BACKEND) by tests/test_backends.py.

    python tests/backend_worker.py train DIR     train the portability models, DIR/runs/<backend>-<kind>/
    python tests/backend_worker.py predict DIR   predict with every run's model.keras (and its Grad-CAM maps) into
                                                 DIR/preds/<backend>/, then continue training from the other
                                                 backends' cnn models
"""

import subprocess
import sys
from pathlib import Path

import numpy as np

import kerascnn
from kerascnn import explain
from kerascnn.config import RunConfig

# float32: the check compares predictions across backends to 1e-4, and a mixed-precision model (what
# --precision auto trains on a CPU with AMX) predicts with each backend's own bfloat16 rounding
COMMON = {"split": "30,5,5", "epochs": 1, "verbose": 0, "precision": "float32"}
KINDS = {
    # a scratch CNN compiled with our discriminative optimizer
    "cnn": {"model": "cnn", "backbone_lr_scale": 0.1},
    "resnet18": {"model": "resnet18", "weights": "none", "image_size": 32, "unfreeze": "layer4,head"},
    "mobilenet_v2": {"model": "mobilenet_v2", "weights": "none", "image_size": 32, "unfreeze": "all"},
}

# Grad-CAM's layer per kind: one with a map larger than 1x1 at 32x32 (the last stages are 1x1 there)
CAM_LAYERS = {"cnn": None, "resnet18": "layer3", "mobilenet_v2": "features.7"}


def inputs() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)).astype("uint8")


def train(root: Path) -> None:
    backend = __import__("keras").backend.backend()
    for kind, options in KINDS.items():
        kerascnn.run(RunConfig("digits", **(COMMON | options), out=str(root / "runs" / f"{backend}-{kind}")))


def predict(root: Path) -> None:
    backend = __import__("keras").backend.backend()
    out = root / "preds" / backend
    out.mkdir(parents=True, exist_ok=True)
    for run in sorted((root / "runs").iterdir()):
        if not (run / "model.keras").is_file():
            continue
        model, metadata = kerascnn.load_model(run)
        assert metadata["class_names"] == [str(d) for d in range(10)]
        np.save(out / f"{run.name}.npy", np.asarray(model.predict(inputs(), verbose=0), dtype=np.float64))
        kind = run.name.split("-", 1)[1]
        cams = explain.grad_cam(model, inputs(), classes=np.arange(16) % 10, layer=CAM_LAYERS[kind],
                                model_name=metadata["model"])
        np.save(out / f"{run.name}.cam.npy", cams.maps)
    for run in sorted((root / "runs").glob("*-cnn")):  # trained with the discriminative optimizer
        plain_keras_loads(run / "model.keras")
        if not run.name.startswith(backend):  # continue training a model written on another backend
            target = root / "continued" / f"{backend}-from-{run.name}"
            kerascnn.run(RunConfig("digits", "cnn", weights=str(run / "model.keras"), **COMMON, out=str(target)))


PLAIN_KERAS = """
import sys, json, zipfile
import keras
model = keras.saving.load_model(sys.argv[1])  # Keras' defaults: compile=True, safe_mode=True
assert not any(name.startswith("kerascnn") for name in sys.modules), "kerascnn was imported"
names = json.loads(zipfile.ZipFile(sys.argv[1]).read("kerascnn.json"))["class_names"]  # as docs/export.md shows
assert model.predict(__import__("numpy").zeros((2, 8, 8, 1)), verbose=0).shape == (2, len(names))
"""


def plain_keras_loads(path: Path) -> None:
    """Plain Keras, kerascnn not imported, loads ``path`` with its defaults on this backend."""
    done = subprocess.run([sys.executable, "-c", PLAIN_KERAS, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"plain keras.saving.load_model({path}):\n{done.stderr[-2000:]}"


if __name__ == "__main__":
    {"train": train, "predict": predict}[sys.argv[1]](Path(sys.argv[2]))

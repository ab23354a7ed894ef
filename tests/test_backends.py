"""Backends: --backend, model files moving between backends, data parallelism, precision, jit."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from run_configs import decided

from experiments.cli import select_backend
from kerascnn import data, models, training
from kerascnn.config import RunConfig
from kerascnn.errors import KerascnnError

BACKENDS = ("torch", "jax", "tensorflow")
HERE = Path(__file__).parent
BACKEND = keras.backend.backend()


def subprocess_env(backend: str, **extra: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(HERE.parent), **extra)
    return env


def test_backend_option_is_checked_before_keras_loads(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(KerascnnError, match=r"backend 'jax' is not installed; pip install 'kerascnn\[jax\]'"):
        select_backend("jax")


@pytest.mark.slow
def test_backend_option_sets_the_backend_of_a_run(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.run", "digits", "cnn", "--backend", BACKEND, "--epochs", "1",
               "--split", "20,5,5", "--out", str(out), "--verbose", "0"]
    done = subprocess.run(command, env=subprocess_env("not-a-backend"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    environment = json.loads((out / "config.json").read_text())["environment"]
    assert environment["backend"] == BACKEND and environment["device"] and environment["versions"]["keras"]


@pytest.mark.slow
@pytest.mark.backends
def test_model_files_move_between_backends(tmp_path):
    missing = [b for b in BACKENDS if importlib.util.find_spec(b) is None]
    if missing:
        if os.environ.get("KERASCNN_REQUIRE_ALL_BACKENDS"):
            pytest.fail(f"backends missing: {missing}")
        pytest.skip(f"needs all three backends (missing {missing}); tox -e portability")
    worker = str(HERE / "backend_worker.py")
    for stage in ("train", "predict"):
        for backend in BACKENDS:
            done = subprocess.run([sys.executable, worker, stage, str(tmp_path)], env=subprocess_env(backend),
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"{stage} on {backend}:\n{done.stderr[-3000:]}"
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 9
    for run in runs:
        predictions = {b: np.load(tmp_path / "preds" / b / f"{run}.npy") for b in BACKENDS}
        cams = {b: np.load(tmp_path / "preds" / b / f"{run}.cam.npy") for b in BACKENDS}
        assert all(c.max() > 0.99 for c in cams.values()), f"{run}: a blank Grad-CAM map"
        for backend in BACKENDS:
            difference = np.abs(predictions[backend] - predictions[run.split("-")[0]]).max()
            assert difference <= 1e-4, f"{run} predicted on {backend}: max abs difference {difference:.2e}"
            difference = np.abs(cams[backend] - cams[run.split("-")[0]]).max()
            assert difference <= 1e-4, f"{run}'s Grad-CAM on {backend}: max abs difference {difference:.2e}"
    continued = sorted(p.name for p in (tmp_path / "continued").iterdir())
    assert len(continued) == 6
    for name in continued:
        weights = json.loads((tmp_path / "continued" / name / "metrics.json").read_text())["weights"]
        assert weights["layers_loaded"] > 0 and weights["layers_new"] == []


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason="Keras 3.15 has no data parallelism in fit on torch")
def test_two_device_data_parallel_training(tmp_path):
    out = tmp_path / "dp"
    command = [sys.executable, "-m", "experiments.run", "digits", "cnn", "--devices", "2", "--epochs", "3",
               "--batch-size", "32", "--lr-schedule", "constant", "--lr", "0.002", "--out", str(out), "--verbose", "0"]
    done = subprocess.run(command, env=subprocess_env(BACKEND, KERASCNN_EMULATE_DEVICES="2"), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data parallel on 2 devices: effective batch 64 = 32 per device x 2" in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["devices"] == {"count": 2, "effective_batch_size": 64, "effective_lr": 0.004}
    losses = [float(row["loss"]) for row in csv.DictReader((out / "history.csv").open())]
    assert losses[-1] < losses[0]
    model = keras.saving.load_model(out / "model.keras", compile=False)
    assert model.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0).shape == (2, 10)


@pytest.mark.skipif(BACKEND != "torch", reason="the refusal is torch's")
def test_torch_refuses_several_devices_and_points_to_jax():
    from kerascnn import distribute

    with pytest.raises(KerascnnError, match="--backend jax"):
        distribute.plan("2", 32, 0.001)
    assert distribute.plan("1", 32, 0.001).count == 1


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_is_bfloat16_on_a_cpu_with_amx_only_on_torch(amx, monkeypatch):
    from kerascnn import distribute

    monkeypatch.setattr(distribute, "cpu_has_amx", lambda: amx)
    if BACKEND == "torch":  # a machine whose first device is its CPU, whatever this one has
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    elif BACKEND == "jax":
        import jax

        monkeypatch.setattr(jax, "devices", lambda *a: [types.SimpleNamespace(platform="cpu")])
    else:
        import tensorflow as tf

        monkeypatch.setattr(tf.config, "list_physical_devices", lambda *a: [])
    expected = "mixed_bfloat16" if amx and BACKEND == "torch" else "float32"  # XLA's CPU backend has no AMX kernels
    assert distribute.auto_precision() == expected


@pytest.mark.skipif(BACKEND != "torch", reason="torch's CUDA query")
@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bfloat16_only_on_gpus_with_bfloat16_arithmetic(native, monkeypatch):
    """A V100 or T4 only emulates bfloat16 (torch's default query counts emulation): float32 there."""
    import torch

    from kerascnn import distribute

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert distribute.auto_precision() == ("mixed_bfloat16" if native else "float32")


@pytest.mark.skipif(BACKEND != "torch", reason="AMX is detected through torch")
def test_auto_precision_keeps_small_backbones_in_float32_on_an_amx_cpu(monkeypatch):
    import torch

    from kerascnn import distribute
    from kerascnn.resolution import resolve

    monkeypatch.setattr(distribute, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distribute.auto_precision(small_backbone=True) == "float32"
    assert distribute.auto_precision() == "mixed_bfloat16"
    resnet = models.get("resnet18")
    assert resnet.auto_precision(resnet.amx_min_size - 1) == "float32"
    assert resnet.auto_precision(resnet.amx_min_size) == "mixed_bfloat16"
    resolved = {(model, size): resolve(RunConfig("digits", model, weights="none", image_size=size)).config.precision
                for model, size in (("cnn", None), ("resnet18", 32), ("resnet18", 64), ("resnet18", None),
                                    ("mobilenet_v2", 64), ("mobilenet_v2", 96), ("efficientnet_b0", 96))}
    assert resolved == {("cnn", None): "mixed_bfloat16", ("resnet18", 32): "float32",
                        ("resnet18", 64): "mixed_bfloat16", ("resnet18", None): "mixed_bfloat16",
                        # depthwise convolutions gain nothing from AMX: MobileNets need larger maps
                        ("mobilenet_v2", 64): "float32", ("mobilenet_v2", 96): "mixed_bfloat16",
                        ("efficientnet_b0", 96): "float32"}


@pytest.mark.skipif(BACKEND != "torch", reason="AMX is detected through torch")
def test_a_saved_backbone_predicts_in_the_precision_its_working_size_trains_in(monkeypatch):
    import torch

    from kerascnn import distribute, prediction, runner
    from kerascnn.resolution import resolve

    monkeypatch.setattr(distribute, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = resolve(RunConfig("digits", "resnet18", weights="none", image_size=32)).config
    dataset = runner.load_dataset(config)
    metadata = runner.model_metadata(config, dataset)
    assert metadata["image_size"] == 32 and prediction._auto_precision(metadata) == config.precision == "float32"
    assert prediction._auto_precision({**metadata, "image_size": 64}) == "mixed_bfloat16"
    older = {k: v for k, v in metadata.items() if k != "image_size"}  # saved before image_size was recorded
    assert prediction._auto_precision(older, 32) == "float32" and prediction._auto_precision(older) == "mixed_bfloat16"
    assert prediction._auto_precision({"model": "cnn", "image_size": 8}) == "mixed_bfloat16"  # no size rule for CNNs
    assert prediction._auto_precision({"model": "someone-elses"}) == "mixed_bfloat16"


@pytest.mark.skipif(BACKEND != "torch", reason="AMX is detected through torch")
def test_amx_needs_the_tiles_and_the_kernels_permission(monkeypatch):
    import torch

    from kerascnn import distribute

    for supported, granted, expected in ((True, True, True), (True, False, False), (False, True, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda s=supported: s, raising=False)
        monkeypatch.setattr(torch.cpu, "_init_amx", lambda g=granted: g, raising=False)
        assert distribute.cpu_has_amx() is expected
    monkeypatch.delattr(torch.cpu, "_init_amx")  # a torch without the private probes: Linux's CPU flags
    for flags, expected in (({"avx512f", "amx_tile", "amx_bf16"}, True), ({"avx512f", "avx512_bf16"}, False),
                            (set(), False)):
        monkeypatch.setattr(distribute, "cpu_flags", lambda f=flags: f)
        assert distribute.cpu_has_amx() is expected


def test_cpu_flags_are_read_from_proc_cpuinfo():
    from kerascnn import distribute

    info = Path("/proc/cpuinfo")
    lines = [line for line in info.read_text().splitlines() if line.startswith("flags")] if info.is_file() else []
    if not lines:  # not Linux on x86 (ARM lists "Features")
        assert distribute.cpu_flags() == set()
        return
    assert distribute.cpu_flags() == set(lines[0].split(":", 1)[1].split()) and "fpu" in distribute.cpu_flags()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_softmax_and_loss(policy, tmp_path):
    ds = data.load("digits", split="40,10,10")
    with models.dtype_policy(policy):
        model = models.build("cnn", ds.image_shape, 10, batch_norm=False)
        config = decided("digits", "cnn", epochs=3, batch_size=32, lr_schedule="constant", lr=0.002, verbose=0,
                         precision=policy, patience=0)
        result = training.fit(model, ds, config)
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert model.get_layer("block1_conv1").compute_dtype == policy.split("_")[1]
    assert model.get_layer("block1_conv1").kernel.dtype == "float32"
    assert model.get_layer("probabilities").compute_dtype == "float32" and model.output.dtype == "float32"
    losses = result.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    if policy == "mixed_float16":
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    x = ds.test.images[:4]
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("jit", [False, True])
def test_jit_flag_reaches_compile(jit):
    """jax/tensorflow: ``jit_compile``. torch: --no-jit is Keras' own steps, --jit kerascnn's fast
    steps compiled by ``torch.compile`` (about 30 s of compilation on 2 CPU cores)."""
    ds = data.load("digits", split="20,5,5")
    model = models.build("cnn3", ds.image_shape, 10)
    config = decided("digits", "cnn3", epochs=1, jit=jit, verbose=0, patience=0)
    result = training.fit(model, ds, config)
    assert np.isfinite(result.history["loss"]).all()
    if BACKEND == "torch":
        assert training.uses_fast_path(model) is jit and model.jit_compile is False
        if jit:
            assert hasattr(model.train_function.__self__._forward, "_torchdynamo_orig_callable")
    else:
        assert model.jit_compile is jit


def test_jax_compiles_into_a_persistent_cache_and_other_backends_have_none(tmp_path, monkeypatch):
    from kerascnn import distribute

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-cache"))
    folder = distribute.enable_compilation_cache()
    if BACKEND != "jax":
        assert folder is None
        return
    import jax

    assert folder is not None and folder.is_dir() and jax.config.jax_compilation_cache_dir == str(folder)

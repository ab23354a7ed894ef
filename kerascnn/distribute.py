"""Data-parallel training with the engines Keras supports: ``keras.distribution.DataParallel`` on
JAX and ``tf.distribute.MirroredStrategy`` on TensorFlow (multi-host: ``keras.distribution.initialize``
from ``KERAS_DISTRIBUTION_*`` variables on JAX, ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` on
TensorFlow). Keras 3.15's ``fit`` has no data parallelism on the PyTorch backend, so ``--devices``
above 1 there is refused with a pointer to ``--backend jax``.

This module imports no backend at import time: `emulate_devices` must run before one is imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from kerascnn.errors import KerascnnError

log = logging.getLogger("kerascnn")
EMULATE_VARIABLE = "KERASCNN_EMULATE_DEVICES"


def emulate_devices(count: int) -> None:
    """Make one CPU look like ``count`` devices, for tests: JAX through ``XLA_FLAGS`` (before JAX
    is imported), TensorFlow through logical CPU devices (before TensorFlow initialises)."""
    backend = os.environ.get("KERAS_BACKEND", "torch")
    if backend == "jax":
        flag = f"--xla_force_host_platform_device_count={count}"
        if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    elif backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def device_names() -> list[str]:
    """The accelerators of the current backend, else its CPUs (several only when emulated)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


def _description() -> dict[str, Any]:
    """Backend, device, package versions and command line, as ``config.json`` records them."""
    import keras

    backend = keras.backend.backend()
    device = "cpu"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            device = f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    elif backend == "jax":
        import jax

        device = ", ".join(sorted({f"{d.platform}" for d in jax.devices()})) + f" x{jax.device_count()}"
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        device = f"gpu x{len(gpus)}" if gpus else "cpu"
    packages = ["kerascnn", "keras", "numpy", "scikit-learn", "pillow", "matplotlib", "torch", "jax", "jaxlib",
                "tensorflow", "tensorflow-cpu"]
    return {
        "backend": backend,
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": {p: v for p in packages if (v := _version(p))},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _bfloat16_accelerator(backend: str) -> bool:
    """Whether the backend's first device is a GPU (compute capability 8, Ampere, on; older ones only
    emulate bfloat16) or a TPU."""
    if backend == "torch":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return device.platform == "tpu" or (device.platform == "gpu" and _compute_capability(device) >= 8)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
    return bool(gpus) and details.get("compute_capability", (0, 0)) >= (8, 0)


@dataclass(frozen=True)
class Environment:
    """The machine facts a run's defaults depend on (`kerascnn.resolution.resolve`), and the
    description of it that ``config.json`` records."""

    backend: str
    devices: int  # the backend's accelerators, else its CPUs (several only when emulated)
    bfloat16: bool  # the first device computes bfloat16 natively (a GPU from Ampere on, a TPU)
    amx: bool  # torch on a CPU whose AMX tiles run bfloat16 convolutions (docs/design/precision.md)
    description: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def current(cls) -> Environment:
        """The machine this process runs on, for the current Keras backend."""
        import keras

        backend = keras.backend.backend()
        amx = False
        if backend == "torch":
            import torch

            amx = not torch.cuda.is_available() and cpu_has_amx()
        return cls(backend, len(device_names()), _bfloat16_accelerator(backend), amx, _description())


def auto_precision(small_backbone: bool = False, environment: Environment | None = None) -> str:
    """``--precision auto`` on ``environment`` (default: this machine): ``mixed_bfloat16`` where the
    first device computes bfloat16 natively, or on torch a CPU with AMX unless ``small_backbone``
    (a backbone below its `ModelSpec.amx_min_size`, where casting costs more than AMX saves); else
    ``float32`` (docs/design/precision.md)."""
    environment = environment or Environment.current()
    return "mixed_bfloat16" if environment.bfloat16 or (environment.amx and not small_backbone) else "float32"


def enable_compilation_cache() -> Path | None:
    """On JAX, keep compiled steps across runs in a persistent cache (``$JAX_COMPILATION_CACHE_DIR``,
    else ``~/.cache/kerascnn/jax``), so a rerun or a study's next run skips most of the first
    epoch's compilation. Returns the folder, or None on other backends."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    folder = Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or Path.home() / ".cache" / "kerascnn" / "jax")
    if not jax.config.jax_compilation_cache_dir:
        folder.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return Path(jax.config.jax_compilation_cache_dir)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles and the kernel lets the process use them: torch 2.x's private
    ``torch.cpu._is_amx_tile_supported`` and ``_init_amx`` where this torch has both, else the flags
    Linux lists in ``/proc/cpuinfo`` (``amx_tile`` and ``amx_bf16``, shown only by kernels that hand
    out the tiles; oneDNN asks for them itself). False elsewhere."""
    import torch

    supported, granted = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_init_amx"))
    if supported is not None and granted is not None:
        return bool(supported()) and bool(granted())
    return {"amx_tile", "amx_bf16"} <= cpu_flags()


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none, as off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                set())


def _compute_capability(device) -> float:
    try:
        return float(device.compute_capability)
    except (AttributeError, TypeError, ValueError):
        return 0.0


TORCH_MESSAGE = ("--devices above 1 needs the jax or tensorflow backend: Keras 3.15's fit has no data parallelism "
                 "on torch; rerun with --backend jax (keras.distribution.DataParallel) or --backend tensorflow")


def reset_peak_memory() -> None:
    """Start `peak_memory`'s count afresh, so that each of a study's runs in one process reports its
    own peak: torch's CUDA peak, and on Linux the process's peak resident set (``VmHWM``, reset by
    writing 5 to ``/proc/self/clear_refs``). JAX's accelerator peak cannot be reset."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory() -> dict[str, Any]:
    """The most memory training has held since `reset_peak_memory`: the GPU's (torch or jax on CUDA)
    when there is one, else this process's peak resident set (on systems without ``/proc``, since
    the process started)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20), "memory": "gpu"}
        elif backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return {"peak_memory_mb": round(stats["peak_bytes_in_use"] / 2**20), "memory": "accelerator"}
    except Exception:  # noqa: BLE001 - memory statistics are a report, never a failure
        pass
    try:
        status = Path("/proc/self/status").read_text()
        peak = int(status.split("VmHWM:", 1)[1].split()[0]) / 2**10  # kB
    except (OSError, IndexError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"peak_memory_mb": round(peak), "memory": "process"}


def _device_count(devices: str, environment: Environment) -> int:
    """``--devices N|all`` (checked by `RunConfig.validate`) as a number of ``environment``'s devices."""
    count = environment.devices if str(devices).lower() == "all" else int(devices)
    if environment.backend == "torch" and count > 1:
        raise KerascnnError(TORCH_MESSAGE, option="devices")
    if count > environment.devices:
        raise KerascnnError(f"--devices {count}: this machine has {environment.devices} device(s) for this backend",
                            option="devices")
    return count


def replicas() -> int:
    """How many devices the current Keras distribution (or TensorFlow strategy) splits a batch over."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        distribution = keras.distribution.distribution()
        return int(distribution.device_mesh.devices.size) if distribution is not None else 1
    if backend == "tensorflow":
        import tensorflow as tf

        return int(tf.distribute.get_strategy().num_replicas_in_sync)
    return 1


@dataclass(frozen=True)
class Plan:
    """How a run uses its devices: ``count`` of them, ``batch_size`` images per step in all
    (per-device batch x devices) and peak ``lr`` after the scaling rule."""

    count: int
    batch_size: int
    lr: float
    rule: str

    def describe(self, per_device: int) -> str:
        if self.count == 1:
            return "1 device"
        return (f"data parallel on {self.count} devices: effective batch {self.batch_size} = {per_device} per device "
                f"x {self.count}; {self.rule}")


def plan(devices: str, batch_size: int, lr: float, lr_scaling: str = "linear",
         environment: Environment | None = None) -> Plan:
    """The device count, effective batch and learning rate of ``--devices``/``--lr-scaling`` on
    ``environment`` (default: this machine)."""
    count = _device_count(devices, environment or Environment.current())
    if count == 1:
        return Plan(1, batch_size, lr, "")
    if lr_scaling == "linear":
        rule = f"learning rate {lr:g} x {count} = {lr * count:g} (linear scaling rule; --lr-scaling none keeps it)"
        return Plan(count, batch_size * count, lr * count, rule)
    return Plan(count, batch_size * count, lr, f"learning rate {lr:g} unchanged (--lr-scaling none)")


@contextlib.contextmanager
def data_parallel(count: int) -> Iterator[None]:
    """Build, compile and fit inside this context to replicate the model on ``count`` devices."""
    if count == 1:
        yield
        return
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
            keras.distribution.initialize()
        import jax

        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()[:count]))
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)
    elif backend == "tensorflow":
        import tensorflow as tf

        if os.environ.get("TF_CONFIG"):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            strategy = tf.distribute.MirroredStrategy(devices=device_names()[:count])
        with strategy.scope():
            yield
    else:
        raise KerascnnError(TORCH_MESSAGE)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB (mallopt) instead of returning them
    to the OS, so a training step does not page-fault its activations in afresh
    (docs/design/fast-path.md). Linux only; returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(libc.mallopt(option, value) == 1 for option, value in (
        (m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20)))

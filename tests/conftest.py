"""Fixtures and hooks only; plain helpers live in helpers.py (``from helpers import write_folder``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("MPLBACKEND", "Agg")

from helpers import write_folder  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(config, items):
    """Integration tests train on real data, so they count as slow: ``-m "not slow"`` leaves them out."""
    for item in items:
        if item.get_closest_marker("integration") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "colours")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep KERASCNN_DATA from the caller's environment out of the tests, and the decoded-image cache
    out of the caller's home."""
    monkeypatch.delenv("KERASCNN_DATA", raising=False)
    monkeypatch.setenv("KERASCNN_CACHE", str(tmp_path_factory.getbasetemp() / "kerascnn-cache"))


# The fast torch path's tests (tests/test_torch_*.py; torch_fast_support.py)
@pytest.fixture(params=["nchw", "channels_last"])
def channels_last(request, monkeypatch) -> bool:
    """Both memory layouts of feature maps on whatever device runs the tests: the fast steps use
    channels-last on CUDA and NCHW elsewhere (`FastSteps.CHANNELS_LAST`), so a CPU checks the GPU's."""
    from torch_fast_support import DEVICE

    from kerascnn.torch_fast import FastSteps

    monkeypatch.setitem(FastSteps.CHANNELS_LAST, DEVICE.type, request.param == "channels_last")
    return request.param == "channels_last"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Training steps captured after one warm-up step of their batch shape: CUDA graphs on CUDA,
    `TracedGraph` elsewhere; a capture that fails (and falls back to eager steps) fails the test."""
    from torch_fast_support import DEVICE, TracedGraph

    from kerascnn.torch_fast import FastSteps

    if DEVICE.type != "cuda":
        monkeypatch.setitem(FastSteps.GRAPHS, DEVICE.type, TracedGraph)
    monkeypatch.setattr(FastSteps, "GRAPH_AFTER", 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="kerascnn: the training step runs eagerly")
        yield

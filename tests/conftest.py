"""Fixtures and hooks only; plain helpers live in helpers.py (``from helpers import write_folder``)."""

from __future__ import annotations

import os
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

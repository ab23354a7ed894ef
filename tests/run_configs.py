"""Resolved `RunConfig`s for tests that call training directly (training decides no default)."""

from kerascnn.config import RunConfig
from kerascnn.resolution import resolve


def decided(*args, **options) -> RunConfig:
    """``RunConfig(*args, **options)`` with every default decided, as training reads it."""
    return resolve(RunConfig(*args, **options)).training

"""Command-line front ends over kerascnn: ``python -m experiments.run``, ``experiments.predict``."""

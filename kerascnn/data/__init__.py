"""Datasets: a registry of names, their sources, seeded stratified splits and input pipelines."""

from kerascnn.data.dataset import Dataset, Split
from kerascnn.data.images import read_image
from kerascnn.data.registry import dataset_names, load

__all__ = ["Dataset", "Split", "dataset_names", "load", "read_image"]

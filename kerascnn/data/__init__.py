"""Datasets: a registry of names, their sources, seeded stratified splits and input pipelines."""

from kerascnn.data.dataset import Dataset, Split
from kerascnn.data.images import read_image
from kerascnn.data.registry import check_name, dataset_names, load

__all__ = ["Dataset", "Split", "check_name", "dataset_names", "load", "read_image"]

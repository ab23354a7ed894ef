"""Datasets: a registry of names, their sources, seeded stratified splits and input pipelines."""

from kerascnn.data.dataset import Dataset, Split
from kerascnn.data.images import read_image
from kerascnn.data.registry import DEFAULT_FILE_IMAGE_SIZE, check, dataset_names, load

__all__ = ["DEFAULT_FILE_IMAGE_SIZE", "Dataset", "Split", "check", "dataset_names", "load", "read_image"]

"""Data: data sets with the reference splits and the loaders the training loop reads."""

from .datasets import DATASETS, DataError, ImageSet, Splits, load_splits
from .loader import TensorLoader, crop_flip

__all__ = ["DATASETS", "DataError", "ImageSet", "Splits", "TensorLoader", "crop_flip", "load_splits"]

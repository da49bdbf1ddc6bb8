"""Data: data sets with the reference splits, prepared .beton files and the loaders the training loop reads."""

from .beton import Manifest, Prepared, open_prepared, prepare
from .datasets import DATASETS, DataError, ImageSet, Splits, load_splits
from .loader import TensorLoader, crop_flip
from .source import DataSource, open_data

__all__ = ["DATASETS", "DataError", "DataSource", "ImageSet", "Manifest", "Prepared", "Splits", "TensorLoader",
           "crop_flip", "load_splits", "open_data", "open_prepared", "prepare"]

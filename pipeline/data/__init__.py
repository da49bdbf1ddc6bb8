"""Data: data sets with the reference splits, prepared .beton files and the loaders the training loop reads."""

from pipeline.data.beton import Manifest, Prepared, open_prepared, prepare
from pipeline.data.datasets import (
                                    DATASETS,
                                    DataError,
                                    DatasetSpec,
                                    ImageSet,
                                    Splits,
                                    dataset_names,
                                    get_dataset,
                                    load_splits,
                                    register,
                                    unregister,
)
from pipeline.data.loader import TensorLoader, crop_flip
from pipeline.data.settings import DataConfig
from pipeline.data.source import DataSource, open_data

__all__ = ["DATASETS", "DataConfig", "DataError", "DataSource", "DatasetSpec", "ImageSet", "Manifest", "Prepared",
           "Splits", "TensorLoader", "crop_flip", "dataset_names", "get_dataset", "load_splits", "open_data",
           "open_prepared", "prepare", "register", "unregister"]

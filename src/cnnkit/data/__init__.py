"""Data: dataset names and paths in, loaders and a :class:`DataSpec` out.

``build(cfg.data, seed=...)`` is the one entry point the rest of cnnkit uses.
"""

from cnnkit.data.builder import build, loader_from_dataset, resolve_source
from cnnkit.data.datasets import cache_dir, default_data_dir, list_datasets, register_dataset
from cnnkit.data.spec import Batch, DataSpec, Loaders, Preprocess
from cnnkit.data.transforms import AUGMENT_PRESETS, Augment, eval_transform, get_augment

__all__ = [
    "AUGMENT_PRESETS",
    "Augment",
    "Batch",
    "DataSpec",
    "Loaders",
    "Preprocess",
    "build",
    "cache_dir",
    "default_data_dir",
    "eval_transform",
    "get_augment",
    "list_datasets",
    "loader_from_dataset",
    "register_dataset",
    "resolve_source",
]

"""cnnkit: train, evaluate, explain, export and serve convolutional image classifiers.

The public Python API (the command line ``cnnkit`` is built on the same functions)::

    import cnnkit
    run = cnnkit.train(recipe="mnist-lenet", epochs=1, data_dir="../shared/data")
    model = cnnkit.create_model("cifar_cnn", num_classes=10)
    loaded = cnnkit.load_checkpoint(run.checkpoint)
"""

from cnnkit._version import __version__
from cnnkit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cnnkit.data import DataSpec, Preprocess, list_datasets, register_dataset
from cnnkit.engine import EvalResult, FitResult, evaluate
from cnnkit.errors import CnnkitError, DataError, UsageError
from cnnkit.models import count_parameters, create_model, list_models, register_model
from cnnkit.recipes import list_recipes
from cnnkit.usercode import trust_code
from cnnkit.workflows import (
    LoadedCheckpoint,
    Run,
    evaluate_checkpoint,
    fit,
    load_checkpoint,
    lr_find,
    resolve_config,
    train,
)

__all__ = [
    "CnnkitError",
    "DataConfig",
    "DataError",
    "DataSpec",
    "EvalResult",
    "FitResult",
    "LoadedCheckpoint",
    "ModelConfig",
    "Preprocess",
    "Run",
    "RunConfig",
    "TrainConfig",
    "UsageError",
    "__version__",
    "count_parameters",
    "create_model",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "list_datasets",
    "list_models",
    "list_recipes",
    "load_checkpoint",
    "lr_find",
    "register_dataset",
    "register_model",
    "resolve_config",
    "train",
    "trust_code",
]

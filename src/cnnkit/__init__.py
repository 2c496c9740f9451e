"""cnnkit: train, evaluate, explain, export and serve convolutional image classifiers.

The public Python API (the command line ``cnnkit`` is built on the same functions)::

    import cnnkit
    run = cnnkit.train(recipe="mnist-lenet", epochs=1, data_dir="../shared/data")
    model = cnnkit.create_model("cifar_cnn", num_classes=10)
    loaded = cnnkit.load_checkpoint(run.checkpoint)

``import cnnkit`` is light: each name is imported from its module on first use (PEP 562),
so ``cnnkit --version`` and scripts that only need the config never import torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from cnnkit._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "CnnkitError": "cnnkit.errors",
    "DataError": "cnnkit.errors",
    "UsageError": "cnnkit.errors",
    "DataConfig": "cnnkit.config",
    "ModelConfig": "cnnkit.config",
    "RunConfig": "cnnkit.config",
    "TrainConfig": "cnnkit.config",
    "resolve_config": "cnnkit.config",
    "DataSpec": "cnnkit.data",
    "Preprocess": "cnnkit.data",
    "list_datasets": "cnnkit.data",
    "register_dataset": "cnnkit.data",
    "EvalResult": "cnnkit.engine",
    "FitResult": "cnnkit.engine",
    "evaluate": "cnnkit.engine",
    "fit": "cnnkit.engine.dataset_fit",
    "count_parameters": "cnnkit.models",
    "create_model": "cnnkit.models",
    "list_models": "cnnkit.models",
    "register_model": "cnnkit.models",
    "list_recipes": "cnnkit.recipes",
    "trust_code": "cnnkit.usercode",
    "Run": "cnnkit.commands.train",
    "train": "cnnkit.commands.train",
    "lr_find": "cnnkit.commands.lr_find",
    "EvalReport": "cnnkit.commands.evaluate",
    "evaluate_checkpoint": "cnnkit.commands.evaluate",
    "report": "cnnkit.commands.report",
    "export_checkpoint": "cnnkit.commands.export",
    "predict": "cnnkit.commands.predict",
    "LoadedCheckpoint": "cnnkit.inference.loading",
    "load_checkpoint": "cnnkit.inference.loading",
    "example_images": "cnnkit.inference.loading",
    "RunFolder": "cnnkit.runfolder",
}

__all__ = [
    "CnnkitError",
    "DataConfig",
    "DataError",
    "DataSpec",
    "EvalReport",
    "EvalResult",
    "FitResult",
    "LoadedCheckpoint",
    "ModelConfig",
    "Preprocess",
    "Run",
    "RunConfig",
    "RunFolder",
    "TrainConfig",
    "UsageError",
    "__version__",
    "count_parameters",
    "create_model",
    "evaluate",
    "evaluate_checkpoint",
    "example_images",
    "export_checkpoint",
    "fit",
    "list_datasets",
    "list_models",
    "list_recipes",
    "load_checkpoint",
    "lr_find",
    "predict",
    "register_dataset",
    "register_model",
    "report",
    "resolve_config",
    "train",
    "trust_code",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # a subpackage used as an attribute: cnnkit.models.model_info(...)
        if importlib.util.find_spec(f"cnnkit.{name}") is None:
            raise AttributeError(f"module 'cnnkit' has no attribute {name!r}")
        return importlib.import_module(f"cnnkit.{name}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from cnnkit.commands.evaluate import EvalReport, evaluate_checkpoint
    from cnnkit.commands.export import export_checkpoint
    from cnnkit.commands.lr_find import lr_find
    from cnnkit.commands.predict import predict
    from cnnkit.commands.report import report
    from cnnkit.commands.train import Run, train
    from cnnkit.config import DataConfig, ModelConfig, RunConfig, TrainConfig, resolve_config
    from cnnkit.data import DataSpec, Preprocess, list_datasets, register_dataset
    from cnnkit.engine import EvalResult, FitResult, evaluate
    from cnnkit.engine.dataset_fit import fit
    from cnnkit.errors import CnnkitError, DataError, UsageError
    from cnnkit.inference.loading import LoadedCheckpoint, example_images, load_checkpoint
    from cnnkit.models import count_parameters, create_model, list_models, register_model
    from cnnkit.recipes import list_recipes
    from cnnkit.runfolder import RunFolder
    from cnnkit.usercode import trust_code

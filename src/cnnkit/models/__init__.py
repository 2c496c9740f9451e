"""Model architectures and their registry: ``create_model(name, num_classes, ...)``.

Every model is a :class:`ClassifierBase` (or, for outside backbones, has the same
``forward_features`` / ``forward_head`` / ``reset_head`` surface). Importing this package
registers the built-in families and does nothing else.
"""

from cnnkit.models import convnet, fast, lenet, pretrained, seed_cnns, vgg  # noqa: F401  (importing registers them)
from cnnkit.models.base import ClassifierBase
from cnnkit.models.pretrained import BackboneClassifier, Weights, find_weights, load_weights
from cnnkit.models.registry import (
    ModelInfo,
    count_parameters,
    create_model,
    list_models,
    list_sources,
    load_model_code,
    model_code,
    model_info,
    register_model,
    require_model_code,
    smallest_input_size,
)
from cnnkit.models.summary import LayerRow, ModelSummary, format_summary, summarize

__all__ = [
    "BackboneClassifier",
    "ClassifierBase",
    "Weights",
    "find_weights",
    "list_sources",
    "load_weights",
    "ModelInfo",
    "count_parameters",
    "create_model",
    "list_models",
    "load_model_code",
    "model_code",
    "model_info",
    "require_model_code",
    "register_model",
    "smallest_input_size",
    "LayerRow",
    "ModelSummary",
    "format_summary",
    "summarize",
]

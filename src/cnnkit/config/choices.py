"""The choice lists of config keys, kept free of torch so every module can share them.

This module owns the allowed values of the config keys whose choices torch-using modules
also need (optimizers, schedulers, AMP modes, TTA modes, augmentation presets and policies,
trackers, the metrics that can pick ``best.pt``) and the default validation fraction.
Those modules import the tuples from here (through :mod:`cnnkit.config`), so ``cnnkit
--help`` and a bad value such as ``--lr -1`` are answered without loading torch.
"""

from __future__ import annotations

# The augmentation presets' names, policies and backends are defined with the presets themselves.
from cnnkit.config.augment import AUGMENT_BACKENDS, AUGMENT_POLICIES, AUGMENT_PRESETS  # noqa: F401

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "triangle")
AMP_MODES = ("auto", "off", "bf16", "fp16")
TTA_MODES = ("none", "flip", "shift", "flip-shift")
# The runtimes of cnnkit.inference.backends.BACKENDS (a test checks that the two agree), and auto.
BACKENDS = ("torch", "onnxruntime", "openvino")
BACKEND_CHOICES = ("auto", *BACKENDS)
# What cnnkit export writes: cnnkit.inference.export.FORMATS and cnnkit.inference.metadata.PRECISIONS.
EXPORT_FORMATS = ("onnx", "torchscript")
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
# The file name endings each format's readers expect (onnxruntime, Netron, torch.jit.load by habit).
EXPORT_SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth")}
SWITCH_MODES = ("auto", "on", "off")  # --channels-last, --compile, --cache-features, --decode-cache
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
BALANCE_MODES = ("none", "weights", "sampler")
TRACKERS = ("tensorboard", "mlflow", "wandb")
# Model-name prefixes of outside backbones with a new head (timm:NAME, tv:NAME): the sources of
# cnnkit.models.registry.list_sources (a test checks that the two agree).
BACKBONE_SOURCES = ("timm", "tv")
# metrics.csv columns that can pick best.pt, and the plain names accepted for them.
SELECT_METRICS = ("val_acc", "val_balanced_acc", "val_macro_f1", "val_top5", "val_loss")
METRIC_ALIASES = {"accuracy": "val_acc", "balanced_accuracy": "val_balanced_acc", "macro_f1": "val_macro_f1",
                  "top5": "val_top5", "loss": "val_loss"}  # fmt: skip
# Folder/CSV datasets with neither a val nor a test split hold out this fraction when
# val_fraction is None (the default).
DEFAULT_VAL_FRACTION = 0.2

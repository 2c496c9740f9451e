"""The options of every command besides the run config, declared as the config keys are.

This module owns one dataclass per command (:class:`EvalOptions`, :class:`PredictOptions`,
:class:`ExportOptions`...): each field is an argument or option of that command, declared
with :func:`~cnnkit.config.keys.key` (its own) or :func:`~cnnkit.config.keys.shared` (one of
the options several commands share: device, batch size, workers, data folder, TTA, amp,
output...). From these declarations come the command's argparse arguments
(:func:`~cnnkit.config.flags.add_option_flags`), its ``--help``, and the checks of every value
(:func:`~cnnkit.config.validate`), for the command line and the Python API alike
(:func:`cnnkit.predict` and :func:`cnnkit.export_checkpoint` take their options object).

Field names are the argparse destinations the command handlers read (``args.batch_size``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from cnnkit.config.choices import EXPORT_FORMATS, EXPORT_PRECISIONS, TTA_MODES
from cnnkit.config.keys import key, shared

LABEL_GROUP = 'label check (--labels; needs the labels extra: pip install "cnnkit[labels]")'
RUN_OR_CHECKPOINT = "run folder or .pt checkpoint"


@dataclass
class TrainCommandOptions:
    """``cnnkit train``'s options besides the config keys."""

    no_progress: bool = shared("no_progress", False)
    no_check: bool = key(False, "skip the quick dataset check of a folder/CSV before training (see `cnnkit check`)",
                         flag="--no-check")  # fmt: skip
    resume: str | None = key(None, "continue a killed or stopped run from its last.pt (with its own config; "
                             "--epochs N trains it longer)", flag="--resume", metavar="RUN")  # fmt: skip
    trust_code: list[str] | None = shared("trust_code", None)


@dataclass
class LrFindOptions:
    """``cnnkit lr-find``'s options besides the config keys."""

    start_lr: float = key(1e-7, "first learning rate of the sweep (default 1e-7)", flag="--start-lr", gt=0)
    end_lr: float = key(10.0, "last learning rate of the sweep (default 10)", flag="--end-lr", gt=0)
    steps: int | None = key(None, "batches in the sweep (default 100, more for small batches: 3,000 images)",
                            flag="--steps", ge=1)  # fmt: skip


@dataclass
class EvalOptions:
    """``cnnkit eval``."""

    checkpoint: str = key("", RUN_OR_CHECKPOINT, positional=True)
    data: str | None = key(None, "evaluate on this dataset instead of the run's (same classes)", flag="--data")
    data_dir: str | None = shared("data_dir", None)
    split: str | None = shared("split", None)
    device: str = shared("device", "auto")
    batch_size: int | None = shared("batch_size", None, "images per forward pass (default: the run's)")
    tta: str | None = shared("tta", None, "test-time augmentation (default: the run's own)")
    json: bool = shared("json", False)
    trust_code: list[str] | None = shared("trust_code", None)


@dataclass
class PredictOptions:
    """``cnnkit predict`` and :func:`cnnkit.predict`.

    ``tta``: None uses the run's own test-time augmentation (as ``cnnkit eval`` does),
    ``False``/``"none"`` none, ``True`` the run's or, for a run without, the views that suit
    its training augmentation, a mode name (``flip``, ``shift``...) that mode.
    """

    model: str = key("", "run folder, .pt checkpoint, or .onnx file from `cnnkit export`", positional=True,
                     metavar="MODEL")  # fmt: skip
    inputs: list[str] = key(factory=list, help="image files, folders (recursive) or glob patterns", positional=True,
                            nargs="+", metavar="PATH")  # fmt: skip
    topk: int = shared("topk", 5, "classes to list per image (default 5)")
    batch_size: int = shared("batch_size", 64, "images per forward pass (default 64)")
    workers: int | None = shared("workers", None, "decoding threads (default: one per core, at most 8; 0: in the "
                                 "main thread)")  # fmt: skip
    tta: bool | str | None = key(
        None, "test-time augmentation: none, flip, shift, flip-shift; --tta alone: the run's own, else mirror (or "
              "small shifts for digits); default: the run's own, as eval", flag="--tta", nargs="?", const=True,
        choices=(True, False, *TTA_MODES), kind="test-time augmentation mode", metavar="MODE")  # fmt: skip
    threshold: float | None = key(None, "label predictions below this probability 'unknown'", flag="--threshold",
                                  ge=0, le=1)  # fmt: skip
    reject: bool = key(False, "label images that look like none of the model's classes 'unknown' (its open set, "
                       "fitted when it trained)", flag="--reject")  # fmt: skip
    out: str | None = shared("out", None, "write results to a .csv, .json or .jsonl file (default: print them)")
    backend: str = shared("backend", "auto")
    device: str = shared("device", "cpu", "torch backend: where the model runs: cpu (default), cuda, mps or auto")
    amp: str = shared("amp", "off", "torch backend precision: off (float32, default), bf16, fp16, auto (bf16 on "
                      "CUDA)")  # fmt: skip
    no_progress: bool = shared("no_progress", False)
    trust_code: list[str] | None = shared("trust_code", None)


@dataclass
class ReportOptions:
    """``cnnkit report``."""

    run: str = key("", RUN_OR_CHECKPOINT, positional=True)
    split: str | None = shared("split", None)
    robustness: bool = key(False, "also measure FGSM and corruption accuracy", flag="--robustness")
    data_dir: str | None = shared("data_dir", None)
    device: str = shared("device", "auto")
    out: str | None = shared("out", None, "output folder (default: RUN/report)")
    trust_code: list[str] | None = shared("trust_code", None)


@dataclass
class SummaryOptions:
    """``cnnkit summary``."""

    model: str = key("", "model name (or timm:NAME, tv:NAME), run folder or .pt file", positional=True,
                     metavar="MODEL_OR_CHECKPOINT")  # fmt: skip
    input_size: list[int] | None = key(None, "input image (default: the model's, or the checkpoint's)",
                                       flag="--input-size", nargs=3, metavar=("C", "H", "W"), ge=1)  # fmt: skip
    num_classes: int | None = key(None, "logits of a model built by name (default 10)", flag="--num-classes",
                                  metavar="N", ge=1)  # fmt: skip
    depth: int = key(4, "rows down to this nesting level, deeper ones folded in (default 4)", flag="--depth",
                     metavar="D", ge=0)  # fmt: skip
    json: bool = shared("json", False)
    trust_code: list[str] | None = shared("trust_code", None)


@dataclass
class ExplainOptions:
    """``cnnkit explain``."""

    checkpoint: str = key("", RUN_OR_CHECKPOINT, positional=True)
    images: list[str] = key(factory=list, help="image files to explain", positional=True, nargs="+", metavar="IMAGE")
    layer: str | None = key(None, "Grad-CAM layer (default: the last conv); a typo lists them", flag="--layer")
    target_class: str | None = key(None, "class to explain (default: each image's prediction)", flag="--class",
                                   metavar="NAME_OR_INDEX")  # fmt: skip
    out: str | None = shared("out", None, "output folder (default: RUN/explain for a run, else ./explain)")
    trust_code: list[str] | None = shared("trust_code", None)


DEFAULT_CALIBRATION = 256  # training images int8 is calibrated on ("a few hundred")
DEFAULT_CHECK_COUNT = 1000  # validation images the exported file is scored on
DEFAULT_ALLOW_DROP = 1.0  # accuracy points a reduced-precision file may lose before it is refused
DEFAULT_TOLERANCE = 1e-3  # largest |logit difference| from PyTorch an fp32 file may show


@dataclass
class ExportOptions:
    """``cnnkit export`` and :func:`cnnkit.export_checkpoint` (what to write, and how it is checked)."""

    checkpoint: str = key("", RUN_OR_CHECKPOINT, positional=True)
    fmt: str = key("onnx", "onnx (default) or torchscript", flag="--format", choices=EXPORT_FORMATS, kind="format")
    out: str | None = shared("out", None, "default: RUN/export/model.onnx (or model.torchscript.pt), else beside "
                             "the .pt", metavar="FILE")  # fmt: skip
    precision: str = key("fp32", "ONNX: fp32 (default), fp16 (half the size; for GPUs and phones) or int8 (static "
                         "quantisation calibrated on training images: a quarter the size, faster on CPUs)",
                         flag="--precision", choices=EXPORT_PRECISIONS, kind="precision")  # fmt: skip
    calibration: int = key(DEFAULT_CALIBRATION, "int8: training images to calibrate on (default 256)",
                           flag="--calibration", metavar="N", ge=1)  # fmt: skip
    allow_drop: float = key(DEFAULT_ALLOW_DROP, "fp16/int8: accuracy points the file may lose against PyTorch "
                            "before it is refused (default 1)", flag="--allow-drop", metavar="POINTS", ge=0,
                            le=100)  # fmt: skip
    dynamic_batch: bool = key(False, "ONNX: accept any batch size (default: batch 1)", flag="--dynamic-batch")
    opset: int | None = key(None, "ONNX opset version (default: the exporter's)", flag="--opset", metavar="N", ge=7)
    check_images: list[str] | None = key(None, "images, folders or globs to check the file on (default: the run's "
                                         "validation images)", flag="--check-images", nargs="+",
                                         metavar="PATH")  # fmt: skip
    check_count: int = key(DEFAULT_CHECK_COUNT, "validation images to score both models on (default: up to 1000)",
                           flag="--check-count", metavar="N", ge=1)  # fmt: skip
    tolerance: float = key(DEFAULT_TOLERANCE, "largest |logit difference| from PyTorch that passes (default 1e-3)",
                           flag="--tolerance", metavar="T", ge=0)  # fmt: skip
    data_dir: str | None = shared("data_dir", None, "folder holding the run's dataset (for the validation images)")
    trust_code: list[str] | None = shared("trust_code", None)


@dataclass
class ServeOptions:
    """``cnnkit serve``."""

    checkpoint: str = key("", "run folder, .pt checkpoint or exported .onnx file", positional=True)
    host: str = shared("host", "127.0.0.1")
    port: int = shared("port", 7860, "TCP port of the page (default 7860)")
    topk: int = shared("topk", 5, "classes shown (default 5)")
    examples: int = key(8, "validation images offered as examples (default 8)", flag="--examples", metavar="N",
                        ge=0)  # fmt: skip
    no_gradcam: bool = key(False, "no Grad-CAM overlay", flag="--no-gradcam")
    data_dir: str | None = shared("data_dir", None, "folder holding torchvision datasets (for the examples)")
    device: str = shared("device", "auto")
    backend: str = shared("backend", "auto", "auto (default): ONNX Runtime on a CPU when the export extra is "
                          "installed (Grad-CAM still uses PyTorch), else torch; or torch, onnxruntime, "
                          "openvino")  # fmt: skip
    concurrency: int = key(1, "predictions handled at once; others wait in the queue (default 1: the model runs "
                           "one at a time anyway, see docs/benchmarks.md)", flag="--concurrency", metavar="N",
                           ge=1)  # fmt: skip
    queue_size: int = key(64, "requests that may wait; more are refused with 'queue is full' (default 64)",
                          flag="--queue-size", metavar="N", ge=1)  # fmt: skip
    trust_code: list[str] | None = shared("trust_code", None)


@dataclass
class StudioOptions:
    """``cnnkit studio``."""

    project: str = key("cnnkit-studio", "the project folder (created if missing; default ./cnnkit-studio)",
                       positional=True, nargs="?", metavar="PROJECT_DIR")  # fmt: skip
    host: str = shared("host", "127.0.0.1")
    port: int = shared("port", 7860, "TCP port of the page (default 7860)")
    allow_import: list[str] = key(
        factory=list, help="the page may import folders and CSV files under DIR (repeatable); without it, folders "
                           "of the server can be imported only when --host is the loopback (127.0.0.1)",
        flag="--allow-import", action="append", metavar="DIR")  # fmt: skip


@dataclass
class CheckOptions:
    """``cnnkit check``."""

    data: str = key("", "class-per-folder tree (optionally train/ val/ test/) or CSV file (path,label)",
                    positional=True, metavar="DATA")  # fmt: skip
    json: bool = shared("json", False, "print the full report as JSON instead of the summary")
    out: str | None = shared("out", None, "also write the full JSON report to FILE", metavar="FILE")
    quick: bool = key(False, "headers and byte hashes only, no decoding (what `cnnkit train` runs first)",
                      flag="--quick")  # fmt: skip
    workers: int | None = shared("workers", None, "checking processes (default: one per core, at most 8; 0: none)")
    near_distance: int | None = key(None, "perceptual-hash bits (of 64, at most 16) within which two images are "
                                    "near duplicates (default 2)", flag="--near-distance", metavar="BITS", ge=0,
                                    le=16)  # fmt: skip
    min_side: int | None = key(None, "images with a shorter side under PX (or 1/8 of the median) are tiny "
                               "(default 16)", flag="--min-side", metavar="PX", ge=1)  # fmt: skip
    no_progress: bool = shared("no_progress", False)
    labels: bool = key(False, "also find likely label errors, outliers and confused classes: out-of-sample "
                       "predictions by K-fold cross-validation ranked by cleanlab", flag="--labels",
                       group=LABEL_GROUP)  # fmt: skip
    model: str | None = key(None, "timm:NAME/tv:NAME (frozen pretrained features + a linear head per fold) or one "
                            "of cnnkit's models (trained per fold); default: timm:efficientnet_lite0 features for "
                            "photos, mnist_fast for small grey images", flag="--model", metavar="NAME",
                            group=LABEL_GROUP)  # fmt: skip
    folds: int | None = key(None, "cross-validation folds (default 5)", flag="--folds", metavar="K", ge=2,
                            group=LABEL_GROUP)  # fmt: skip
    epochs: int | None = key(None, "epochs per fold when a network trains from scratch (default 3)", flag="--epochs",
                             metavar="N", ge=1, group=LABEL_GROUP)  # fmt: skip
    labels_out: str | None = key(None, "where label_issues.csv/.html/.json go (default: "
                                 "./label-issues/<data folder name>/)", flag="--labels-out", metavar="DIR",
                                 group=LABEL_GROUP)  # fmt: skip
    fix_to: str | None = key(None, "write a copy of the dataset to DIR with the suspects moved to "
                             "DIR/_review/<given>__as__<suggested>/ (the originals are untouched)", flag="--fix-to",
                             metavar="DIR", group=LABEL_GROUP)  # fmt: skip
    seed: int = shared("seed", 0, "seed of the folds and of any network (default 0)", group=LABEL_GROUP)
    device: str = shared("device", "auto", group=LABEL_GROUP)


# --model, --folds... set without --labels: named in the refusal (check.py reads the same list).
LABEL_ONLY_OPTIONS = ("model", "folds", "epochs", "labels_out", "fix_to")


@dataclass
class RunsOptions:
    """``cnnkit runs``."""

    dir: str | None = key(None, "folder of run folders (default: ./runs; a DIR that does not exist is an error)",
                          positional=True, nargs="?", metavar="DIR")  # fmt: skip
    sort: str = key("date", "date (default), name, time, epochs, test_acc, or a metrics.csv column (best epoch's "
                    "value)", flag="--sort", metavar="KEY")  # fmt: skip
    json: bool = shared("json", False)


@dataclass
class NoOptions:
    """A command without arguments (``cnnkit recipes``, ``models``, ``datasets``)."""


def option_values(options: Any, values: dict[str, Any]) -> Any:
    """``options`` (a dataclass above) with ``values`` set by field name (paths as text).

    Raises:
        UsageError: a name that is no field, with the nearest one suggested.
    """
    from cnnkit.errors import UsageError, nearest

    names = [f.name for f in dataclasses.fields(options)]
    for name in values:
        if name not in names:
            guess = nearest(name, names)
            hint = f"; did you mean {guess!r}?" if guess else ";"
            raise UsageError(f"unknown option {name!r}{hint} valid: {', '.join(names)}")
    return dataclasses.replace(options, **{name: _text_paths(value) for name, value in values.items()})


def _text_paths(value: Any) -> Any:
    """A path (or a list of them) as text, as the command line gives it: ``Path("m.onnx")`` -> ``"m.onnx"``."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [os.fspath(item) if isinstance(item, os.PathLike) else item for item in value]
    return value

"""The kinds of model the studio offers, in plain words, and what each means to ``cnnkit train``.

A kind turns the page's few settings into config overrides (dotted keys, as
:func:`cnnkit.train` and ``--set`` take them). :func:`train_overrides` gives them for the
background job (absolute paths) and :func:`train_command` renders the very same overrides
as a ``cnnkit train`` command line run from the project folder (``--data data --output-dir
runs``), so the two cannot disagree.

* ``photos``: "photos: pretrained backbone, fast": ImageNet EfficientNet-Lite0, frozen, a new
  head trained on its cached features, at the weights' own 224 px preprocessing;
  the default for colour photos.
* ``small``: "small images from scratch": a small CNN (``convnet``) trained from random
  weights at 32 px with crop-and-flip augmentation.
* ``digits``: "digits / sketches": LeNet-5 on 28 px greyscale with the digit augmentation
  (small rotations, shifts, zooms) on the decoded 28 px images (``--decode-cache on``: a
  digit's 28 px image is the whole digit, and the epochs run 3x faster, measured on 300
  digits, and the same on every run; without it rotations act on each decoded file).
* ``advanced``: any registered model name (``cnnkit models``), trained as given.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnkit.errors import UsageError, unknown_name

if TYPE_CHECKING:
    from cnnkit.studio.project import Project

DIGIT_SIDE = 64  # greyscale images no larger than this are digits/sketches
SMALL_SIDE = 64  # colour images no larger than this are "small images"
SAMPLE = 24  # images looked at (headers only) to guess the kind of a project


@dataclass(frozen=True)
class Kind:
    """One kind of model.

    Attributes:
        key: ``photos``, ``small``, ``digits`` or ``advanced``.
        label: the plain words the page shows.
        help: one sentence on when to pick it.
        overrides: the config values it sets (dotted keys), before the user's settings.
        epochs: its default number of epochs.
    """

    key: str
    label: str
    help: str
    overrides: dict[str, Any]
    epochs: int


# Folder-read settings every kind shares. workers 0: the job runs in a thread of a web
# server, where forking decoding processes is unsafe; the projects are small, and the
# decode cache keeps decoded images after the first epoch anyway.
_COMMON = {"data.workers": 0}

KINDS: dict[str, Kind] = {
    kind.key: kind
    for kind in (
        Kind("photos", "photos: pretrained backbone, fast",
             "colour photos of objects, animals, scenes: an ImageNet model's features and a new head; fast on a CPU",
             {"model.name": "timm:efficientnet_lite0", "model.pretrained": True, "train.freeze": True,
              "data.batch_size": 16, "train.lr": 0.003}, epochs=30),  # fmt: skip
        Kind("small", "small images from scratch",
             "small colour images (icons, CIFAR-like 32 px pictures): a small CNN learns from your images alone",
             {"model.name": "convnet", "data.image_size": 32, "data.augment": "crop-flip", "data.batch_size": 32,
              "train.scheduler": "cosine"}, epochs=30),  # fmt: skip
        Kind("digits", "digits / sketches",
             "handwritten digits, letters and symbols drawn on the sketchpad: LeNet-5 on 28 px greyscale",
             {"model.name": "lenet", "data.image_size": 28, "data.channels": 1, "data.augment": "digits",
              "data.decode_cache": "on", "data.batch_size": 32, "train.lr": 0.002, "train.scheduler": "cosine"},
             epochs=30),  # fmt: skip
        Kind("advanced", "advanced: any registered model",
             "any model `cnnkit models` lists (or timm:NAME / tv:NAME), trained with cnnkit's defaults",
             {}, epochs=10),  # fmt: skip
    )
}


@dataclass(frozen=True)
class Settings:
    """The few settings the page offers; None keeps the kind's default.

    Attributes:
        epochs: passes over the training images.
        image_size: side of the square the model sees.
        model: the model name (``advanced`` only; required there).
        pretrained: ``advanced`` with a ``timm:``/``tv:`` backbone: start from pretrained weights.
        lr: peak learning rate.
        batch_size: images per training step.
        seed: random seed (split, initial weights, order).
    """

    epochs: int | None = None
    image_size: int | None = None
    model: str | None = None
    pretrained: bool = False
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0


def kind(key: str) -> Kind:
    """The :class:`Kind` called ``key``.

    Raises:
        UsageError: an unknown kind (the valid ones are listed).
    """
    if key not in KINDS:
        raise unknown_name("kind of model", key, KINDS)
    return KINDS[key]


def train_overrides(project: Project, kind_key: str, settings: Settings | None = None, *,
                    relative: bool = False) -> dict[str, Any]:  # fmt: skip
    """The config overrides (dotted keys) of a run of ``kind_key`` on ``project``.

    Args:
        relative: paths as seen from the project folder (``data``, ``runs``: for the command
            line) instead of absolute ones (for :func:`cnnkit.train` in any working folder).

    Returns:
        ``data.name`` and ``output_dir`` first, then the kind's values, then the settings;
        keys in a fixed order. Pass them as ``cnnkit.train(**overrides)``.

    Raises:
        UsageError: an unknown kind, ``advanced`` without a model, a value :func:`cnnkit.config.validate`
            refuses (epochs, image size, lr, batch size out of range).
    """
    chosen, settings = kind(kind_key), settings or Settings()
    _check_settings(chosen, settings)
    data, runs = ("data", "runs") if relative else (str(project.data_dir), str(project.runs_dir))
    values: dict[str, Any] = {"data.name": data, "output_dir": runs, **_COMMON, **chosen.overrides}
    if chosen.key == "advanced":
        values["model.name"] = settings.model.strip()
        if settings.pretrained:
            values["model.pretrained"] = True
    values["train.epochs"] = chosen.epochs if settings.epochs is None else settings.epochs
    for dotted, value in (("data.image_size", settings.image_size), ("train.lr", settings.lr),
                          ("data.batch_size", settings.batch_size)):  # fmt: skip
        if value is not None:
            values[dotted] = value
    if settings.seed:
        values["train.seed"] = settings.seed
    _check_values(values)
    return values


def _check_settings(chosen: Kind, settings: Settings) -> None:
    if chosen.key == "advanced" and not (settings.model or "").strip():
        raise UsageError("the advanced kind needs a model name (see `cnnkit models`, or timm:NAME / tv:NAME)")
    if chosen.key != "advanced" and (settings.model or settings.pretrained):
        raise UsageError(f"the {chosen.key} kind chooses its own model; pick 'advanced' to name one")


def _check_values(overrides: dict[str, Any]) -> None:
    """Every value the run would train with, checked as ``cnnkit train`` checks them (one
    :func:`cnnkit.config.validate`), before the job starts."""
    from cnnkit.config import RunConfig, apply_overrides, validate

    validate(apply_overrides(RunConfig(), overrides))


def command_args(overrides: dict[str, Any]) -> list[str]:
    """``cnnkit train``'s arguments for ``overrides``: each key's own flag or switch where it
    has one, else ``--set KEY=VALUE``; ``model.kwargs.*`` as ``--model-kwargs``."""
    from cnnkit.config import config_flags
    from cnnkit.config.flags import _switches

    flags = {dotted: flag for flag, dotted in config_flags().items()}
    switches = {(dotted, _hashable(value)): flag for flag, (dotted, value, _) in _switches().items()}
    args: list[str] = []
    for dotted, value in overrides.items():
        if (dotted, _hashable(value)) in switches:
            args.append(switches[(dotted, _hashable(value))])
        elif dotted.startswith("model.kwargs."):
            args += ["--model-kwargs", f"{dotted.removeprefix('model.kwargs.')}={_text(value)}"]
        elif dotted in flags and not flags[dotted].startswith("--no-") and not isinstance(value, bool):
            args += [flags[dotted], _text(value)]
        else:
            args += ["--set", f"{dotted}={_text(value)}"]
    return args


def train_command(project: Project, kind_key: str, settings: Settings | None = None) -> str:
    """The ``cnnkit train`` command that reproduces a studio run, run in the project folder.

    It is :func:`command_args` of :func:`train_overrides` with ``relative=True``: the same
    config the studio's job trains with, from ``--data data --output-dir runs`` (the run
    folder's name is left to cnnkit, so running it again writes a new run beside the first).
    """
    return shlex.join(["cnnkit", "train", *command_args(train_overrides(project, kind_key, settings, relative=True))])


def default_kind(project: Project) -> str:
    """``digits`` for a project of small greyscale images, ``small`` for small colour
    images, else ``photos`` (also for a project with no image yet)."""
    from PIL import Image

    sizes, grey = [], []
    for info in project.classes():
        for path in project.images(info.name)[: max(1, SAMPLE // max(1, len(project.classes())))]:
            try:
                with Image.open(path) as image:  # the header only
                    sizes.append(max(image.size))
                    grey.append(image.mode in ("1", "L", "LA", "I", "I;16", "F") or _grey_rgb(image))
            except Exception:  # noqa: BLE001 (an unreadable file says nothing about the kind)
                continue
    if not sizes:
        return "photos"
    if all(grey) and max(sizes) <= DIGIT_SIDE:
        return "digits"
    if max(sizes) <= SMALL_SIDE:
        return "small"
    return "photos"


def _grey_rgb(image: Any) -> bool:
    """An RGB image whose three channels are equal (a greyscale image saved as RGB)."""
    if image.mode != "RGB" or max(image.size) > DIGIT_SIDE:
        return False
    red, green, blue = image.split()
    return red.tobytes() == green.tobytes() == blue.tobytes()


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)

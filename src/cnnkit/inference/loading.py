"""A checkpoint, rebuilt: the model, its classes and preprocessing, and its run's data.

Every command that starts from a run (``eval``, ``report``, ``export``, ``explain``,
``serve``, ``summary``) goes through :func:`load_checkpoint` and, for images of the run's
own split, :func:`checkpoint_loaders`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import usercode
from cnnkit.checkpoint import Checkpoint, checkpoint_file
from cnnkit.confidence import deployed
from cnnkit.config import RunConfig
from cnnkit.data import DataSpec, build
from cnnkit.device import data_device
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.inference.predictor import model_from_checkpoint
from cnnkit.preprocess import Preprocess
from cnnkit.runfolder import RunFolder

SPLITS = ("train", "val", "test")


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, with everything needed to use it.

    Attributes:
        model: the network with the checkpoint's weights, in eval mode on the CPU.
        class_names, preprocess: what the model predicts and how its input is prepared.
        config: the run's resolved config.
        metrics: the metrics of the epoch the weights come from.
        path: the ``.pt`` file.
        checkpoint: the :class:`~cnnkit.checkpoint.Checkpoint` as read.
    """

    model: nn.Module
    class_names: list[str]
    preprocess: Preprocess
    config: RunConfig
    metrics: dict[str, Any]
    path: Path
    checkpoint: Checkpoint

    @property
    def payload(self) -> dict[str, Any]:
        """The checkpoint as the plain dict of format 1 (``payload["model"]["name"]``...)."""
        return self.checkpoint.to_flat_dict()

    @property
    def graph(self) -> nn.Module:
        """What runs when the model is used: the model, or with its open set one
        :class:`~cnnkit.confidence.OpenSetModel` (outputs ``logits`` and ``known``)."""
        return deployed(self.model, self.checkpoint.open_set, self.checkpoint.temperature)

    @property
    def run_folder(self) -> RunFolder | None:
        """The run folder the checkpoint sits in (``RUN/checkpoints/X.pt``), read-only; None when it is no run's."""
        return RunFolder.of_checkpoint(self.path)

    @property
    def run_dir(self) -> Path | None:
        """:attr:`run_folder`'s path."""
        run = self.run_folder
        return run.path if run else None


def load_checkpoint(path: str | Path, trust_code: Any = None) -> LoadedCheckpoint:
    """Rebuild the model from a checkpoint (or run folder) alone, in eval mode on the CPU.

    ``trust_code``: files/modules of your own model code that may be imported (``True``:
    whatever the checkpoint names); without them a checkpoint of a ``FILE.py:NAME`` model
    raises :class:`UsageError` saying what to pass (see :mod:`cnnkit.usercode`).
    """
    path = checkpoint_file(path)
    ckpt = Checkpoint.load(path)
    model = model_from_checkpoint(ckpt, trust_code=trust_code)
    if ckpt.preprocess is None:
        raise CnnkitError(f"{path} records no preprocessing (written by engine.fit without meta); "
                          "it cannot prepare images on its own")  # fmt: skip
    return LoadedCheckpoint(model, list(ckpt.class_names), ckpt.preprocess, stored_config(ckpt), ckpt.metrics or {},
                            path, ckpt)  # fmt: skip


def stored_config(ckpt: Checkpoint) -> RunConfig:
    """A copy of the run config a checkpoint stores (in today's meaning: :meth:`Checkpoint.from_payload`
    upgrades a format-1 file's config, see :func:`cnnkit.config.upgrade_legacy`)."""
    return copy.deepcopy(ckpt.config)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(sorted(SPLITS))}")


def checkpoint_loaders(
    loaded: LoadedCheckpoint, *, data: str | None = None, data_dir: str | None = None,
    device: torch.device, batch_size: int | None = None, training: bool = False, shuffle_train: bool = False,
    download: bool | None = None,
) -> tuple[Any, DataSpec, RunConfig]:  # fmt: skip
    """Loaders of the checkpoint's own split (or of ``data``) with its stored preprocessing.

    ``training=True`` keeps the run's augmentation on the train loader (to show what the
    model saw); otherwise every split is plain, unshuffled evaluation data, except that
    ``shuffle_train`` draws the training images in the run's seeded random order (a
    sample of every class from the first batches, e.g. to calibrate int8 on). ``download``
    overrides the run's own setting for a registered dataset that is not on disk
    (``False``: a :class:`DataError` instead of a download).

    Raises:
        DataError: the run's data cannot be found (the message says where it looked).
        CnnkitError: ``data`` has other classes than the checkpoint.
    """
    if data is None:  # the run's own data: your own Dataset code is imported only if trusted
        usercode.bind_record(loaded.checkpoint.data_code, "dataset")
    cfg = _evaluation_config(loaded, training=training, batch_size=batch_size)
    cfg.data.shuffle = cfg.data.shuffle or shuffle_train
    if download is not None:
        cfg.data.download = download
    saved_split = None
    if data is not None:
        cfg.data.name = data
        cfg.data.limit_train = cfg.data.limit_eval = None
    else:
        saved_split = saved_split_of(loaded.path)
        cfg.data.name = _data_location(cfg.data.name, saved_split)
    if data_dir is not None:
        cfg.data.data_dir = data_dir
    loaders, spec = build(cfg.data, seed=cfg.train.seed, device=data_device(device), split=saved_split,
                          training=training)  # fmt: skip
    _check_classes(spec, loaded)
    return loaders, spec, cfg


def held_out_loaders(loaded: LoadedCheckpoint, data: str, files: dict[str, Any], *, device: torch.device,
                     batch_size: int | None = None) -> tuple[Any, DataSpec, RunConfig]:  # fmt: skip
    """Loaders of the files :func:`held_out_files` chose from ``data`` (under ``val``), with
    the checkpoint's preprocessing, as :func:`checkpoint_loaders` builds evaluation data.

    Raises:
        CnnkitError: ``data`` has other classes than the checkpoint.
    """
    cfg = _evaluation_config(loaded, training=False, batch_size=batch_size)
    cfg.data.name = data
    cfg.data.limit_train = cfg.data.limit_eval = None
    loaders, spec = build(cfg.data, seed=cfg.train.seed, device=data_device(device), split=files, training=False)
    _check_classes(spec, loaded)
    return loaders, spec, cfg


def _check_classes(spec: DataSpec, loaded: LoadedCheckpoint) -> None:
    if spec.class_names != loaded.class_names:
        raise CnnkitError(
            f"the data's classes {spec.class_names[:10]} differ from the checkpoint's {loaded.class_names[:10]}"
        )


def first_images(loader: Any, count: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The first ``count`` images ``[N, C, H, W]`` (float32, CPU) and labels ``[N]`` of a loader."""
    images, labels, have = [], [], 0
    for batch_images, batch_labels in loader:
        images.append(batch_images[: count - have].cpu().float())
        labels.append(batch_labels[: count - have].cpu())
        have += len(images[-1])
        if have >= count:
            break
    if not images:
        return None, torch.empty(0, dtype=torch.long)
    return torch.cat(images), torch.cat(labels)


def split_loader(loaders: Any, split: str) -> Any:
    """The loader of ``split``.

    Raises:
        UsageError: ``test`` for data without a test split (never silently val).
    """
    check_split(split)
    if split == "test" and loaders.test is None:
        raise UsageError("--split test: the data has no test split (it has: train, val); "
                         "give --split val, or leave --split out")  # fmt: skip
    return {"train": loaders.train, "val": loaders.val, "test": loaders.test}[split]


def _has_split_folders(path: Path) -> bool:
    """A folder with split sub-folders, or a CSV file (whose split column names them)."""
    from cnnkit.data.folder import SPLIT_ALIASES

    return not path.is_dir() or any((path / name).is_dir() for name in SPLIT_ALIASES)


def run_data_path(loaded: LoadedCheckpoint) -> Path | None:
    """The absolute folder or CSV file the run trained on (None: a registered dataset or code)."""
    name = _data_location(loaded.config.data.name, saved_split_of(loaded.path))
    path = Path(name).expanduser()
    return path.resolve() if path.exists() and not _is_registered(name) else None


def held_out_files(loaded: LoadedCheckpoint, data: str, split: str | None) -> dict[str, Any] | None:
    """A ``split.json``-like selection scoring ``data`` whole, when it is a held-out set.

    ``data`` is held out when it is a folder or CSV file other than the run's own data:
    none of it was split off for the run, so all of its images are scored (the ``train``,
    ``val`` and ``test`` sub-folders together), or only ``split`` when it is given. The
    selection puts the scored files under ``val`` (and ``train``, which loaders need);
    None for the run's own data or a registered dataset (their saved or standard splits).

    Raises:
        UsageError: ``split`` names a split the folder does not have (the message lists its splits).
        DataError: ``data`` cannot be listed.
    """
    from cnnkit.data.builder import resolve_source
    from cnnkit.data.folder import FileDataset, FileList

    path = Path(data).expanduser()
    listable = path.is_dir() or (path.is_file() and path.suffix.lower() == ".csv")
    if not listable or path.resolve() == run_data_path(loaded):
        return None
    cfg = copy.deepcopy(loaded.config.data)
    cfg.name, cfg.val_fraction, cfg.test_fraction, cfg.kwargs = str(path.resolve()), 0.0, 0.0, {}
    source = resolve_source(cfg, seed=0)
    assert isinstance(source, FileDataset)  # a folder or CSV file lists files
    if split is not None and split not in source.splits:
        splits = ", ".join(source.splits) if _has_split_folders(path) else ""
        has = f"has no {split} split (it has: {splits})" if splits else "has no split folders (train, val, test)"
        raise UsageError(f"--split {split}: {path} {has}; leave --split out to score all its images")
    chosen = [source.splits[split]] if split else list(source.splits.values())
    files = FileList([p for part in chosen for p in part.paths], [label for part in chosen for label in part.labels])
    entry = {"paths": files.paths, "labels": files.labels}
    return {"kind": "files", "root": source.root, "files": {"train": entry, "val": entry}}


def default_split(loaders: Any) -> str:
    """``test`` when the run has a test split, else ``val``."""
    return "test" if loaders.test is not None else "val"


def _evaluation_config(loaded: LoadedCheckpoint, *, training: bool, batch_size: int | None) -> RunConfig:
    """The run's config with the checkpoint's preprocessing and, unless ``training``, no augmentation."""
    cfg = copy.deepcopy(loaded.config)  # callers build several loader sets from one checkpoint
    pre = loaded.preprocess
    cfg.data.mean, cfg.data.std = list(pre.mean), list(pre.std)
    cfg.data.channels, cfg.data.image_size = pre.channels, pre.input_size[0]
    cfg.data.resize = pre.resize
    cfg.data.interpolation = pre.interpolation
    if not training:
        cfg.data.augment, cfg.data.shuffle = "none", False
    if batch_size:
        cfg.data.eval_batch_size = batch_size
    return cfg


def _data_location(name: str, split: dict[str, Any] | None) -> str:
    """Where the run's data is: its name, or for a folder run its absolute root.

    Runs made before data paths were stored absolutely hold a name relative to the folder
    they were started in; their ``split.json`` has the absolute root, which is used when
    the relative path does not exist from here.
    """
    root = (split or {}).get("root")
    if root and not Path(name).exists() and Path(root).exists() and not _is_registered(name):
        csv = Path(root) / Path(name).name
        return str(csv) if Path(name).suffix.lower() == ".csv" and csv.is_file() else root
    return name


def _is_registered(name: str) -> bool:
    from cnnkit.data.datasets import list_datasets

    return name in list_datasets()


def saved_split_of(checkpoint: Path) -> dict[str, Any] | None:
    """The ``split.json`` of the run the checkpoint sits in, if it has one.

    Raises:
        CnnkitError: the file is there but unreadable (never a fresh split in its place: one
            could hold the run's training images).
    """
    run = RunFolder.of_checkpoint(checkpoint)
    if run is None or not run.split_file.is_file():
        return None
    split = run.read_split()
    if not isinstance(split, dict):
        raise CnnkitError(f"{run.split_file} is not readable; it says which images the run held out")
    return split


# Validation images example_images() looks through for one of each class (a bound on decoding).
EXAMPLE_SCAN_LIMIT = 2000


def example_images(checkpoint: str | Path, count: int = 8, data_dir: str | None = None) -> list[tuple[Any, str]]:
    """Up to ``count`` images of the run's validation split as (8-bit PIL image, class name).

    The first image of each class (in class order; classes not among the split's first
    2,000 images are left out), then the next images of the split; each is the model's
    input, de-normalised. Returns ``[]``, never raising, when the checkpoint or its data
    cannot be found (a demo then simply has no examples).
    """
    try:
        loaded = load_checkpoint(checkpoint)
        loaders, _, _ = checkpoint_loaders(loaded, data_dir=data_dir, device=torch.device("cpu"))
    except (CnnkitError, OSError):
        return []
    chosen = _one_per_class(loaders.val, count, len(loaded.class_names))
    return [(_to_pil(image, loaded.preprocess), loaded.class_names[label]) for image, label in chosen]


def _one_per_class(loader: Any, count: int, num_classes: int) -> list[tuple[torch.Tensor, int]]:
    firsts: dict[int, torch.Tensor] = {}  # class -> its first image
    rest: list[tuple[torch.Tensor, int]] = []
    scanned = 0
    for images, labels in loader:
        for image, label in zip(images.cpu(), labels.tolist(), strict=True):
            if label not in firsts:
                firsts[label] = image
            elif len(rest) < count:
                rest.append((image, label))
        scanned += len(labels)
        enough = len(firsts) >= min(count, num_classes) and len(firsts) + len(rest) >= count
        if enough or scanned >= EXAMPLE_SCAN_LIMIT:
            break
    return ([(firsts[label], label) for label in sorted(firsts)] + rest)[:count]


def _to_pil(image: torch.Tensor, pre: Preprocess) -> Any:
    """A normalised ``[C, H, W]`` tensor back to an 8-bit PIL image."""
    from PIL import Image

    mean, std = torch.tensor(pre.mean).view(-1, 1, 1), torch.tensor(pre.std).view(-1, 1, 1)
    pixels = ((image.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)  # [C, H, W]
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    return Image.fromarray(array)

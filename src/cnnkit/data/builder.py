"""Turn a :class:`~cnnkit.config.DataConfig` into loaders and a :class:`DataSpec`.

Two paths, chosen by what the source is:

* :class:`TensorSource` (MNIST, CIFAR, the embedded default): one uint8 tensor in memory,
  batched augmentation (:class:`~cnnkit.data.tensor_data.TensorLoader`).
* :class:`FileDataset` (folders, CSV files, Flowers-102): decoding in worker processes;
  unreadable files are skipped with a warning. With the decode cache
  (:mod:`cnnkit.data.cache`, ``decode_cache``) each image is decoded once into a
  memory-mapped uint8 file and then augmented in batches like an in-memory dataset;
  without it, every epoch decodes again with per-sample torchvision v2 transforms.

The split actually used is described in ``DataSpec.split`` (written to ``split.json``);
passing it back as ``split=`` rebuilds exactly the same split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnkit.config import DEFAULT_VAL_FRACTION, DataConfig
from cnnkit.data.cache import CachedFileLoader, use_cache
from cnnkit.data.cache import check_mode as check_cache_mode
from cnnkit.data.custom import is_user_dataset, load_user_dataset
from cnnkit.data.datasets import (
    Source,
    TensorSource,
    cache_dir,
    list_datasets,
    load_source,
)
from cnnkit.data.folder import (
    FileDataset,
    FileList,
    ImageFileDataset,
    SkipLog,
    collate_skip_bad,
    fingerprint,
    load_image,
    read_csv,
    scan_folder,
    stratified_split,
)
from cnnkit.data.spec import Batch, DataSpec, Loaders, Preprocess
from cnnkit.data.tensor_data import (
    WHOLE,
    Batching,
    Part,
    TensorLoader,
    balanced_sample_weights,
    channel_stats,
    convert_channels,
    epoch_order,
    resize_uint8,
    shard_order,
)
from cnnkit.data.transforms import config_augment, eval_transform, train_transform
from cnnkit.errors import DataError, UsageError, unknown_name

# Data with neither a validation nor a test split holds out this fraction when val_fraction is None.
DEFAULT_FOLDER_VAL_FRACTION = DEFAULT_VAL_FRACTION
DEFAULT_FILE_IMAGE_SIZE = 224


def resolve_source(cfg: DataConfig, seed: int) -> Source:
    """A registered name, a class-per-folder tree, a ``path,label`` CSV file, or your own
    ``Dataset`` as ``FILE.py:NAME`` / ``module:NAME`` (:mod:`cnnkit.data.custom`)."""
    name = cfg.name
    if is_user_dataset(name):
        return load_user_dataset(name, cfg.kwargs, cfg.image_size)
    if cfg.kwargs:
        raise UsageError(f"--data-kwargs apply to your own dataset (--data FILE.py:NAME), not to {name!r}")
    if name in list_datasets():
        return load_source(name, cfg.data_dir, cfg.download)
    path = Path(name).expanduser()
    # None (the default) carves nothing here; _file_splits applies the default where it is due.
    fractions = {"val_fraction": cfg.val_fraction or 0.0, "test_fraction": cfg.test_fraction or 0.0}
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_csv(path, seed=seed, **fractions)
    if path.is_dir():
        return scan_folder(path, seed=seed, **fractions)
    if "/" in name or "\\" in name or path.suffix:
        raise DataError(
            f"data not found: {path} does not exist; give a folder with one sub-folder of images "
            f"per class, a CSV file with path,label columns, or a dataset name ({', '.join(list_datasets())})"
        )
    raise unknown_name("dataset", name, list_datasets())


def build(
    cfg: DataConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    default_image_size: int | None = None,
    split: dict[str, Any] | None = None,
    training: bool = True,
    needs_channels: int | None = None,
) -> tuple[Loaders, DataSpec]:
    """Build the train/val/test loaders described by ``cfg``.

    Args:
        cfg: the data section of a run config.
        seed: seeds the split (when one is drawn) and the shuffling order.
        device: where in-memory datasets keep their tensors and produce batches.
        default_image_size: input side for file datasets when ``cfg.image_size`` is None
            (the model's preferred size; data knows no architecture, the caller does).
        split: a ``DataSpec.split`` from an earlier run (``split.json``) to reuse.
        needs_channels: file datasets: the channels the model must get (3 for pretrained
            RGB backbones); None lets the files decide (a folder of greyscale images
            trains as 1 channel, like the registered MNIST). ``cfg.channels`` wins over both.
        training: False builds the train split like the evaluation splits (no shuffling,
            augmentation or dropped last batch), for evaluating a model on it.

    Raises:
        DataError: data missing, empty or inconsistent with ``split``.
        UsageError: unknown dataset or augmentation name.
    """
    config_augment(cfg)  # fail on a bad preset, policy or backend before any slow loading
    check_cache_mode(cfg.decode_cache)
    source = resolve_source(cfg, seed)
    if isinstance(source, TensorSource):
        return _build_tensor(cfg, source, seed=seed, device=device, split=split, training=training)
    return _build_files(cfg, source, seed=seed, image_size=default_image_size, split=split, training=training,
                        needs_channels=needs_channels)  # fmt: skip


# ----------------------------------------------------------------------------- tensors


def _build_tensor(
    cfg: DataConfig, source: TensorSource, *, seed: int, device: str | torch.device, split: dict | None,
    training: bool,
) -> tuple[Loaders, DataSpec]:
    pools = {"train": source.train}
    if source.test is not None:
        pools["test"] = source.test
    channels = cfg.channels or source.train[0].shape[1]
    native = tuple(source.train[0].shape[-2:])
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else native
    notes: list[str] = []
    # Shrinking happens once, up front; enlarging happens per batch, so 28x28 digits fed
    # to a 224x224 backbone do not take 64x the memory.
    upsample = size[0] > native[0] or size[1] > native[1]
    stored = native if upsample else size
    pools = {k: (resize_uint8(convert_channels(x, channels), stored), y) for k, (x, y) in pools.items()}
    if upsample:
        notes.append(f"{native[0]}x{native[1]} images are resized to {size[0]}x{size[1]} per batch "
                     f"(the model's input size; --image-size changes it)")  # fmt: skip

    chosen = split["indices"] if split else _draw_tensor_split(cfg, pools, seed, notes)
    parts = {name: _take(pools[ref["from"]], ref["indices"]) for name, ref in chosen.items()}

    mean, std = _stats(cfg, source, channels, parts["train"][0])
    pre = Preprocess(channels, size, tuple(mean), tuple(std))
    augment = config_augment(cfg)
    eval_bs = cfg.eval_batch_size or max(256, 2 * cfg.batch_size)

    def loader(name: str, train: bool) -> TensorLoader:
        images, labels = parts[name]
        batching = Batching(cfg.batch_size if train else eval_bs, shuffle=train and cfg.shuffle, drop_last=train,
                            seed=seed)  # fmt: skip
        return TensorLoader(
            images, labels, pre, batching,
            augment=augment if (train or cfg.augment_eval) and not augment.is_identity else None,
            device=device, output_size=size if upsample else None,
        )  # fmt: skip

    loaders = Loaders(
        loader("train", training), loader("val", False), loader("test", False) if "test" in parts else None
    )
    if training and cfg.balance == "sampler":
        loaders.train.balance_classes()
    spec = DataSpec(
        name=cfg.name,
        class_names=list(source.class_names),
        preprocess=pre,
        sizes={name: len(labels) for name, (_, labels) in parts.items()},
        split={"kind": "indices", "indices": chosen},
        fingerprint=_tensor_fingerprint(pools),
        notes=notes,
    )
    return loaders, spec


def _draw_tensor_split(cfg: DataConfig, pools: dict, seed: int, notes: list[str]) -> dict[str, dict]:
    """Indices into the official train/test pools for each split the run uses."""
    train_labels = pools["train"][1]
    chosen: dict[str, dict] = {}
    fraction = _val_holdout(cfg.val_fraction, has_test="test" in pools)
    if fraction:
        parts = stratified_split(train_labels.tolist(), {"val": fraction}, seed)
        chosen["train"] = {"from": "train", "indices": parts["train"]}
        chosen["val"] = {"from": "train", "indices": parts["val"]}
        notes.append("validating on images held out from the training split")
    else:
        chosen["train"] = {"from": "train", "indices": list(range(len(train_labels)))}
        chosen["val"] = {"from": "test", "indices": list(range(len(pools["test"][1])))}
        notes.append("no validation split: validating on the test split (as the seed tutorials do)")
    if "test" in pools:
        chosen["test"] = {"from": "test", "indices": list(range(len(pools["test"][1])))}
    _apply_limits(cfg, chosen, seed)
    return chosen


def _val_holdout(val_fraction: float | None, *, has_test: bool) -> float:
    """The fraction of train to hold out for validation when the data has no val split.

    ``val_fraction`` > 0: that fraction. None (the default): none when there is a test
    split (the run validates on it), else :data:`DEFAULT_FOLDER_VAL_FRACTION`. 0: none.

    Raises:
        UsageError: 0 with no test split either (nothing to validate on).
    """
    if val_fraction:
        return val_fraction
    if has_test:
        return 0.0
    if val_fraction is None:
        return DEFAULT_FOLDER_VAL_FRACTION
    raise UsageError("--val-fraction 0 holds out no validation images and the data has no val or test split "
                     "to validate on; give --val-fraction > 0 (e.g. 0.2), --test-fraction > 0 or a val/ "
                     "folder")  # fmt: skip


def _apply_limits(cfg: DataConfig, chosen: dict[str, dict], seed: int) -> None:
    """Keep a seeded random subset (class order in files must not bias a small subset)."""
    for name, ref in chosen.items():
        limit = cfg.limit_train if name == "train" else cfg.limit_eval
        indices = ref.get("indices") if "indices" in ref else ref.get("paths")
        if limit and len(indices) > limit:
            generator = torch.Generator().manual_seed(seed)
            keep = sorted(torch.randperm(len(indices), generator=generator)[:limit].tolist())
            for key in ("indices", "paths", "labels"):
                if key in ref:
                    ref[key] = [ref[key][i] for i in keep]


def _take(pool: tuple[torch.Tensor, torch.Tensor], indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        index = torch.as_tensor(indices, dtype=torch.long)
        return pool[0][index], pool[1][index]
    except IndexError:
        raise DataError("the saved split does not match this dataset (index out of range)") from None


def _stats(cfg: DataConfig, source: TensorSource, channels: int, train_images: torch.Tensor):
    if cfg.mean is not None and cfg.std is not None:
        mean, std = fit_stats(cfg.mean, channels), fit_stats(cfg.std, channels)
    elif source.mean is not None and len(source.mean) == channels:
        mean, std = list(source.mean), list(source.std)
    else:
        mean, std = channel_stats(train_images)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"mean/std must have {channels} values (one per channel), got {mean} / {std}")
    return mean, std


def fit_stats(values: list[float], channels: int) -> list[float]:
    """Per-channel mean or std for ``channels`` channels.

    RGB statistics (e.g. ImageNet's, from a pretrained backbone) for greyscale images
    become their average, as timm does for 1-channel inputs; one value serves every channel.
    """
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        return [round(sum(values) / len(values), 6)]
    raise DataError(f"mean/std must have {channels} values (one per channel), got {values}")


def _tensor_fingerprint(pools: dict) -> str:
    digest = hashlib.sha1()
    for name in sorted(pools):
        images, labels = pools[name]
        digest.update(name.encode())
        digest.update(str(tuple(images.shape)).encode())
        digest.update(labels.numpy().tobytes())
        digest.update(images[:: max(1, len(images) // 256)].numpy().tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- files


# Training files whose PIL mode decides a folder's channels (headers only: no decoding).
CHANNEL_SAMPLE = 64
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _file_channels(paths: list[str], notes: list[str]) -> int:
    """1 when every sampled training image is greyscale (as MNIST digits saved as PNG are),
    else 3. Reading a header opens the file but decodes no pixels."""
    step = max(1, len(paths) // CHANNEL_SAMPLE)
    modes = set()
    for path in paths[::step][:CHANNEL_SAMPLE]:
        try:
            with Image.open(path) as image:
                modes.add(image.mode)
        except (OSError, ValueError, Image.DecompressionBombError):
            # unreadable or a bomb: the loaders skip and list it
            continue
    if modes and modes <= _GREY_MODES:
        notes.append("greyscale images: training on 1 channel (--channels 3 for RGB)")
        return 1
    return 3


def _build_files(
    cfg: DataConfig, source: FileDataset, *, seed: int, image_size: int | None, split: dict | None,
    training: bool, needs_channels: int | None = None,
) -> tuple[Loaders, DataSpec]:
    notes: list[str] = []
    if split:
        lists = {name: FileList(list(v["paths"]), list(v["labels"])) for name, v in split["files"].items()}
    else:
        lists = _file_splits(cfg, source, seed, notes)
    side = cfg.image_size or image_size or DEFAULT_FILE_IMAGE_SIZE
    channels = cfg.channels or needs_channels or _file_channels(lists["train"].paths, notes)
    mode = "L" if channels == 1 else "RGB"
    pre = Preprocess(channels, (side, side), (0.0,) * channels, (1.0,) * channels, resize=cfg.resize or side,
                     interpolation=cfg.interpolation or "bilinear")  # fmt: skip
    if cfg.mean and cfg.std:
        mean, std = fit_stats(cfg.mean, channels), fit_stats(cfg.std, channels)
    else:
        mean, std = _file_stats(lists["train"], pre, mode)
    pre = replace(pre, mean=tuple(mean), std=tuple(std))
    augment = config_augment(cfg)
    eval_bs = cfg.eval_batch_size or max(64, 2 * cfg.batch_size)

    def loader(name: str, train: bool) -> FileLoader | CachedFileLoader:
        augmented = train or cfg.augment_eval
        cached, why_not = use_cache(cfg.decode_cache, len(lists[name]), pre, augment if augmented else None)
        if why_not and why_not not in notes:
            notes.append(why_not)
        if cached:  # decoded once into a memory-mapped uint8 file; batched augmentation after that
            batching = Batching(cfg.batch_size if train else eval_bs, shuffle=train and cfg.shuffle,
                                drop_last=train, seed=seed)  # fmt: skip
            return CachedFileLoader(
                lists[name].paths, lists[name].labels, pre, mode, batching,
                augment=augment if augmented and not augment.is_identity else None, workers=cfg.workers,
            )  # fmt: skip
        transform = train_transform(pre, augment) if augmented else eval_transform(pre)
        dataset = ImageFileDataset(lists[name].paths, lists[name].labels, transform, mode)
        return FileLoader(dataset, cfg.batch_size if train else eval_bs, shuffle=train and cfg.shuffle,
                          workers=cfg.workers, seed=seed, drop_last=train)  # fmt: skip

    loaders = Loaders(
        loader("train", training), loader("val", False), loader("test", False) if "test" in lists else None
    )
    if training and cfg.balance == "sampler":
        loaders.train.balance_classes()
    spec = DataSpec(
        name=cfg.name,
        class_names=list(source.class_names),
        preprocess=pre,
        sizes={name: len(fl) for name, fl in lists.items()},
        split={
            "kind": "files",
            "root": source.root,
            "files": {n: {"paths": fl.paths, "labels": fl.labels} for n, fl in lists.items()},
        },
        fingerprint=fingerprint(source),
        notes=notes + [f"ignored {len(source.ignored)} non-image files"] * bool(source.ignored),
    )
    return loaders, spec


def _file_splits(cfg: DataConfig, source: FileDataset, seed: int, notes: list[str]) -> dict[str, FileList]:
    lists = dict(source.splits)
    if "val" not in lists:
        fraction = _val_holdout(cfg.val_fraction, has_test="test" in lists)
        if not fraction:
            lists["val"] = lists["test"]
            notes.append("no validation split: validating on the test split")
        else:
            parts = stratified_split(lists["train"].labels, {"val": fraction}, seed)
            train = lists["train"]
            lists["train"] = FileList(
                [train.paths[i] for i in parts["train"]], [train.labels[i] for i in parts["train"]]
            )
            lists["val"] = FileList([train.paths[i] for i in parts["val"]], [train.labels[i] for i in parts["val"]])
            notes.append(f"held out {fraction:.0%} of each class for validation")
    refs = {name: {"paths": fl.paths, "labels": fl.labels} for name, fl in lists.items()}
    _apply_limits(cfg, refs, seed)
    return {name: FileList(ref["paths"], ref["labels"]) for name, ref in refs.items()}


def _file_stats(files: FileList, pre: Preprocess, mode: str, sample: int = 256) -> tuple[list[float], list[float]]:
    """Mean/std of up to ``sample`` training images at the eval preprocessing, cached."""
    step = max(1, len(files.paths) // sample)
    paths = files.paths[::step][:sample]
    key = hashlib.sha1(repr((paths, pre.input_size, pre.resize, mode)).encode()).hexdigest()[:16]
    cached = cache_dir() / "stats" / f"{key}.json"
    if cached.is_file():
        values = json.loads(cached.read_text())
        return values["mean"], values["std"]
    plain = replace(pre, mean=(0.0,) * pre.channels, std=(1.0,) * pre.channels)
    transform = eval_transform(plain)
    tensors = []
    for path in paths:
        try:
            tensors.append(transform(load_image(path, mode)))
        except DataError:
            continue
    if not tensors:
        raise DataError(f"none of the {len(paths)} sampled training images could be read")
    stacked = torch.stack(tensors)  # [S, C, H, W] in [0, 1]
    mean = [round(float(v), 4) for v in stacked.mean(dim=(0, 2, 3))]
    std = [round(float(v), 4) for v in stacked.std(dim=(0, 2, 3))]
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"mean": mean, "std": std}))
    return mean, std


class EpochSampler(Sampler[int]):
    """Shuffles with a seed that depends on the epoch, so data order can be restored."""

    def __init__(self, count: int, shuffle: bool, seed: int) -> None:
        self.count, self.shuffle, self.seed = count, shuffle, seed
        self.next_epoch = 0
        self.weights: torch.Tensor | None = None  # per-sample weights: balanced sampling with replacement
        self.even_batch: int | None = None  # training: shards cut to whole global batches (set by FileLoader)
        self.part = WHOLE  # this process's share of each epoch (see shard_loaders)

    def __len__(self) -> int:
        return len(self._shard(torch.arange(self.count)))

    def __iter__(self) -> Iterator[int]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        order = epoch_order(self.count, shuffle=self.shuffle, seed=self.seed, epoch=epoch, weights=self.weights)
        return iter(self._shard(order).tolist())

    def _shard(self, order: torch.Tensor) -> torch.Tensor:
        """This process's part of the order (training: equal step counts on every rank)."""
        return shard_order(order, self.part, self.even_batch)


class FileLoader:
    """A DataLoader over image files that skips unreadable ones and has :meth:`set_epoch`."""

    def __init__(
        self, dataset: Dataset, batch_size: int, *, shuffle: bool, workers: int, seed: int, drop_last: bool
    ) -> None:
        self.sampler = EpochSampler(len(dataset), shuffle, seed)
        if drop_last:
            self.sampler.even_batch = batch_size
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_skip_bad,
            persistent_workers=workers > 0,
            drop_last=drop_last and len(dataset) > batch_size,
        )

    @property
    def num_samples(self) -> int:
        """Samples this process sees per epoch (its share under data-parallel training)."""
        return len(self.sampler)

    @property
    def part(self) -> Part:
        return self.sampler.part

    @part.setter
    def part(self, part: Part) -> None:
        self.sampler.part = part

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.next_epoch = epoch

    @property
    def skip_log(self) -> SkipLog | None:
        """Where the dataset records the files it skips (see :class:`~cnnkit.data.folder.SkipLog`)."""
        return getattr(self.loader.dataset, "skip_log", None)

    @skip_log.setter
    def skip_log(self, log: SkipLog | None) -> None:
        if not hasattr(self.loader.dataset, "skip_log"):
            return  # a dataset of the user's own: it decodes (and skips) as it likes
        self.loader.dataset.skip_log = log
        # Persistent workers hold a copy of the dataset made when they started: start fresh ones.
        self.loader._iterator = None

    @property
    def labels(self) -> torch.Tensor:
        """Class index of every sample, ``[N]`` (for loss weights and balanced sampling)."""
        labels = getattr(self.loader.dataset, "labels", None)
        if labels is None:
            raise DataError("this dataset does not expose its labels (a `labels` attribute), which class "
                            "balancing needs; use --balance none")  # fmt: skip
        return torch.as_tensor(labels, dtype=torch.long)

    def balance_classes(self) -> None:
        """Draw each epoch's samples with replacement so every class comes up equally often."""
        self.sampler.weights = balanced_sample_weights(self.labels)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            if batch is not None:
                yield Batch(*batch)


class _TensorsOf(Dataset):
    """Adapts a user's Dataset that returns PIL images or arrays to tensors."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        if not isinstance(image, torch.Tensor):
            from torchvision.transforms.v2 import functional as TF

            image = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        return image, int(label)


def loader_from_dataset(
    dataset: Dataset, batch_size: int, *, shuffle: bool, workers: int = 0, seed: int = 0
) -> FileLoader:
    """Batches from any torch ``Dataset`` returning ``(image, label)`` pairs.

    Images may be float tensors ``[C, H, W]`` (used as they are: the user's transform
    decides normalisation), PIL images or HxW(xC) arrays (converted to [0, 1] floats).
    """
    return FileLoader(_TensorsOf(dataset), batch_size, shuffle=shuffle, workers=workers, seed=seed, drop_last=False)


def shard_loaders(loaders: Iterable[Any], part: Part) -> None:
    """Give each loader (train, val, test; None skipped) ``part``'s share of every epoch:
    data-parallel training calls it once per process after :func:`build`."""
    for loader in loaders:
        if loader is not None:
            loader.part = part

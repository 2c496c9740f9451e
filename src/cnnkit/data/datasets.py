"""The dataset registry: names that resolve to real data, in memory or as files.

``@register_dataset`` fills one dict; :func:`load_source` raises on unknown names listing
the valid ones. A loader returns either a :class:`TensorSource` (small datasets held as
uint8 tensors) or a :class:`~cnnkit.data.folder.FileDataset` (images decoded per sample).
torchvision-backed names keep torchvision's real download code and also load from a
local folder with ``download=False``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnkit import settings
from cnnkit.data.folder import FileDataset, scan_folder
from cnnkit.errors import DataError, unknown_name


@dataclass
class TensorSource:
    """A dataset small enough to hold in memory.

    Attributes:
        class_names: index -> name.
        train: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``.
        test: the official test split, or None.
        mean: known per-channel mean (None: computed from ``train``).
        std: known per-channel std.
        origin: where it was read from, for the log.
    """

    class_names: list[str]
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None
    mean: list[float] | None = None
    std: list[float] | None = None
    origin: str = ""


Source = TensorSource | FileDataset
Loader = Callable[[Path, bool], Source]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Loader
    description: str


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    """Register ``loader(root, download) -> Source`` under ``name``."""

    def decorate(loader: Loader) -> Loader:
        _DATASETS[name] = DatasetInfo(name, loader, description)
        return loader

    return decorate


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _DATASETS:
        raise unknown_name("dataset", name, list_datasets())
    return _DATASETS[name]


def cache_dir() -> Path:
    """cnnkit's cache folder (``cnnkit.settings.cache_dir``)."""
    return settings.cache_dir()


def default_data_dir() -> Path:
    """Where named datasets are looked for and downloaded (``cnnkit.settings.data_dir``)."""
    return settings.data_dir()


def downloads_allowed(requested: bool) -> bool:
    """Downloads happen only when asked for and not forced offline (``CNNKIT_OFFLINE``)."""
    return requested and not settings.offline()


def load_source(name: str, data_dir: str | Path | None, download: bool) -> Source:
    """Resolve a registered dataset name to its data."""
    info = dataset_info(name)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return info.loader(root, downloads_allowed(download))


def _torchvision(
    name: str, factory: Callable[..., object], root: Path, download: bool, expected: str, homepage: str = ""
):
    """Build a torchvision dataset from ``root``; download only if it is missing and allowed.

    ``homepage`` (where to fetch the files by hand) goes into the not-found message.
    """
    try:
        return factory(root=str(root), download=False)
    except (RuntimeError, FileNotFoundError, OSError):
        pass
    tried = f"looked in {root} for {expected}"
    if not download:
        raise DataError(
            f"dataset {name!r} not found offline: {tried}. Put the files there, pass "
            f"--data-dir FOLDER that holds them, or let torchvision download them (drop --no-download "
            f"and unset CNNKIT_OFFLINE)" + (f"; the files come from {homepage}" if homepage else "") + "."
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        return factory(root=str(root), download=True)
    except Exception as exc:  # network errors come in many types; all end the same way
        reason = " ".join(str(exc).split())[:200]  # torchvision's message spans lines
        raise DataError(
            f"dataset {name!r} is not on disk and the download failed ({type(exc).__name__}: "
            f"{reason}); {tried}. Download it elsewhere and pass --data-dir FOLDER."
        ) from None


def _as_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` or ``[N, H, W, C]`` uint8 -> ``[N, C, H, W]`` uint8 tensor."""
    tensor = torch.as_tensor(np.asarray(images))
    if tensor.dim() == 3:
        return tensor.unsqueeze(1).contiguous()
    return tensor.permute(0, 3, 1, 2).contiguous()


def _splits(factory: Callable[..., object], name: str, root: Path, download: bool, expected: str):
    """Official train and test splits of a torchvision dataset with ``.data``/``.targets``."""
    train = _torchvision(name, lambda **kw: factory(train=True, **kw), root, download, expected)
    test = _torchvision(name, lambda **kw: factory(train=False, **kw), root, download, expected)
    return train, test


@register_dataset("embedded-mnist", "10,000 train + 2,000 test real MNIST digits shipped in the package")
def _embedded_mnist(root: Path, download: bool) -> TensorSource:
    with resources.as_file(resources.files("cnnkit.data") / "embedded" / "mnist_subset.npz") as path:
        with np.load(path, allow_pickle=False) as arrays:
            train = (_as_nchw(arrays["train_images"]), torch.as_tensor(arrays["train_labels"]).long())
            test = (_as_nchw(arrays["test_images"]), torch.as_tensor(arrays["test_labels"]).long())
    return TensorSource([str(d) for d in range(10)], train, test, [0.1307], [0.3081], "embedded")


def _register_idx(name: str, klass_name: str, classes: list[str], mean: float, std: float) -> None:
    """MNIST-format datasets: ``root/<Class>/raw/*-ubyte``."""

    def load(root: Path, download: bool) -> TensorSource:
        from torchvision import datasets

        factory = getattr(datasets, klass_name)
        expected = f"{klass_name}/raw/train-images-idx3-ubyte (and the other three IDX files)"
        train, test = _splits(factory, name, root, download, expected)
        return TensorSource(
            classes,
            (_as_nchw(train.data), train.targets.long()),
            (_as_nchw(test.data), test.targets.long()),
            [mean],
            [std],
            str(Path(root) / klass_name),
        )

    register_dataset(name, f"torchvision {klass_name}, 28x28 grey, {len(classes)} classes")(load)


_FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_KMNIST = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
_register_idx("mnist", "MNIST", [str(d) for d in range(10)], 0.1307, 0.3081)
_register_idx("fashion-mnist", "FashionMNIST", _FASHION, 0.2860, 0.3530)
_register_idx("kmnist", "KMNIST", _KMNIST, 0.1918, 0.3483)


def _register_emnist(split: str) -> None:
    def load(root: Path, download: bool) -> TensorSource:
        from torchvision import datasets

        def factory(**kwargs):
            return datasets.EMNIST(split=split, **kwargs)

        expected = f"EMNIST/raw/emnist-{split}-train-images-idx3-ubyte (and the other IDX files)"
        train, test = _splits(factory, f"emnist-{split}", root, download, expected)
        classes = list(train.classes)
        # EMNIST letters numbers its classes 1..26 with an unused "N/A" at 0.
        offset = 1 if classes[0] == "N/A" else 0

        def tensors(ds):
            # EMNIST stores images transposed; fixing it here keeps demos free of flip hacks.
            return _as_nchw(ds.data.transpose(1, 2)), ds.targets.long() - offset

        return TensorSource(classes[offset:], tensors(train), tensors(test), origin=str(Path(root) / "EMNIST"))

    register_dataset(f"emnist-{split}", f"torchvision EMNIST split={split!r}, 28x28 grey")(load)


for _split in ("digits", "letters", "balanced"):
    _register_emnist(_split)


_CIFAR_STATS = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}


def _register_cifar(name: str, klass_name: str, folder: str) -> None:
    def load(root: Path, download: bool) -> TensorSource:
        mean, std = _CIFAR_STATS[name]
        png_root = root / name
        if (png_root / "train").is_dir() and (png_root / "test").is_dir():
            files = scan_folder(png_root, val_fraction=0.0, test_fraction=0.0, seed=0)
            train = decode_files(files, "train", (32, 32), "RGB")
            test = decode_files(files, "test", (32, 32), "RGB")
            return TensorSource(files.class_names, train, test, mean, std, str(png_root))
        from torchvision import datasets

        expected = f"{folder}/ (python pickle batches) or {name}/train/<class>/*.png and {name}/test/<class>/*.png"
        train, test = _splits(getattr(datasets, klass_name), name, root, download, expected)
        return TensorSource(
            list(train.classes),
            (_as_nchw(train.data), torch.as_tensor(train.targets).long()),
            (_as_nchw(test.data), torch.as_tensor(test.targets).long()),
            mean,
            std,
            str(root / folder),
        )

    register_dataset(name, f"torchvision {klass_name} or a {name}/train|test/<class>/*.png tree, 32x32 RGB")(load)


_register_cifar("cifar10", "CIFAR10", "cifar-10-batches-py")
_register_cifar("cifar100", "CIFAR100", "cifar-100-python")


@register_dataset("flowers102", "torchvision Flowers102 (Oxford 102 flowers), JPEG files, train/val/test")
def _flowers102(root: Path, download: bool) -> FileDataset:
    from torchvision import datasets

    from cnnkit.data.folder import FileList

    expected = "flowers-102/jpg/*.jpg, flowers-102/imagelabels.mat and flowers-102/setid.mat"
    splits = {}
    for split in ("train", "val", "test"):
        ds = _torchvision(
            "flowers102", lambda split=split, **kw: datasets.Flowers102(split=split, **kw), root, download, expected,
            homepage="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz unpacked as "
            "flowers-102/jpg/, imagelabels.mat, setid.mat)",
        )  # fmt: skip
        # torchvision keeps the file list private; reading it avoids decoding through PIL twice.
        splits[split] = FileList([str(p) for p in ds._image_files], [int(v) for v in ds._labels])
    names = [f"{i:03d}" for i in range(102)]
    return FileDataset(class_names=names, splits=splits, ignored=[], root=str(root / "flowers-102"))


def decode_files(files: FileDataset, split: str, size: tuple[int, int], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split of small image files into uint8 tensors, cached on disk.

    The cache (``cache_dir()/decoded/<key>/``) is keyed by the file list, sizes and
    modification times, so a changed dataset is decoded again.
    """
    from cnnkit.data.folder import load_image

    listing = files.splits[split]
    key = hashlib.sha1(repr((size, mode, _stat_listing(listing.paths), listing.labels)).encode()).hexdigest()[:16]
    folder = cache_dir() / "decoded" / key
    if (folder / "images.npy").is_file():
        return torch.from_numpy(np.load(folder / "images.npy")), torch.from_numpy(np.load(folder / "labels.npy"))

    def decode(path: str) -> np.ndarray:
        image = load_image(path, mode)
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)

    # One thread: decoding a 32x32 PNG is mostly Python and file overhead that holds the
    # GIL, so a thread pool was 1.7x slower than this loop on 2 cores (CIFAR-10: ~13 s).
    arrays = [decode(path) for path in listing.paths]
    images = _as_nchw(np.stack(arrays))
    labels = torch.as_tensor(listing.labels, dtype=torch.long)
    _save_atomic(folder, images.numpy(), labels.numpy())
    return images, labels


def _stat_listing(paths: list[str]) -> list[tuple[str, int, int]]:
    stats = []
    for path in paths:
        st = os.stat(path)
        stats.append((path, st.st_size, int(st.st_mtime)))
    return stats


def _save_atomic(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write the two arrays into a temp folder, then rename it into place."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "images.npy", images)
    np.save(tmp / "labels.npy", labels)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race; its copy is as good as ours
        for child in tmp.iterdir():
            child.unlink()
        tmp.rmdir()

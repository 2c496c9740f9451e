"""Your own torch ``Dataset`` as a cnnkit dataset: ``--data my_data.py:MyDataset``.

The contract:

* ``NAME`` is a ``Dataset`` class, a function returning one, or a ``Dataset`` object.
  Its constructor gets ``--data-kwargs`` (``root=...``); if it names ``split``, it is
  called with ``split="train"`` and ``split="test"`` (a split it does not have: raise
  ``ValueError`` or return an empty dataset); if it names ``train`` (as torchvision's
  datasets do), with ``train=True`` and ``train=False``; otherwise once, and validation
  (``--val-fraction``, default 0.2) is held out from it.
* ``dataset[i]`` is ``(image, label)``: the image a PIL image, a uint8 or [0, 1] float
  tensor ``[C, H, W]`` or ``[H, W]``, or a NumPy array ``[H, W(, C)]``, *not normalised*
  (cnnkit computes the statistics, normalises, and stores that preprocessing in the
  checkpoint so ``predict`` treats image files the same way); the label an int.
* ``dataset.classes`` lists the class names (index = label).

The items are read once into memory as uint8 tensors (like MNIST and CIFAR), so every
in-memory feature works: splits saved in ``split.json``, batched augmentation presets,
resume, ``eval``/``report`` on the same split. Images of different sizes need
``--image-size`` (each is then resized on its short side and centre-cropped).
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cnnkit import usercode
from cnnkit.data.datasets import TensorSource
from cnnkit.data.folder import to_mode
from cnnkit.errors import DataError, UsageError

# Largest dataset read into memory (uint8 bytes); bigger ones belong in a folder or CSV.
MAX_BYTES = 8 << 30


def is_user_dataset(name: str) -> bool:
    """Whether a data name is a code reference (``FILE.py:NAME`` / ``module:NAME``)."""
    return usercode.parse_ref(name) is not None


def load_user_dataset(name: str, kwargs: dict[str, Any], image_size: int | None = None) -> TensorSource:
    """Read the user's dataset ``name`` into a :class:`TensorSource` (train and test pools).

    The code must have been imported by an explicit request (a new run's ``--data``) or
    be trusted (:mod:`cnnkit.usercode`).

    Raises:
        UsageError: untrusted code, a constructor mismatch, items of the wrong kind,
            normalised images, labels outside ``classes``, sizes that differ without
            ``image_size``.
        DataError: an empty training set, or one too big for memory.
    """
    obj = usercode.get(name, "dataset")
    start = time.perf_counter()
    train, test = _pools(obj, dict(kwargs), name)
    classes = _class_names(train, name)
    if test is not None and getattr(test, "classes", None) is not None and _class_names(test, name) != classes:
        raise UsageError(f"{name}: the test split's classes differ from the training split's")
    pools = {"train": _read(train, name, "train", len(classes), image_size)}
    if test is not None:
        pools["test"] = _read(test, name, "test", len(classes), image_size, like=pools["train"][0])
    count = sum(len(labels) for _, labels in pools.values())
    origin = f"{name} ({count:,} items read in {time.perf_counter() - start:.1f}s)"
    return TensorSource(classes, pools["train"], pools.get("test"), origin=origin)


def _pools(obj: Any, kwargs: dict[str, Any], name: str) -> tuple[Any, Any]:
    """(train dataset, test dataset or None) from a class, function or dataset object."""
    if not callable(obj) or hasattr(obj, "__getitem__") and not inspect.isclass(obj):
        if kwargs:
            raise UsageError(f"{name} is a dataset object, not a class or function: --data-kwargs do not apply")
        return obj, None
    params = _parameters(obj)
    call = dict(name=name, supplied=("split", "train"), flag="--data-kwargs")
    if "split" in params:
        return usercode.call(obj, {**kwargs, "split": "train"}, **call), _optional(obj, {**kwargs, "split": "test"})
    if "train" in params:
        return usercode.call(obj, {**kwargs, "train": True}, **call), _optional(obj, {**kwargs, "train": False})
    return usercode.call(obj, kwargs, **call), None


def _parameters(obj: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return {}


def _optional(obj: Any, args: dict[str, Any]) -> Any:
    """The test split, or None where the dataset has none (ValueError or empty)."""
    try:
        dataset = obj(**args)
    except ValueError:
        return None
    return dataset if dataset is not None and len(dataset) > 0 else None


def _class_names(dataset: Any, name: str) -> list[str]:
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise UsageError(f"{name} has no `classes` attribute: give it the list of class names "
                         "(index = label), e.g. self.classes = ['cat', 'dog']")  # fmt: skip
    names = [str(c) for c in classes]
    if len(names) < 2:
        raise UsageError(f"{name}.classes must name at least 2 classes, got {names}")
    return names


def _read(dataset: Any, name: str, split: str, num_classes: int, image_size: int | None,
          like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """All items of one split as uint8 ``[N, C, H, W]`` and int64 labels ``[N]``."""
    count = len(dataset)
    if count == 0:
        raise DataError(f"{name}: the {split} split is empty")
    images: list[torch.Tensor] = []
    labels: list[int] = []
    channels = None if like is None else like.shape[1]
    for index in range(count):
        item = dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise UsageError(f"{name}[{index}] is a {type(item).__name__}; items must be (image, label) pairs")
        image = to_uint8(item[0], f"{name}[{index}]")
        channels = channels or (1 if image.shape[0] == 1 else 3)
        images.append(_channels(image, channels))
        labels.append(_label(item[1], num_classes, f"{name}[{index}]"))
        if index == 0 and count * images[0].numel() > MAX_BYTES:
            raise DataError(f"{name}: {count:,} images of {list(images[0].shape)} need over "
                            f"{MAX_BYTES >> 30} GB in memory; use a class-per-folder tree or a CSV file "
                            "instead")  # fmt: skip
    return _stack(images, name, image_size, like), torch.tensor(labels, dtype=torch.long)


def to_uint8(image: Any, where: str) -> torch.Tensor:
    """A PIL image, array or tensor as uint8 ``[C, H, W]`` with 1 or 3 channels.

    Raises:
        UsageError: an unsupported kind, shape or value range (normalised floats).
    """
    if isinstance(image, Image.Image):
        mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else "RGB"
        array = np.asarray(to_mode(image, mode))
        tensor = torch.from_numpy(array.copy())
        return tensor.unsqueeze(0) if array.ndim == 2 else tensor.permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor
    else:
        raise UsageError(f"{where}: the image is a {type(image).__name__}; return a PIL image, a tensor or an array")
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3, 4):
        raise UsageError(f"{where}: image of shape {list(tensor.shape)}; expected [C, H, W] (tensor) or "
                         "[H, W, C] (array) with 1, 3 or 4 channels")  # fmt: skip
    tensor = tensor[:3]  # RGBA: alpha dropped
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()
    if tensor.is_floating_point():
        low, high = float(tensor.min()), float(tensor.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise UsageError(
                f"{where}: image values run from {low:.3g} to {high:.3g}, so they look normalised; return the "
                "image before normalising (a PIL image, uint8, or floats in [0, 1] such as ToTensor() gives): "
                "cnnkit normalises with the data's statistics and stores them for predict"
            )
        return (tensor.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    raise UsageError(f"{where}: images of dtype {tensor.dtype} are not supported; use uint8 or floats in [0, 1]")


def _channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # ITU-R 601 luma, as convert_channels
    return (image.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def _label(label: Any, num_classes: int, where: str) -> int:
    try:
        value = int(label)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: label {label!r} is not an integer class index") from None
    if not 0 <= value < num_classes:
        raise UsageError(f"{where}: label {value} is outside the {num_classes} classes (0-{num_classes - 1})")
    return value


def _stack(images: list[torch.Tensor], name: str, image_size: int | None, like: torch.Tensor | None) -> torch.Tensor:
    """One ``[N, C, H, W]`` tensor; differing sizes are resized and centre-cropped to ``image_size``."""
    sizes = {tuple(image.shape[-2:]) for image in images}
    if like is not None:
        sizes.add(tuple(like.shape[-2:]))
    if len(sizes) == 1:
        return torch.stack(images)
    if image_size is None:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:4])
        raise UsageError(f"{name}: images have different sizes ({shown}...); pass --image-size N "
                         "to resize and centre-crop them to N x N")  # fmt: skip
    side = [image_size, image_size]
    return torch.stack([TF.center_crop(TF.resize(image, image_size, antialias=True), side) for image in images])

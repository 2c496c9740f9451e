"""Out-of-sample class probabilities for every training image, by K-fold cross-validation.

This module owns how the label check gets predictions that never saw the label they are
judged against (:func:`out_of_sample_probs`):

* **features** (colour photos, or any ``timm:``/``tv:`` backbone): a frozen pretrained
  backbone (default ``timm:efficientnet_lite0``) turns each image into a feature vector
  *once*, cached on disk under ``cache_dir()/features/labels-<key>.pt`` where ``key``
  hashes the files (real path, size, modification time), the model, its weights and the
  preprocessing, so a second check of the same data reads them in a second. Each fold
  then fits a linear head on the other folds' standardised features (full-batch L-BFGS,
  L2 penalty :data:`HEAD_WEIGHT_DECAY`): milliseconds.
* **network** (small grey images such as MNIST, or any of cnnkit's own architectures when
  asked): the images are decoded once into memory and a network trains from scratch on
  each fold's training part for a few epochs (AdamW, one-cycle schedule).

Folds are stratified by class (:func:`plan_folds`); a class with fewer images than folds
lowers the fold count (said in a note), and one with a single image is an error.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cnnkit.checkpoint import read_tensor_cache, save_tensor_file
from cnnkit.data.datasets import cache_dir
from cnnkit.data.folder import ImageLoadError, load_image
from cnnkit.data.spec import Preprocess
from cnnkit.data.transforms import resize_crop_transform
from cnnkit.errors import DataError, UsageError

DEFAULT_BACKBONE = "timm:efficientnet_lite0"
DEFAULT_NETWORK = "mnist_fast"  # 96-97 % out-of-sample on 4,000 digits in 3 epochs per fold
DEFAULT_EPOCHS = 3  # per fold, for a network trained from scratch
NETWORK_LR = 1e-2  # peak of the one-cycle schedule (mnist_fast's BatchNorm keeps it stable)
# L2 penalty on the head's weights, added to the mean cross-entropy on standardised
# features. Tuned on imagenette-2k's cached Lite0 features with 6 flip seeds at 5 % and
# 10 % noise (3e-3, 1e-2, 3e-2 tried; bench/label_issues.py and docs/benchmarks.md): a
# weaker penalty lets each fold's head fit the flipped labels it trains on, a stronger one
# makes it too unsure to flag the wrong ones; 3e-3 kept both precision and recall above
# 0.83 on every seed.
HEAD_WEIGHT_DECAY = 3e-3
HEAD_ITERATIONS = 100  # L-BFGS steps per fold (converged well before on 1,280-wide features)
FEATURE_BATCH = 64  # images per backbone pass
CACHE_FORMAT = 1
GREY_SMALL_SIDE = 64  # px: grey images at most this large (median longer side) train a network


@dataclass
class Probs:
    """What cross-validation produced.

    Attributes:
        probs: ``[N, K]`` out-of-sample class probabilities (float64; rows of unreadable
            files are NaN).
        readable: ``[N]`` True where the file decoded.
        features: ``[N, F]`` float32 backbone features (None on the network path).
        method: one line saying how the probabilities were made.
        folds: folds used.
        notes: lines for the user (fewer folds, features from the cache, timings).
        feature_seconds: time of the feature pass (0 when read from the cache).
    """

    probs: np.ndarray
    readable: np.ndarray
    features: np.ndarray | None
    method: str
    folds: int
    notes: list[str] = field(default_factory=list)
    feature_seconds: float = 0.0


def plan_folds(labels: np.ndarray, class_names: Sequence[str], folds: int) -> tuple[int, list[str]]:
    """The fold count to use and the notes about it.

    Raises:
        UsageError: ``folds`` below 2.
        DataError: a class has fewer than 2 images (no fold could hold one out).
    """
    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}")
    counts = np.bincount(labels, minlength=len(class_names))
    smallest = int(counts.min())
    small = [f"{class_names[i]} ({int(n)})" for i, n in enumerate(counts) if n < folds]
    if smallest < 2:
        raise DataError(
            "cross-validation needs at least 2 training images per class; too few in: " + ", ".join(small)
            + "; add images or remove the class"
        )
    if smallest < folds:
        return smallest, [f"{smallest} folds instead of {folds}: fewer than {folds} images in " + ", ".join(small)]
    return folds, []


def fold_splits(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train rows, held-out rows)`` per fold, stratified by class (scikit-learn)."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def is_small_grey(paths: Sequence[str], sample: int = 200) -> bool:
    """True when most images are greyscale and small (MNIST-like): a network from scratch
    beats ImageNet features there. Reads the headers of up to ``sample`` files."""
    from PIL import Image

    step = max(1, len(paths) // sample)
    grey, sides = 0, []
    for path in paths[::step]:
        try:
            with Image.open(path) as image:
                grey += image.mode in ("1", "L", "LA", "I", "I;16", "F")
                sides.append(max(image.size))
        except OSError:
            continue
    return bool(sides) and grey >= 0.9 * len(sides) and float(np.median(sides)) <= GREY_SMALL_SIDE


# ----------------------------------------------------------------------------- decoding


class _Decoded(Dataset):
    """``dataset[i]`` -> ``(uint8 [C, H, W] or None, i)``: decoded, resized, centre-cropped."""

    def __init__(self, paths: Sequence[str], pre: Preprocess) -> None:
        self.paths, self.mode = list(paths), "L" if pre.channels == 1 else "RGB"
        self.resize_crop = resize_crop_transform(pre)
        self.shape = (pre.input_size[0], pre.input_size[1], pre.channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int]:
        try:
            image = load_image(self.paths[index], self.mode)
        except ImageLoadError:
            return None, index  # reported by the caller as unreadable (cnnkit check lists why)
        array = np.array(self.resize_crop(image), dtype=np.uint8).reshape(self.shape)  # [H, W, C]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), index  # [C, H, W]


def _keep_readable(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [i for image, i in batch if image is not None]
    images = [image for image, _ in batch if image is not None]
    return (torch.stack(images) if images else torch.zeros(0, dtype=torch.uint8)), torch.as_tensor(rows)


class _Batches:
    """Normalised float batches ``(images [B, C, H, W], rows [B])`` of the readable files."""

    def __init__(self, paths: Sequence[str], pre: Preprocess, batch_size: int, workers: int) -> None:
        self.pre = pre
        self.loader = DataLoader(_Decoded(paths, pre), batch_size=batch_size, num_workers=workers,
                                 collate_fn=_keep_readable)  # fmt: skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, rows in self.loader:
            if len(rows):
                yield self.pre.normalize(images), rows


def decode_workers() -> int:
    """Decoding processes: one core stays with the model (2 cores: 1 decoder)."""
    return min(4, max(1, (os.cpu_count() or 1) - 1))


# ----------------------------------------------------------------------------- features path


def backbone(name: str) -> tuple[nn.Module, Preprocess, str]:
    """The pretrained backbone ``name`` (``timm:``/``tv:``), its preprocessing and weights' origin.

    Raises:
        CnnkitError: no pretrained weights for it (the message lists the sources tried).
    """
    from cnnkit.models import create_model, find_weights, load_weights

    weights = find_weights(name)
    pre = weights.preprocess or {}
    side = int((pre.get("input_size") or [224])[0])
    preprocess = Preprocess(channels=3, input_size=(side, side), mean=tuple(pre.get("mean", (0.485, 0.456, 0.406))),
                            std=tuple(pre.get("std", (0.229, 0.224, 0.225))), resize=pre.get("resize"),
                            interpolation=pre.get("interpolation", "bilinear"))  # fmt: skip
    model = create_model(name, num_classes=2, in_chans=3, input_size=preprocess.input_size)
    load_weights(model, weights)
    return model.eval(), preprocess, weights.source


def feature_cache_path(paths: Sequence[str], name: str, model: nn.Module, pre: Preprocess) -> Path:
    """Where the features of these files through this backbone are cached.

    The key hashes each file's real path (a symlinked copy of a dataset shares the cache),
    size and modification time, the model name, a digest of its backbone's weights (not
    of the unused classifier head, which is random on every call) and the preprocessing;
    labels are not in it: relabelling images reuses the features.
    """
    from cnnkit.data.cache import file_stamp
    from cnnkit.engine.features import cache_key, state_digest

    files = hashlib.sha1()
    for path in paths:
        files.update(f"{os.path.realpath(path)}\t{file_stamp(path)}\n".encode())
    key = cache_key(purpose="label-check", version=CACHE_FORMAT, files=files.hexdigest(), model=name,
                    weights=state_digest(getattr(model, "backbone", model)), preprocess=pre.to_dict())  # fmt: skip
    return cache_dir() / "features" / f"labels-{key}.pt"


def _read_features(path: Path, count: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(features [N, F], readable [N])`` from a valid cache file, else None (never trusted when torn)."""
    payload = read_tensor_cache(path)
    try:
        features, readable = payload["features"], payload["readable"]
        if payload.get("format") == CACHE_FORMAT and len(features) == len(readable) == count:
            return features, readable
    except (KeyError, TypeError):  # missing, torn or foreign: recomputed
        pass
    return None


def image_features(paths: Sequence[str], name: str, *, device: torch.device,
                   progress: bool) -> tuple[np.ndarray, np.ndarray, float, str]:  # fmt: skip
    """Features of every file through the pretrained backbone ``name``, cached on disk.

    The cache holds the files in the order of their real paths, so the same images listed
    in another order or under other class folders (a relabelled copy) find it too.

    Returns:
        float32 features ``[N, F]`` (zero rows for unreadable files), readable mask
        ``[N]``, seconds spent computing them (0.0 from the cache), and a note line.
    """
    model, pre, source = backbone(name)
    order = np.argsort([os.path.realpath(p) for p in paths], kind="stable")  # cache row r is paths[order[r]]
    ordered = [paths[i] for i in order]
    path = feature_cache_path(ordered, name, model, pre)
    found = _read_features(path, len(paths))
    seconds, note = 0.0, f"features from the cache ({path})"
    if found is None:
        start = time.perf_counter()
        found = _compute_features(model, ordered, pre, device, progress)
        save_tensor_file({"format": CACHE_FORMAT, "features": found[0], "readable": found[1]}, path)
        seconds = time.perf_counter() - start
        count = int(found[1].sum())
        note = (f"features of {count:,} images through {name} ({source}) computed in {seconds:.1f}s "
                f"({count / max(seconds, 1e-9):.0f} img/s); cached in {path}")  # fmt: skip
    features, readable = np.zeros((len(paths), found[0].shape[1]), np.float32), np.zeros(len(paths), bool)
    features[order], readable[order] = found[0].float().numpy(), found[1].numpy()
    return features, readable, seconds, note


def _compute_features(model: nn.Module, paths: Sequence[str], pre: Preprocess, device: torch.device,
                      progress: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """float16 features ``[N, F]`` (zero rows where unreadable) and the readable mask ``[N]``."""
    from cnnkit.engine.features import extract_features

    model.to(device)
    batches = _Batches(paths, pre, FEATURE_BATCH, decode_workers())
    feats, rows = extract_features(model, batches, device=device, progress=progress, desc="features")
    features = torch.zeros(len(paths), feats.shape[1], dtype=torch.float16)
    readable = torch.zeros(len(paths), dtype=torch.bool)
    features[rows], readable[rows] = feats, True
    return features, readable


def linear_head_probs(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int,
                      weight_decay: float = HEAD_WEIGHT_DECAY,
                      iterations: int = HEAD_ITERATIONS) -> torch.Tensor:  # fmt: skip
    """Softmax probabilities ``[M, K]`` of ``test_x`` from a multinomial logistic regression
    fitted on ``(train_x [N, F], train_y [N])`` by full-batch L-BFGS.

    Features are standardised with the training part's mean and std (so one penalty fits
    every backbone's feature scale); the penalty is ``weight_decay * sum(W ** 2)`` added to
    the mean cross-entropy (the bias is not penalised).
    """
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, xt = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=iterations, history_size=20,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight + bias, train_y) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (xt @ weight + bias).softmax(1)


def _feature_probs(features: np.ndarray, labels: np.ndarray, splits, num_classes: int,
                   progress: bool) -> np.ndarray:  # fmt: skip
    x, y = torch.from_numpy(features).float(), torch.from_numpy(labels).long()
    probs = np.zeros((len(labels), num_classes))
    for train_rows, test_rows in _fold_bar(splits, progress):
        tr, te = torch.from_numpy(train_rows), torch.from_numpy(test_rows)
        probs[test_rows] = linear_head_probs(x[tr], y[tr], x[te], num_classes).double().numpy()
    return probs


def _fold_bar(splits: list, progress: bool) -> tqdm:
    return tqdm(splits, desc="folds", unit="fold", leave=False, disable=None if progress else True)


# ----------------------------------------------------------------------------- network path


def decode_all(paths: Sequence[str], pre: Preprocess, progress: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Every file as uint8 ``[N, C, H, W]`` at ``pre``'s size (zeros where unreadable) and the readable mask."""
    dataset = _Decoded(paths, pre)
    images = torch.zeros(len(paths), pre.channels, *pre.input_size, dtype=torch.uint8)
    readable = np.zeros(len(paths), dtype=bool)
    loader = DataLoader(dataset, batch_size=256, num_workers=decode_workers(), collate_fn=_keep_readable)
    for batch, rows in tqdm(loader, desc="decoding", unit="batch", leave=False, disable=None if progress else True):
        if len(rows):
            images[rows], readable[rows.numpy()] = batch, True
    return images, readable


def network_preprocess(name: str, images_grey: bool) -> Preprocess:
    """A model's default input size and channels; mean/std are filled from the data later."""
    from cnnkit.models import model_info

    info = model_info(name)
    channels = 1 if images_grey else 3
    return Preprocess(channels=channels, input_size=tuple(info.default_input_size), mean=(0.5,) * channels,
                      std=(0.5,) * channels)  # fmt: skip


def with_data_stats(pre: Preprocess, images: torch.Tensor) -> Preprocess:
    """``pre`` with the per-channel mean and std of ``images`` (uint8 ``[N, C, H, W]``)."""
    x = images[: 10_000].float().div_(255).transpose(0, 1).flatten(1)  # [C, pixels]
    return Preprocess(pre.channels, pre.input_size, tuple(x.mean(1).tolist()),
                      tuple(x.std(1).clamp_min(1e-3).tolist()), pre.resize, pre.interpolation)  # fmt: skip


def train_network(name: str, images: torch.Tensor, labels: torch.Tensor, pre: Preprocess, num_classes: int,
                  epochs: int, seed: int, device: torch.device) -> nn.Module:  # fmt: skip
    """A fresh ``name`` trained on uint8 ``images`` for ``epochs`` epochs (AdamW, one cycle to lr 1e-2).

    The batch is about 1/50 of the images (32 to 128), so that a few hundred digits still
    get enough steps in a few epochs (measured on MNIST subsets of 600 and 4,000 digits:
    batch 128 left the 600-digit folds at 78 % accuracy, batch 32 reached 90 %).
    """
    from cnnkit.data.tensor_data import Batching, TensorLoader
    from cnnkit.models import create_model

    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, in_chans=pre.channels, input_size=pre.input_size).to(device)
    if hasattr(model, "init_from_data"):  # airbench's whitened stem
        model.init_from_data(pre.normalize(images[:5000]).to(device))
    batch = int(np.clip(2 ** round(np.log2(max(len(labels), 1) / 50)), 32, 128))
    loader = TensorLoader(images, labels, pre, Batching(batch, shuffle=True, drop_last=len(labels) > batch, seed=seed))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=NETWORK_LR, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=NETWORK_LR, total_steps=max(1, epochs * len(loader)))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def network_probs(model: nn.Module, images: torch.Tensor, pre: Preprocess, device: torch.device) -> torch.Tensor:
    """Softmax probabilities ``[N, K]`` of uint8 ``images``, 512 at a time, scored by the one
    scoring path (:func:`cnnkit.scoring.score`: float32 on ``device``, no TTA)."""
    from cnnkit.scoring import ScoringSettings, score

    # score takes (inputs, labels) batches: the labels are unused here (zeros)
    batches = ((pre.normalize(part), torch.zeros(len(part), dtype=torch.long)) for part in images.split(512))
    return score(model, batches, ScoringSettings(device)).logits.softmax(1)


# ----------------------------------------------------------------------------- both


@dataclass(frozen=True)
class FoldOptions:
    """How the out-of-sample probabilities are made (``cnnkit check --labels`` options).

    Attributes:
        model: a ``timm:``/``tv:`` backbone (frozen features + linear head), one of cnnkit's
            architectures (trained per fold), or None: features of
            :data:`DEFAULT_BACKBONE` for photos, :data:`DEFAULT_NETWORK` for small grey images.
        folds: K of the K-fold cross-validation (fewer when a class is smaller; see :func:`plan_folds`).
        epochs: epochs per fold when a network trains from scratch.
        seed: seeds the folds and the networks.
        progress: progress bars on the feature pass and the folds.
        device: where the model runs (``auto``: CUDA when present).
    """

    model: str | None = None
    folds: int = 5
    epochs: int = DEFAULT_EPOCHS
    seed: int = 0
    progress: bool = False
    device: str = "auto"


@dataclass
class _Task:
    """One label check as its two routes see it: the images, the model chosen, where it runs."""

    paths: Sequence[str]
    labels: np.ndarray  # [N] given class of each image
    class_names: Sequence[str]
    name: str  # the model (options.model, or the default chosen from the images)
    device: torch.device
    options: FoldOptions
    notes: list[str]


def out_of_sample_probs(paths: Sequence[str], labels: np.ndarray, class_names: Sequence[str],
                        options: FoldOptions | None = None) -> Probs:  # fmt: skip
    """Class probabilities of every image from a model that did not train on it.

    Args:
        paths: image files.
        labels: ``[N]`` given class index of each.
        class_names: index -> class name.
        options: the model, folds, epochs, seed, progress bars and device (None: the defaults).

    Raises:
        UsageError: an unknown model, or bad ``folds``/``epochs``.
        DataError: a class too small for two folds, or no readable image.
    """
    from cnnkit.engine import resolve_device
    from cnnkit.models import model_info

    options = options or FoldOptions()
    if options.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {options.epochs}")
    k, notes = plan_folds(labels, class_names, options.folds)
    grey = is_small_grey(paths)
    name = options.model or (DEFAULT_NETWORK if grey else DEFAULT_BACKBONE)
    model_info(name)  # unknown names fail here, listing the valid ones
    task = _Task(paths, labels, class_names, name, resolve_device(options.device), options, notes)
    if ":" in name and name.partition(":")[0] in ("timm", "tv"):
        return _features_route(task, k)
    return _network_route(task, k, grey)


def _features_route(task: _Task, k: int) -> Probs:
    paths, labels, class_names, progress = task.paths, task.labels, task.class_names, task.options.progress
    features, readable, seconds, note = image_features(paths, task.name, device=task.device, progress=progress)
    task.notes.append(note)
    rows = _readable_rows(readable, paths)
    k = _refold(labels[rows], class_names, k, task.notes)
    probs = np.full((len(paths), len(class_names)), np.nan)
    splits = fold_splits(labels[rows], k, task.options.seed)
    probs[rows] = _feature_probs(features[rows], labels[rows], splits, len(class_names), progress)
    method = f"frozen {task.name} features + a linear head per fold, {k}-fold cross-validation"
    return Probs(probs, readable, features, method, k, task.notes, seconds)


def _network_route(task: _Task, k: int, grey: bool) -> Probs:
    paths, labels, class_names, opts = task.paths, task.labels, task.class_names, task.options
    pre = network_preprocess(task.name, grey)
    images, readable = decode_all(paths, pre, opts.progress)
    rows = _readable_rows(readable, paths)
    k = _refold(labels[rows], class_names, k, task.notes)
    pre = with_data_stats(pre, images[rows])
    probs = np.full((len(paths), len(class_names)), np.nan)
    x, y = images[rows], torch.from_numpy(labels[rows]).long()
    splits = fold_splits(labels[rows], k, opts.seed)
    held = np.zeros((len(rows), len(class_names)))
    for fold, (train_rows, test_rows) in enumerate(_fold_bar(splits, opts.progress)):
        net = train_network(task.name, x[train_rows], y[train_rows], pre, len(class_names), opts.epochs,
                            opts.seed + fold, task.device)  # fmt: skip
        held[test_rows] = network_probs(net, x[test_rows], pre, task.device).double().numpy()
    probs[rows] = held
    method = f"{task.name} trained from scratch per fold ({opts.epochs} epochs), {k}-fold cross-validation"
    return Probs(probs, readable, None, method, k, task.notes)


def _refold(labels: np.ndarray, class_names: Sequence[str], k: int, notes: list[str]) -> int:
    """The fold count once unreadable files are left out (a class may have shrunk below ``k``)."""
    fewer, more = plan_folds(labels, class_names, k)
    notes += more
    return fewer


def _readable_rows(readable: np.ndarray, paths: Sequence[str]) -> np.ndarray:
    rows = np.flatnonzero(readable)
    if not len(rows):
        raise DataError(f"none of the {len(paths):,} training images could be decoded; run `cnnkit check` "
                        "without --labels to see why")  # fmt: skip
    return rows



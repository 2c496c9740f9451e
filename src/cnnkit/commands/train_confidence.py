"""The last step of ``cnnkit train``: what the trained model knows of its own limits.

With the best weights loaded, two things are fitted on the validation split and recorded in
``best.pt`` (:mod:`cnnkit.confidence` defines them; :class:`~cnnkit.engine.run_state.RunSaver`
writes them):

* the **temperature** that calibrates every probability shown;
* the **open set**: a known-ness score (``train.open_set``: ``knn`` on the penultimate
  features of up to :data:`~cnnkit.confidence.BANK_LIMIT` training images, or ``msp`` /
  ``energy`` from the logits) and the threshold that keeps ``train.known_rate`` of the
  validation images, so ``predict --reject`` and serve can say "none of these".

The training images are read without augmentation (their cached backbone features when the
run has them). Nothing is fitted without a validation split or under torchrun (each rank
holds a shard); the run then keeps the raw softmax and no open set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnkit.confidence import (
    BANK_LIMIT,
    OpenSet,
    feature_bank,
    features_and_logits,
    fit_temperature,
    head_split,
    threshold_keeping,
)
from cnnkit.config import RunConfig
from cnnkit.data import build
from cnnkit.device import data_device
from cnnkit.engine import distributed
from cnnkit.engine.phases import cached_head_inputs
from cnnkit.models.base import ClassifierBase
from cnnkit.scoring import ScoringSettings, score, validation_loss


@dataclasses.dataclass
class Confidence:
    """What :func:`fit_confidence` fitted (``temperature`` 1.0 and no ``open_set``: nothing),
    and the validation images' known-ness scores it judged (for the report)."""

    temperature: float = 1.0
    open_set: OpenSet | None = None
    val_known: torch.Tensor | None = None


def fit_confidence(model: nn.Module, cfg: RunConfig, session: Any, say: Callable[[str], None]) -> Confidence:
    """Fit the temperature and the open set of ``model`` (its best weights, in eval mode) on the
    run's validation split; says what it fitted in two lines."""
    if session.loaders.val is None or distributed.current().world > 1:
        return Confidence()
    val = _split_pass(model, cfg, session, "val")
    if val is None or len(val[2]) < 2:
        return Confidence()
    features, logits, labels = val
    temperature = fit_temperature(logits, labels)
    say(f"calibration: temperature {temperature:.3f} fitted on val ({len(labels):,} images): val loss "
        f"{validation_loss(logits, labels):.4f} -> {validation_loss(logits / temperature, labels):.4f}; "
        f"probabilities shown are softmax(logits / {temperature:.3f})")  # fmt: skip
    open_set = _fit_open_set(model, cfg, session, val, temperature, say)
    if open_set is None:
        return Confidence(temperature)
    val_known = open_set.scores(logits, features, temperature)
    kept = float(open_set.looks_known(val_known).float().mean())
    what = f"knn (mean cosine similarity to the {open_set.k} nearest of {len(open_set.bank):,} training images)" \
        if open_set.bank is not None else open_set.score  # fmt: skip
    say(f"none of these: {what}; threshold {open_set.threshold:.4g} keeps {kept:.1%} of val "
        f"(asked {open_set.known_rate:.0%}); predict --reject writes 'unknown' below it")  # fmt: skip
    return Confidence(temperature, open_set, val_known)


def _fit_open_set(model: nn.Module, cfg: RunConfig, session: Any, val: tuple[torch.Tensor, ...],
                  temperature: float, say: Callable[[str], None]) -> OpenSet | None:  # fmt: skip
    kind = cfg.train.open_set
    if kind == "off":
        return None
    if kind in ("auto", "knn"):
        fits = head_split(model) is not None and _graph_matches(model)
        if kind == "knn" and not fits:
            say("note: --open-set knn needs a model whose head is an nn.Sequential ending in its logits layer "
                "(every built-in model); this one scores with msp instead")  # fmt: skip
        kind = "knn" if fits else "msp"
    features, logits, _ = val
    bank = None
    if kind == "knn":
        train = _split_pass(model, cfg, session, "train", limit=BANK_LIMIT)
        if train is None or not len(train[2]):
            kind = "msp"
        else:
            bank = feature_bank(train[0], train[2], BANK_LIMIT, seed=cfg.train.seed)
    draft = OpenSet(kind, 0.0, cfg.train.known_rate, bank=bank)
    threshold = threshold_keeping(draft.scores(logits, features, temperature), cfg.train.known_rate)
    return dataclasses.replace(draft, threshold=threshold, fitted_on=f"val: {len(logits):,} images")


def _graph_matches(model: nn.Module) -> bool:
    """Whether :class:`OpenSetModel`'s explicit ``head(forward_features(x))`` is the model's own
    forward: true of every :class:`ClassifierBase` that keeps its ``forward``."""
    return isinstance(model, ClassifierBase) and type(model).forward is ClassifierBase.forward


def _split_pass(model: nn.Module, cfg: RunConfig, session: Any, split: str,
                limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """Penultimate features, logits and labels of ``split`` without augmentation: through the
    head on its cached backbone features when the run has them, else over its images (the
    training split in the run's seeded random order, stopping after ``limit`` images)."""
    cached = cached_head_inputs(model, cfg, session.spec, session.device, split)
    if cached is not None:
        head, loader = cached
        return features_and_logits(head, loader, session.device, limit)
    if split == "val":
        loader = session.loaders.val
    else:
        data_cfg = dataclasses.replace(cfg.data, shuffle=True)
        spec = session.spec  # the run's own size and channels, as the session's loaders were built
        loaders, _ = build(data_cfg, seed=cfg.train.seed, device=data_device(session.device), split=spec.split,
                           training=False, default_image_size=spec.input_size[0],
                           needs_channels=spec.channels)  # fmt: skip
        loader = loaders.train
    if head_split(model) is None:  # logits only: the scores from the logits need no features
        scores = score(model, loader, ScoringSettings(session.device))
        return torch.zeros(scores.count, 0), scores.logits, scores.labels
    return features_and_logits(model, loader, session.device, limit)

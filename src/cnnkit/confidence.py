"""What a single-label model's outputs mean: calibrated probabilities and how known an image looks.

Shared by training (which fits both on the validation split after the last epoch) and
serving (which applies them), so they sit beside :mod:`cnnkit.scoring`, not in either.

* **Temperature scaling** (Guo et al. 2017): one number ``T`` fitted on the validation
  logits by minimising the negative log-likelihood of ``softmax(logits / T)``. It changes
  no prediction (the order of the logits stays), only how sure the probabilities say the
  model is. :func:`calibrated` is the one place a probability shown to a user comes from.
* **Known-ness scores**, higher = more like the training data, for "none of these":
  ``msp`` (the top calibrated probability), ``energy`` (``T * logsumexp(logits / T)``,
  Liu et al. 2020) and ``knn`` (the mean cosine similarity of an image's penultimate
  features to its ``k`` nearest training images, Sun et al. 2022). A threshold chosen by
  :func:`threshold_keeping` on held-out known images turns the score into a decision.
  ``bench/open_set.py`` measures them against each other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

TEMPERATURE_RANGE = (0.05, 20.0)  # beyond these a fitted T says the logits are broken, not mis-scaled
KNOWN_SCORES = ("msp", "energy", "knn")
DEFAULT_KNOWN_RATE = 0.95
DEFAULT_K = 10  # neighbours averaged by the knn score (bench/open_set.py)
BANK_LIMIT = 10_000  # training images whose features the knn score keeps (float16: 2 bytes per value)


def calibrated(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Probabilities ``softmax(logits / temperature)`` along the last dimension, float32."""
    return (logits.float() / float(temperature)).softmax(-1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the cross-entropy of ``logits / T`` against ``labels``.

    A one-dimensional convex problem in ``log T``: solved with L-BFGS from ``T = 1`` and
    clipped to :data:`TEMPERATURE_RANGE`. Returns 1.0 (no change) for fewer than 2 samples
    or logits that are not finite.
    """
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    if labels.numel() < 2 or not torch.isfinite(logits).all():
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    fitted = float(log_t.detach().exp())
    return min(max(fitted, low), high) if math.isfinite(fitted) else 1.0


def known_score(kind: str, logits: torch.Tensor, *, temperature: float = 1.0, features: torch.Tensor | None = None,
                bank: torch.Tensor | None = None, k: int = 10) -> torch.Tensor:  # fmt: skip
    """How much each image looks like the training data, ``[N]`` float32 (higher: more known).

    Args:
        kind: ``msp`` (the log of the top calibrated probability), ``energy`` or ``knn``
            (see the module doc).
        logits: ``[N, K]``.
        temperature: the fitted temperature (``msp`` and ``energy``).
        features: ``[N, D]`` penultimate features (``knn``).
        bank: ``[M, D]`` training features, L2-normalised (:func:`feature_bank`; ``knn``).
        k: neighbours averaged (``knn``); at most ``M``.
    """
    if kind == "msp":  # log space, float64: top probabilities within 6e-8 of 1 would all round to 1.0 and tie
        return (logits.double() / float(temperature)).log_softmax(-1).max(-1).values.float()
    if kind == "energy":
        return float(temperature) * torch.logsumexp(logits.float() / float(temperature), -1)
    if kind == "knn":
        if features is None or bank is None:
            raise ValueError("the knn score needs the images' features and the training feature bank")
        similarity = F.normalize(features.float(), dim=-1) @ bank.float().T  # cosine, [N, M]
        return similarity.topk(min(k, bank.shape[0]), dim=-1).values.mean(-1)
    raise ValueError(f"unknown known-ness score {kind!r}; choose from {', '.join(KNOWN_SCORES)}")


def feature_bank(features: torch.Tensor, labels: torch.Tensor, limit: int = 10_000, seed: int = 0) -> torch.Tensor:
    """At most ``limit`` training feature vectors, L2-normalised, float16, drawn evenly per class
    (seeded): what the ``knn`` score compares an image with."""
    features, labels = features.float().cpu(), labels.long().cpu()
    if len(features) > limit:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(features), generator=generator)
        classes = labels.unique()
        per_class = max(1, limit // len(classes))
        keep = torch.cat([order[labels[order] == c][:per_class] for c in classes])
        keep = keep[torch.randperm(len(keep), generator=generator)[:limit]]  # more classes than the limit
        features = features[keep.sort().values]
    return F.normalize(features, dim=-1).half()


def threshold_keeping(known_scores: torch.Tensor, known_rate: float = 0.95) -> float:
    """The score threshold that keeps ``known_rate`` of ``known_scores`` (images of the known
    classes the model did not train on): an image with a score at or above it looks known.

    Raises:
        ValueError: ``known_rate`` outside (0, 1] or no scores.
    """
    if not 0.0 < known_rate <= 1.0:
        raise ValueError(f"known_rate must be in (0, 1], got {known_rate}")
    if known_scores.numel() == 0:
        raise ValueError("no scores of known images to set a threshold on")
    # the largest threshold at which at least known_rate of the scores are >= it
    ordered = known_scores.float().sort(descending=True).values
    keep = math.ceil(known_rate * len(ordered) - 1e-9)
    return float(ordered[max(keep, 1) - 1])


def last_linear(model: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` that produces the logits: the last one in ``model.head`` (every
    :class:`~cnnkit.models.base.ClassifierBase`; also through wrappers with ``.module``),
    else the last one in the model.

    Raises:
        ValueError: the model has no ``nn.Linear``.
    """
    inner = model
    while not hasattr(inner, "head") and isinstance(getattr(inner, "module", None), nn.Module):
        inner = inner.module
    head = getattr(inner, "head", None)
    for where in (head, model):
        if isinstance(where, nn.Module):
            linears = [m for m in where.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    raise ValueError(f"{type(model).__name__} has no nn.Linear producing its logits")


@contextmanager
def penultimate_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the input of the logits layer (:func:`last_linear`) of every forward pass while
    inside: yields a list that receives one ``[B, D]`` float32 CPU tensor per call."""
    collected: list[torch.Tensor] = []

    def keep(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        collected.append(inputs[0].detach().flatten(1).float().cpu())

    handle = last_linear(model).register_forward_hook(keep)
    try:
        yield collected
    finally:
        handle.remove()


@dataclass
class OpenSet:
    """How a single-label model says "none of these": its known-ness score and threshold.

    Attributes:
        score: ``msp``, ``energy`` or ``knn`` (:func:`known_score`).
        threshold: an image whose score is below it looks unknown.
        known_rate: the share of held-out known images the threshold keeps (what it was set for).
        k: neighbours averaged (``knn``).
        bank: ``[M, D]`` L2-normalised float16 training features (``knn``), else None.
        fitted_on: where the threshold was set, in words (``val: 250 images``).
    """

    score: str
    threshold: float
    known_rate: float = DEFAULT_KNOWN_RATE
    k: int = DEFAULT_K
    bank: torch.Tensor | None = None
    fitted_on: str = ""

    def params(self) -> dict[str, Any]:
        """Everything but the bank, as plain JSON values (exported metadata carries these)."""
        return {"score": self.score, "threshold": self.threshold, "known_rate": self.known_rate, "k": self.k,
                "fitted_on": self.fitted_on}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain values and the bank tensor (what a checkpoint stores)."""
        return {**self.params(), "bank": self.bank}

    @classmethod
    def from_dict(cls, values: Any) -> OpenSet:
        """Read :meth:`to_dict` or :meth:`params` back.

        Raises:
            ValueError: a missing or wrong value (the caller names the file).
        """
        if not isinstance(values, dict) or values.get("score") not in KNOWN_SCORES:
            raise ValueError(f"its open-set score is not one of {', '.join(KNOWN_SCORES)}")
        threshold, rate, k = float(values["threshold"]), float(values.get("known_rate", DEFAULT_KNOWN_RATE)), \
            int(values.get("k", DEFAULT_K))  # fmt: skip
        bank = values.get("bank")
        if not math.isfinite(threshold) or not 0 < rate <= 1 or k < 1:
            raise ValueError("its open-set threshold, known rate or k is out of range")
        if values["score"] == "knn" and bank is not None and (not isinstance(bank, torch.Tensor) or bank.dim() != 2):
            raise ValueError("its open-set feature bank is not a [M, D] tensor")
        return cls(values["score"], threshold, rate, k, bank, str(values.get("fitted_on") or ""))

    def scores(self, logits: torch.Tensor, features: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
        """:func:`known_score` of a batch with these parameters."""
        return known_score(self.score, logits, temperature=temperature, features=features, bank=self.bank, k=self.k)

    def looks_known(self, scores: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool: the score reaches the threshold."""
        return scores >= self.threshold


def head_split(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``model.head`` cut at its logits layer: ``(to_features, to_logits)`` with
    ``to_logits(to_features(f))`` = ``model.head(f)``, ``to_features`` giving the penultimate
    features. None when the head is not an ``nn.Sequential`` holding that layer as a direct
    child (then only the logit-based scores apply)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Sequential):
        return None
    layers = list(head)
    last = last_linear(model)
    if last not in layers:
        return None
    cut = layers.index(last)
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])


class OpenSetModel(nn.Module):
    """A classifier and its known-ness score in one graph: ``forward(images)`` returns
    ``(logits [B, K], known [B])``. What the torch backend runs and ``cnnkit export`` writes
    (an ONNX file with the outputs ``logits`` and ``known``), so every runtime decides alike.

    ``model`` is a :class:`~cnnkit.models.base.ClassifierBase` (``forward_features`` and a
    sequential ``head``) for the ``knn`` score; any classifier for ``msp`` and ``energy``.
    """

    def __init__(self, model: nn.Module, open_set: OpenSet, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.kind, self.k, self.temperature = open_set.score, open_set.k, float(temperature)
        parts = head_split(model) if open_set.score == "knn" else None
        if open_set.score == "knn" and (parts is None or open_set.bank is None):
            raise ValueError("the knn score needs a model with a sequential head and a feature bank")
        self.parts = nn.ModuleList(parts) if parts is not None else None
        # float16 as stored (half the size of an exported file); the score casts it to float32
        self.register_buffer("bank", open_set.bank.half() if open_set.bank is not None else torch.zeros(0, 0).half())

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 (torch's signature)
        """Moves and casts reach the bank too, but it stays float16 (``.float()`` included)."""
        super()._apply(fn, recurse)
        self.bank = self.bank.half()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.parts is None:
            logits = self.model(images)
            return logits, known_score(self.kind, logits, temperature=self.temperature)
        to_features, to_logits = self.parts
        features = to_features(self.model.forward_features(images)).flatten(1)
        logits = to_logits(features)
        similarity = F.normalize(features.float(), dim=-1) @ self.bank.float().T
        return logits, similarity.topk(min(self.k, self.bank.shape[0]), dim=-1).values.mean(-1)


def deployed(model: nn.Module, open_set: OpenSet | None, temperature: float = 1.0) -> nn.Module:
    """What runs when a model is used: the model and its open set as one
    :class:`OpenSetModel`, or the model itself when it has none."""
    return OpenSetModel(model, open_set, temperature) if open_set is not None else model


@torch.no_grad()
def known_scores(graph: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> torch.Tensor:
    """The known-ness ``[N]`` (float32, CPU) of every image of an unaugmented loader through an
    :class:`OpenSetModel`, in eval mode and float32: what ``--reject`` would judge."""
    graph.eval()
    scores = [graph(inputs.to(device))[1].float().cpu() for inputs, _ in loader]
    return torch.cat(scores) if scores else torch.zeros(0)


def turned_away(scores: torch.Tensor, open_set: OpenSet) -> float:
    """The share of ``scores`` below the threshold (NaN for none)."""
    return float((~open_set.looks_known(scores)).float().mean()) if scores.numel() else math.nan


@torch.no_grad()
def features_and_logits(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                        limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Penultimate features ``[N, D]``, logits ``[N, K]`` and labels ``[N]`` of a plain
    (unaugmented) loader, float32 on the CPU, stopping after ``limit`` samples (None: all).
    The model runs in eval mode in float32 (the features the deployed graph computes)."""
    model.eval()
    features, logits, labels = [], [], []
    count = 0
    with penultimate_features(model) as collected:
        for inputs, targets in loader:
            logits.append(model(inputs.to(device)).float().cpu())
            features.append(collected.pop())
            labels.append(targets.reshape(-1).long().cpu())
            count += len(targets)
            if limit is not None and count >= limit:
                break
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(features), torch.cat(logits), torch.cat(labels)


__all__ = ["BANK_LIMIT", "KNOWN_SCORES", "OpenSet", "OpenSetModel", "calibrated", "deployed", "feature_bank",
           "features_and_logits", "fit_temperature", "head_split", "known_score", "known_scores", "last_linear",
           "penultimate_features", "threshold_keeping", "turned_away"]  # fmt: skip

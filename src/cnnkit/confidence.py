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
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

TEMPERATURE_RANGE = (0.05, 20.0)  # beyond these a fitted T says the logits are broken, not mis-scaled
KNOWN_SCORES = ("msp", "energy", "knn")


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
        kind: ``msp``, ``energy`` or ``knn`` (see the module doc).
        logits: ``[N, K]``.
        temperature: the fitted temperature (``msp`` and ``energy``).
        features: ``[N, D]`` penultimate features (``knn``).
        bank: ``[M, D]`` training features, L2-normalised (:func:`feature_bank`; ``knn``).
        k: neighbours averaged (``knn``); at most ``M``.
    """
    if kind == "msp":
        return calibrated(logits, temperature).max(-1).values
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


__all__ = ["KNOWN_SCORES", "calibrated", "feature_bank", "fit_temperature", "known_score", "last_linear",
           "penultimate_features", "threshold_keeping"]  # fmt: skip

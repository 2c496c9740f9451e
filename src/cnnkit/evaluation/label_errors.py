"""The report's "likely label errors" section: cleanlab on the run's own held-out predictions.

A run's predictions on its val or test split come from a model that never trained on
those images, so they are out-of-sample: exactly what confident learning needs, at no
extra cost. :func:`label_errors_section` ranks that split's likely label errors (given
label, suggested label, score) and picks the images to show, listing only those the
evidence supports on that split (its size, the model's accuracy there, how strongly the
model rules out each given label: :func:`cnnkit.data.audit.labels.select_suspects`) and
saying in one line why it lists fewer or none; on the train split it
declines (the model memorised those labels; ``cnnkit check DATA --labels`` cross-validates
instead). Without cleanlab the section is a note saying how to install it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from cnnkit.scoring import Scores

SHOWN = 16  # suspects in the section's table and image grid


def label_errors_section(scores: Scores, class_names: list[str], split: str,
                         paths: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """What the section shows: ``{"split", "note", "rows", "total", "positions", "evidence", "reason"}``.

    Args:
        scores: the split's logits and given labels, as the report scored them.
        class_names: index -> class name.
        split: the split scored (``val``, ``test`` or ``train``).
        paths: each scored image's file, in score order (None: shown by position).

    ``rows`` holds at most :data:`SHOWN` suspects (``{position, path, given, suggested,
    score}``), most likely wrong first; ``positions`` their positions in the scores;
    ``total`` all of them; ``evidence`` what they rest on (accuracy, counts, thresholds;
    None when not computed); ``reason`` one line when fewer than cleanlab proposes, or
    none, are listed ("" otherwise).
    """
    empty = {"split": split, "rows": [], "total": 0, "positions": torch.zeros(0, dtype=torch.long),
             "evidence": None, "reason": ""}  # fmt: skip
    if split == "train":
        return {**empty, "note": "not computed on the train split: the model trained on these labels, so its "
                "predictions there are not out-of-sample; `cnnkit check DATA --labels` cross-validates them"}
    from cnnkit.data.audit.labels import select_suspects
    from cnnkit.errors import CnnkitError

    probs = scores.logits.float().softmax(1).double()
    labels = scores.labels.long()
    if scores.count < 2 or len(labels.unique()) < 2:
        return {**empty, "note": f"not computed: the {split} split has too few images or classes"}
    try:
        ranked, evidence = select_suspects(labels.numpy(), (probs / probs.sum(1, keepdim=True)).numpy(),
                                           model="the model")  # fmt: skip
    except CnnkitError as missing:  # cleanlab is an optional extra: the report goes on without it
        return {**empty, "note": f"skipped: {missing}"}
    rows = [_row(position, score, probs, labels, class_names, paths) for position, score in ranked[:SHOWN]]
    note = (f"from the run's own predictions on the {split} split ({scores.count:,} images it did not train on, "
            f"so the predictions are out-of-sample), ranked by cleanlab (confident learning)")  # fmt: skip
    positions = torch.as_tensor([position for position, _ in ranked[:SHOWN]], dtype=torch.long)
    return {"split": split, "note": note, "rows": rows, "total": len(ranked), "positions": positions,
            "evidence": evidence.to_dict(), "reason": evidence.reason}  # fmt: skip


def _row(position: int, score: float, probs: torch.Tensor, labels: torch.Tensor, class_names: list[str],
         paths: list[str] | None) -> dict[str, Any]:  # fmt: skip
    given = int(labels[position])
    other = probs[position].clone()
    other[given] = -1.0  # the suggestion is the likeliest other class
    suggested = int(other.argmax())
    return {"position": position, "path": paths[position] if paths else f"#{position}",
            "given": class_names[given], "suggested": class_names[suggested], "score": score,
            "suggested_prob": float(probs[position, suggested])}  # fmt: skip


def loader_paths(loader: Iterable, count: int) -> list[str] | None:
    """The files of an unshuffled file loader in scoring order, when they map one to one (else None)."""
    from cnnkit.data.builder import FileLoader
    from cnnkit.data.cache import CachedFileLoader

    paths = None
    if isinstance(loader, CachedFileLoader):
        rows = getattr(loader, "_rows", None)
        paths = [loader.paths[int(i)] for i in rows] if loader.from_cache and rows is not None else loader.paths
    elif isinstance(loader, FileLoader) and not loader.sampler.shuffle:
        dataset = loader.loader.dataset
        paths = None if getattr(dataset, "bad_files", None) else getattr(dataset, "paths", None)
    return list(paths) if paths is not None and len(paths) == count else None

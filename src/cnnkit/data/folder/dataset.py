"""The torch side of file data: :class:`ImageFileDataset` and :func:`collate_skip_bad`.

This module owns decoding files on demand for a DataLoader: ``dataset[i]`` is a
transformed image and its label, or None for a file that cannot be decoded (warned about
once per file and collected in ``bad_files``), and the collate function that drops those
Nones so one bad photo never stops a run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from cnnkit.data.folder.decode import ImageLoadError, load_image
from cnnkit.data.folder.skipped import SkipLog, report_skip
from cnnkit.errors import unknown_name


class ImageFileDataset(torch.utils.data.Dataset):
    """Images decoded on demand from a list of files.

    ``dataset[i]`` is ``(transform(image), label)``, or None when the file cannot be
    decoded: once per file (per process) it is recorded in ``skip_log`` when the dataset
    has one (a training run's, see :func:`skipped_files_log`; workers get it with the
    dataset), else a warning names the file and reason; :func:`collate_skip_bad` drops the
    None. ``bad_files`` collects ``path -> reason`` for files found bad in this process
    (with ``num_workers=0``, all of them).

    Args:
        paths: image files.
        labels: class index of each file.
        transform: PIL image -> tensor (None: return the PIL image).
        mode: ``"L"`` or ``"RGB"``, see :func:`load_image`.
        skip_log: where this dataset's skipped files are recorded (None: warn instead).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        transform: Callable[[Image.Image], Any] | None = None,
        mode: str = "RGB",
        skip_log: SkipLog | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        if mode not in ("L", "RGB"):
            raise unknown_name("image mode", mode, ["L", "RGB"])
        self.paths = list(paths)
        self.labels = [int(label) for label in labels]
        self.transform = transform
        self.mode = mode
        self.bad_files: dict[str, str] = {}
        self.skip_log = skip_log

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path = self.paths[index]
        try:
            image = load_image(path, self.mode)
        except ImageLoadError as error:
            if path not in self.bad_files:
                self.bad_files[path] = error.reason
                report_skip(self.skip_log, path, error.reason, error.kind, stacklevel=2)
            return None
        sample = self.transform(image) if self.transform is not None else image
        return sample, self.labels[index]


def collate_skip_bad(
    batch: list[tuple[torch.Tensor, int] | None],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Collate ``(image, label)`` samples, dropping the None left by undecodable files.

    Returns:
        ``(images [B, ...], labels int64 [B])`` with B the number of good samples, or None
        when every sample of the batch was bad (the training loop skips it).
    """
    good = [sample for sample in batch if sample is not None]
    if not good:
        return None
    images = torch.stack([image for image, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return images, labels

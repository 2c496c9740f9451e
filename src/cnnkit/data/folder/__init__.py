"""Image classification data from files on disk: class-per-folder trees and CSV lists.

Scanning (:func:`scan_folder`, :func:`read_csv`) only lists files and labels; nothing is
decoded until :class:`ImageFileDataset` asks :func:`load_image` for one image. A file that
cannot be decoded is skipped (a ``RuntimeWarning``, or an entry in the dataset's own
:class:`~cnnkit.data.folder.skipped.SkipLog` in a training run, which counts and lists it)
and dropped by :func:`collate_skip_bad`, so one bad photo never stops a run.

Supported layouts::

    root/<class>/*.jpg                        one tree, split here by fraction
    root/train/<class>/*.jpg                  split folders; val aliases: valid, validation
    root/val/<class>/*.jpg   root/test/<class>/*.jpg
    labels.csv with columns path,label[,split]
    labels.csv with columns path,labels[,split] or path,<class>,<class>...   (multi-label)

Layout (import every name from ``cnnkit.data.folder`` itself):
:mod:`~cnnkit.data.folder.listing` (:class:`FileList`, :class:`FileDataset`, splitting,
:func:`fingerprint`), :mod:`~cnnkit.data.folder.tree` (:func:`scan_folder`, :func:`walk_files`),
:mod:`~cnnkit.data.folder.csv_list` (:func:`read_csv`),
:mod:`~cnnkit.data.folder.multilabel` (:func:`read_multilabel_csv`, :func:`is_multilabel_csv`),
:mod:`~cnnkit.data.folder.decode` (:func:`load_image`, :func:`to_mode`, :class:`ImageLoadError`),
:mod:`~cnnkit.data.folder.skipped` (:class:`SkipLog`, :func:`skipped_files_log`) and
:mod:`~cnnkit.data.folder.dataset` (:class:`ImageFileDataset`, :func:`collate_skip_bad`).
"""

from __future__ import annotations

from cnnkit.data.folder.csv_list import LABEL_COLUMNS, PATH_COLUMNS, read_csv
from cnnkit.data.folder.dataset import ImageFileDataset, collate_skip_bad
from cnnkit.data.folder.decode import (
    LOAD_ERROR_KINDS,
    ImageLoadError,
    decode_error,
    load_image,
    refuse_bomb,
    to_mode,
)
from cnnkit.data.folder.decode import (
    _strict_truncation as _strict_truncation,  # cnnkit.data.audit uses it
)
from cnnkit.data.folder.listing import (
    IMAGE_EXTENSIONS,
    SPLIT_ALIASES,
    SPLITS,
    FileDataset,
    FileList,
    fingerprint,
    stratified_split,
)
from cnnkit.data.folder.multilabel import (
    MultiLabelDataset,
    MultiLabelList,
    is_multilabel_csv,
    multilabel_sample_weights,
    multilabel_split,
    read_multilabel_csv,
)
from cnnkit.data.folder.skipped import SkipLog, read_skipped_files, skipped_files_log
from cnnkit.data.folder.tree import scan_folder, walk_files

__all__ = [
    "IMAGE_EXTENSIONS",
    "LABEL_COLUMNS",
    "LOAD_ERROR_KINDS",
    "PATH_COLUMNS",
    "SPLITS",
    "SPLIT_ALIASES",
    "FileDataset",
    "FileList",
    "ImageFileDataset",
    "ImageLoadError",
    "MultiLabelDataset",
    "MultiLabelList",
    "SkipLog",
    "collate_skip_bad",
    "decode_error",
    "fingerprint",
    "is_multilabel_csv",
    "load_image",
    "multilabel_sample_weights",
    "multilabel_split",
    "read_csv",
    "read_multilabel_csv",
    "read_skipped_files",
    "refuse_bomb",
    "scan_folder",
    "skipped_files_log",
    "stratified_split",
    "to_mode",
    "walk_files",
]

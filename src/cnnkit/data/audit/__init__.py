"""The dataset doctor: what is wrong with a folder or CSV of images before a model sees it.

:func:`audit` lists the files as training would (:func:`~cnnkit.data.folder.scan_folder`,
:func:`~cnnkit.data.folder.read_csv`, hidden entries ignored), examines each one in
worker processes and returns an :class:`AuditReport`:

* unreadable files (zero bytes, not an image, truncated, corrupt, decompression bomb),
  each with its reason;
* image modes, formats and sizes, and tiny images;
* exact duplicates (same bytes) and near duplicates (perceptual hash, ``imagehash.phash``),
  sorted into copies within a class, copies under different labels and copies shared by
  train/val/test (leakage);
* images per class and split, the imbalance ratio and empty classes.

A full check decodes every image (JPEGs at a reduced scale, which still reads all of the
compressed data) and hashes its look. A quick check (``quick=True``, run by ``cnnkit
train`` before it starts) reads headers, verifies what PIL can verify without decoding
(PNG checksums) and hashes the bytes: a few seconds for 60,000 files, but a truncated JPEG
is only found when training loads it (and skips it).

Layout (import every name from ``cnnkit.data.audit`` itself):
:mod:`~cnnkit.data.audit.examine` (one file, and a pool of workers for many),
:mod:`~cnnkit.data.audit.scan` (:func:`audit`: listing, counting, judging),
:mod:`~cnnkit.data.audit.duplicates` (exact and near duplicates, leakage),
:mod:`~cnnkit.data.audit.report` (:class:`AuditReport`, :func:`write_json`) and
:mod:`~cnnkit.data.audit.text` (:func:`summary_line`, :func:`format_report`).
"""

from __future__ import annotations

from cnnkit.data.audit.duplicates import DEFAULT_NEAR_DISTANCE, NEAR_SEARCH_LIMIT, close_pairs
from cnnkit.data.audit.duplicates import (
    _popcount as _popcount,  # tests/data/test_audit.py imports it from here
)
from cnnkit.data.audit.examine import FileFacts, examine_file, examine_files
from cnnkit.data.audit.report import DEFAULT_MIN_SIDE, AuditReport, write_json
from cnnkit.data.audit.scan import IMBALANCE_WARNING, SIZE_BINS, TINY_FRACTION, audit
from cnnkit.data.audit.text import SHOWN, format_report, summary_line

__all__ = [
    "DEFAULT_MIN_SIDE",
    "DEFAULT_NEAR_DISTANCE",
    "IMBALANCE_WARNING",
    "NEAR_SEARCH_LIMIT",
    "SHOWN",
    "SIZE_BINS",
    "TINY_FRACTION",
    "AuditReport",
    "FileFacts",
    "audit",
    "close_pairs",
    "examine_file",
    "examine_files",
    "format_report",
    "summary_line",
    "write_json",
]

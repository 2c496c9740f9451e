"""Exact and near duplicates: byte-digest groups, perceptual-hash groups, close hash pairs.

This module owns the duplicate search of a check: ``_duplicate_groups`` (readable files
sharing a byte digest, or given sets of files, each group described with its classes and
splits, so copies under two labels and copies shared by train/val/test show),
``_near_groups`` (files whose perceptual hashes are within a few bits, joined into
connected groups) and :func:`close_pairs`, the pigeonhole search for close 64-bit hashes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from cnnkit.data.audit.examine import _Row
from cnnkit.data.audit.report import AuditReport

# Bits of 64. Re-encoded, resized or greyscale copies of a photo differ by 0-2 bits; at 4,
# unrelated 32x32 CIFAR images with plain sky behind them already match.
DEFAULT_NEAR_DISTANCE = 2
NEAR_SEARCH_LIMIT = 200_000  # distinct images; the pairwise search grows with their square


def _duplicate_groups(
    rows: Sequence[_Row],
    kind: str,
    sets: Iterable[Iterable[int]] | None = None,
    distance: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Groups of duplicate files, each described for the report.

    With ``sets`` None, groups are the readable files sharing a byte digest (``exact``);
    otherwise each set of row indices is a group (``near``, with ``distance[i]`` its
    largest hash distance). A group is ``conflicting`` when its files carry more than one
    class, and leaks when it spans more than one split.

    Returns:
        ``{kind, distance, classes, splits, conflicting, files: [{path, split, class}]}``
        per group, largest first.
    """
    if sets is None:
        by_digest: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            if row.ok:
                by_digest.setdefault(row.facts.digest, []).append(index)
        sets = [members for members in by_digest.values() if len(members) > 1]
    groups = []
    for number, members in enumerate(sets):
        files = [rows[i] for i in sorted(members)]
        classes = sorted({row.label for row in files})
        splits = [s for s in ("train", "val", "test") if any(row.split == s for row in files)]
        groups.append(
            {
                "kind": kind,
                "distance": (distance or {}).get(number, 0),
                "classes": classes,
                "splits": splits,
                "conflicting": len(classes) > 1,
                "files": [row.where() for row in files],
            }
        )
    return sorted(groups, key=lambda g: (-len(g["files"]), g["files"][0]["path"]))


def _near_groups(report: AuditReport, rows: list[_Row], max_distance: int) -> list[dict[str, Any]]:
    """Groups of readable files with different bytes whose perceptual hashes are close.

    Files with the same hash form one node (blank images collapse into one); nodes within
    ``max_distance`` bits are linked, and each connected set holding at least two
    different files (digests) is a group.
    """
    usable = [i for i, row in enumerate(rows) if row.ok and row.facts.phash]
    nodes: dict[str, list[int]] = {}
    for index in usable:
        nodes.setdefault(rows[index].facts.phash, []).append(index)
    if len(nodes) > NEAR_SEARCH_LIMIT:
        report.notes.append(
            f"near duplicates not searched: {len(nodes):,} distinct images is over "
            f"{NEAR_SEARCH_LIMIT:,}; exact duplicates were"
        )
        return []
    keys = list(nodes)
    hashes = np.array([int(key, 16) for key in keys], dtype=np.uint64)
    parent = list(range(len(keys)))
    widest: dict[int, int] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, bits in close_pairs(hashes, max_distance):
        a, b = root(i), root(j)
        if a != b:
            parent[b] = a
            widest[a] = max(widest.get(a, 0), widest.pop(b, 0), bits)
        else:
            widest[a] = max(widest.get(a, 0), bits)
    components: dict[int, list[int]] = {}
    for node in range(len(keys)):
        components.setdefault(root(node), []).extend(nodes[keys[node]])
    sets, distance = [], {}
    for top, members in components.items():
        if len({rows[i].facts.digest for i in members}) > 1:  # copies of one file are `exact`
            distance[len(sets)] = widest.get(top, 0)
            sets.append(members)
    return _duplicate_groups(rows, "near", sets, distance)


def close_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """``(i, j, bits)``, ``i < j``, for each pair of 64-bit hashes at most ``max_distance`` apart.

    Pigeonhole search: cut the 64 bits into ``max_distance + 1`` chunks; two hashes that
    differ in at most ``max_distance`` bits agree exactly on at least one chunk, so only
    hashes sharing a chunk value are compared. Comparing all pairs took 30 s for CIFAR-10's
    60,000 images; this takes well under one.

    Args:
        hashes: uint64 ``[n]``.
        max_distance: 0 to 63 bits.

    Returns:
        Each pair once, sorted.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    edges = np.linspace(0, 64, max_distance + 2).astype(int)  # chunk boundaries in bits
    found: dict[tuple[int, int], int] = {}
    for low, high in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        keys = (hashes >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], len(ordered)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            if end - start > 1:
                found.update(_pairs_within(hashes, order[start:end], max_distance))
    return sorted((i, j, bits) for (i, j), bits in found.items())


def _pairs_within(
    hashes: np.ndarray, members: np.ndarray, max_distance: int, block: int = 256
) -> dict[tuple[int, int], int]:
    """All close pairs among ``members`` (indices into ``hashes``), a block of rows at a time."""
    subset = hashes[members]
    pairs: dict[tuple[int, int], int] = {}
    for start in range(0, len(subset), block):
        bits = _popcount(subset[start : start + block, None] ^ subset[None, :])  # [b, k]
        rows, cols = np.nonzero(bits <= max_distance)
        keep = start + rows < cols
        firsts, seconds = members[start + rows[keep]].tolist(), members[cols[keep]].tolist()
        for a, b, d in zip(firsts, seconds, bits[rows[keep], cols[keep]].tolist(), strict=True):
            pairs[(min(a, b), max(a, b))] = d
    return pairs


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # NumPy >= 2.0
        return np.bitwise_count(values).astype(np.int64)
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1, dtype=np.int64)

"""Every ``CNNKIT_*`` environment variable, read here and nowhere else.

One reading per variable, so that two modules can never disagree on what a value means
(``CNNKIT_OFFLINE=true`` once blocked dataset downloads but not weight downloads because
two modules parsed it differently).

=====================  ==========================================================
variable               meaning
=====================  ==========================================================
``CNNKIT_OFFLINE``     ``1``/``true``/``yes``/``on``: download nothing (datasets,
                       weights, online trackers); use what is on disk
``CNNKIT_CACHE_DIR``   cnnkit's cache folder (default ``$XDG_CACHE_HOME/cnnkit``,
                       i.e. ``~/.cache/cnnkit``): decoded images, features, ONNX builds
``CNNKIT_DATA_DIR``    where named datasets are looked for and downloaded
                       (default ``<cache>/datasets``)
``CNNKIT_TRUST_CODE``  user code files or modules that checkpoints may import,
                       separated by the path separator (``:`` on Linux)
=====================  ==========================================================
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE = "CNNKIT_OFFLINE"
CACHE_DIR = "CNNKIT_CACHE_DIR"
DATA_DIR = "CNNKIT_DATA_DIR"
TRUST_CODE = "CNNKIT_TRUST_CODE"

_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """Whether ``CNNKIT_OFFLINE`` forbids every download (case-insensitive 1/true/yes/on)."""
    return os.environ.get(OFFLINE, "").strip().lower() in _TRUE


def offline_setting() -> str:
    """``CNNKIT_OFFLINE=<value>`` as the user set it when :func:`offline` holds, else ''
    (for messages that say why nothing was downloaded)."""
    return f"{OFFLINE}={os.environ[OFFLINE].strip()}" if offline() else ""


def cache_dir() -> Path:
    """cnnkit's cache folder: ``$CNNKIT_CACHE_DIR`` or ``$XDG_CACHE_HOME/cnnkit`` (~/.cache)."""
    if os.environ.get(CACHE_DIR):
        return Path(os.environ[CACHE_DIR])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnnkit"


def data_dir() -> Path:
    """Where named datasets are looked for and downloaded: ``$CNNKIT_DATA_DIR`` or the cache."""
    return Path(os.environ.get(DATA_DIR) or cache_dir() / "datasets")


def trusted_code() -> tuple[str, ...]:
    """The non-empty entries of ``CNNKIT_TRUST_CODE`` (split on the path separator)."""
    return tuple(part for part in os.environ.get(TRUST_CODE, "").split(os.pathsep) if part.strip())

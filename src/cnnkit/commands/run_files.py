"""The files a training run writes before and after it trains.

Before: the folder itself, ``config.yaml``, ``classes.json``, ``split.json``, ``env.json``
and the quick data check. After: ``skipped_files.json`` (every unreadable image, once).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cnnkit._version import __version__
from cnnkit.commands.setup import run_label
from cnnkit.config import RunConfig
from cnnkit.data import DataSpec
from cnnkit.data.audit import AuditReport, audit, examine_file, summary_line
from cnnkit.data.audit import write_json as write_audit_json
from cnnkit.data.datasets import list_datasets
from cnnkit.data.folder import read_skipped_files
from cnnkit.engine import distributed, resolve_device
from cnnkit.engine.device import amp_dtype
from cnnkit.errors import DataError
from cnnkit.log import say
from cnnkit.runfolder import RunFolder, shown


def new_run_folder(cfg: RunConfig, ranks: distributed.DistEnv, kind: str = "") -> RunFolder:
    """Claim the run folder (rank 0): ``--name``, else recipe/model (+ ``-kind``) + time;
    ``NAME-2``, ``NAME-3``... when taken.

    A taken ``--name`` is said in one line; with ``--exist-ok`` the folder is reused (the
    caller's :meth:`RunFolder.lock` refuses it while another process writes there). Every
    rank gets the same path; only rank 0's :class:`RunFolder` writes.
    """
    path = None
    if ranks.is_main:
        name = cfg.name or f"{run_label(cfg)}{'-' + kind if kind else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
        claimed = RunFolder.create(cfg.output_dir, name, exist_ok=cfg.exist_ok and cfg.name is not None)
        if cfg.name is not None and claimed.name != name:
            say(f"run folder {shown(claimed.path.parent / name)} exists; writing to {claimed.shown}")
        path = str(claimed.path)
    return RunFolder(distributed.broadcast(path), writer=ranks.is_main)


def refuse_folder_in_use(cfg: RunConfig) -> None:
    """With ``--exist-ok``, stop at once when another process writes into ``--name``'s folder
    (before the data loads; :meth:`RunFolder.lock` decides for good once the folder is claimed).

    Raises:
        CnnkitError: the folder is in use, naming the process.
    """
    if cfg.exist_ok and cfg.name is not None:
        RunFolder(Path(cfg.output_dir) / cfg.name).refuse_if_in_use()


def describe_run(folder: RunFolder, cfg: RunConfig, spec: DataSpec) -> None:
    """Write what describes a new run before it trains: config, classes, split, environment."""
    folder.write_config(cfg)
    folder.write_json("classes.json", list(spec.class_names))
    folder.write_json("split.json", {"fingerprint": spec.fingerprint, "sizes": spec.sizes, **spec.split})
    folder.write_json("env.json", environment(cfg, spec))


def environment(cfg: RunConfig, spec: DataSpec) -> dict[str, Any]:
    """``env.json``: versions, device, precision, seed, data fingerprint, command and start time."""
    device = resolve_device(cfg.train.device)
    precision = amp_dtype(cfg.train.amp, device, training=True, deterministic=cfg.train.deterministic)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "cnnkit": __version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": device.type,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "torch_threads": cfg.train.threads or torch.get_num_threads(),
        "seed": cfg.train.seed,
        "deterministic": cfg.train.deterministic,
        "train_precision": str(precision or "float32"),
        "data_fingerprint": spec.fingerprint,
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # not installed: recorded as unknown
        return None


def quick_data_check(cfg: RunConfig, progress: bool) -> AuditReport | None:
    """The quick dataset check of a folder or CSV dataset (None for registered names).

    Raises:
        DataError: the data is unusable (no readable image, fewer than two classes, a
            class without readable training images), or cannot be listed.
    """
    path = Path(cfg.data.name).expanduser()
    if cfg.data.name in list_datasets() or not (path.is_dir() or path.suffix.lower() == ".csv"):
        return None  # registered datasets are checked by their loaders; a bad path fails in build()
    report = audit(path, quick=True, progress=progress, strict=True)  # training's own listing errors
    if not report.usable:
        raise DataError(f"{cfg.data.name} is not usable for training: {'; '.join(report.problems)}. "
                        f"`cnnkit check {cfg.data.name}` lists every file and problem")  # fmt: skip
    return report


def log_data_check(folder: RunFolder, report: AuditReport | None) -> None:
    """One summary line and the warnings in the log; the whole report in ``data_check.json``."""
    if report is None:
        return
    write_audit_json(report, folder.file("data_check.json"))
    say(f"{summary_line(report)}; report in data_check.json (`cnnkit check {report.source}` decodes every image)")
    for warning in report.warnings:
        say(f"warning: {warning}")


def list_skipped_files(folder: RunFolder, skip_log: Path, report: AuditReport | None, loaders: Any) -> None:
    """Write ``skipped_files.json``: the files the check found unreadable and those training
    skipped (each once, with its reason, kind and what found it); nothing when none.

    Training's skips come from the log every loading process appended to, and from the
    loaders themselves: a decode cache built by an earlier run knows its bad files without
    loading them again (those are examined once more here for their kind).
    """
    found: dict[str, dict[str, Any]] = {}
    for entry in report.unreadable if report is not None else []:
        path = os.path.normpath(os.path.join(report.root, entry["path"]))
        found[path] = {"path": path, "reason": entry["reason"], "kind": entry["problem"], "found_by": ["check"]}
    skipped = read_skipped_files(skip_log)
    for loader in loaders:
        for path, reason in (getattr(loader, "bad_files", None) or {}).items():
            if path not in skipped:
                facts = examine_file(path)
                skipped[path] = {"reason": facts.reason or reason, "kind": facts.problem}
    for path, entry in skipped.items():
        found.setdefault(path, {"path": path, **entry, "found_by": []})["found_by"].append("training")
    skip_log.unlink(missing_ok=True)
    if not found:
        return
    folder.write_json("skipped_files.json", sorted(found.values(), key=lambda e: e["path"]))
    by_training = sum("training" in entry["found_by"] for entry in found.values())
    say(f"skipped files: {len(found)} unreadable ({by_training} met while training); listed in skipped_files.json")

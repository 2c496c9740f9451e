"""``cnnkit train --resume RUN``: continue a run from its ``last.pt`` on the same split."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from cnnkit.checkpoint import Checkpoint
from cnnkit.commands.setup import bind_checkpoint_code
from cnnkit.config import RunConfig, apply_overrides
from cnnkit.data import DataSpec
from cnnkit.engine import resolve_device
from cnnkit.engine.phases import total_epochs
from cnnkit.errors import CnnkitError, DataError, UsageError
from cnnkit.inference.loading import stored_config
from cnnkit.runfolder import RunFolder

# What a --resume of a run that another process writes into is told to do.
IN_USE_ADVICE = "wait for it to end (or stop it), then resume"
# Config keys a resumed run may change: how long and where it trains, not what it learns.
RESUME_OVERRIDES = ("train.epochs", "train.device", "train.threads", "train.checkpoint_every_steps",
                    "data.data_dir", "data.workers", "report", "tensorboard", "loggers")  # fmt: skip


def resume_state(run: str | Path, overrides: dict[str, Any],
                 trust_code: Any = None) -> tuple[RunConfig, RunFolder, Checkpoint]:  # fmt: skip
    """The config, folder and ``last.pt`` of a run to resume.

    Raises:
        UsageError: an override that would change what the run learns, a run already
            finished, or fewer epochs than it has done.
        CnnkitError: no such run folder, a file or a folder that is not a run folder, no
            ``last.pt`` in it, or another process writes into it (:meth:`RunFolder.lock`
            holds it for good once the resumed run starts).
    """
    if Path(run).is_dir():  # still training: said before its files are judged (config.yaml may not exist yet)
        RunFolder(run).refuse_if_in_use(IN_USE_ADVICE)
    folder = _run_folder(Path(run))
    if not folder.last.is_file():
        raise CnnkitError(f"--resume: {run} has no checkpoints/last.pt (the run stopped before its first "
                          "checkpoint); start it again without --resume")  # fmt: skip
    ckpt = Checkpoint.load(folder.last)
    if not ckpt.resumable:
        raise CnnkitError(f"--resume: {folder.last} holds no training state (an older cnnkit, or weights only); "
                          "start the run again")  # fmt: skip
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        raise UsageError(f"--resume continues a run with its own config; {', '.join(refused)} cannot change "
                         f"(allowed: {', '.join(RESUME_OVERRIDES)}); start a new run to change them")  # fmt: skip
    bind_checkpoint_code(ckpt, trust_code)  # the run's own code, recorded in last.pt: only if trusted
    cfg = stored_config(ckpt)
    cfg.name, cfg.output_dir = folder.name, str(folder.path.parent)
    apply_overrides(cfg, overrides)
    _check_length(cfg, ckpt, overrides, folder)
    return cfg, folder, ckpt


def _run_folder(given: Path) -> RunFolder:
    """``given`` as a run folder (one ``cnnkit train`` made: :meth:`RunFolder.open` finds its config).

    Raises:
        CnnkitError: nothing there; a file (a checkpoint's run folder is two levels up); a
            folder that is not a run folder (a dataset, say).
    """
    if given.is_file():
        hint = (f"; resume its run folder: --resume {given.parent.parent}"
                if given.suffix == ".pt" and given.parent.name == "checkpoints" else "")  # fmt: skip
        raise CnnkitError(f"--resume: {given} is a file, not a cnnkit run folder (a folder made by `cnnkit train`, "
                          f"with config.yaml and checkpoints/){hint}")  # fmt: skip
    try:
        return RunFolder.open(given)
    except CnnkitError as exc:
        hint = "; give the folder `cnnkit train` printed as `run folder:`" if given.is_dir() else ""
        raise CnnkitError(f"--resume: {exc}{hint}") from None


def _check_length(cfg: RunConfig, ckpt: Checkpoint, overrides: dict[str, Any], folder: RunFolder) -> None:
    total, done = total_epochs(cfg.train), ckpt.training.epoch
    before = ckpt.config.train.epochs
    if "train.epochs" in overrides and total != before and cfg.train.scheduler == "onecycle":
        raise UsageError("--epochs cannot change when resuming a onecycle schedule (its length is fixed); "
                         f"start a new run, e.g. with --weights {folder.path}")  # fmt: skip
    if total < done or (total == done and not ckpt.training.in_epoch):
        raise UsageError(f"{folder.path} has already trained {done} of {total} epochs; "
                         f"pass --epochs N (more than {done}) to train it longer")  # fmt: skip


def saved_split(folder: RunFolder) -> dict[str, Any]:
    """The run's own split (``split.json``), to rebuild exactly the same loaders."""
    split = folder.read_json("split.json")
    if split is None:
        raise CnnkitError(
            f"--resume: {folder.file('split.json')} is missing; the run cannot continue on the same split"
        )
    return {key: value for key, value in split.items() if key not in ("fingerprint", "sizes")}


def check_same_data(ckpt: Checkpoint, spec: DataSpec, folder: RunFolder) -> None:
    before = ckpt.data_fingerprint
    if before and before != spec.fingerprint:
        raise DataError(f"the data of {folder.path} changed since the run started (fingerprint {before} -> "
                        f"{spec.fingerprint}); resuming would train on other images. Restore the data or "
                        "start a new run")  # fmt: skip


def position(ckpt: Checkpoint, steps_per_epoch: int) -> str:
    """`` and B/N steps of epoch E`` when the checkpoint was written inside an epoch."""
    in_epoch = ckpt.training.in_epoch
    if not in_epoch:
        return ""
    return f" and {in_epoch.batches}/{steps_per_epoch} steps of epoch {ckpt.training.epoch + 1}"


def record_resume(folder: RunFolder, cfg: RunConfig) -> None:
    """Append this resumption (time, command, device) to ``env.json``; save the new config."""
    env = folder.read_json("env.json", {})
    env.setdefault("resumed", []).append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
                                          "device": resolve_device(cfg.train.device).type})  # fmt: skip
    folder.write_json("env.json", env)
    folder.write_config(cfg)  # with the new --epochs etc. (`cnnkit runs` reads it)

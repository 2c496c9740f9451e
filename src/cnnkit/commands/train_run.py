"""What ``cnnkit train`` builds around the loop, in the order a run needs it.

1. **Checks** (:func:`check_run_config`): every value, the model name, the transfer options,
   the first batch's memory, the trackers; nothing is written before they pass.
2. **The session** (:func:`prepare`): device, starting weights, loaders and
   :class:`~cnnkit.data.DataSpec`, the model. ``cnnkit lr-find`` builds its session here too,
   so its sweep sees exactly the data and model that training will.
3. **The run folder** (:func:`new_run_folder`, :func:`describe_run`): claimed only once the
   checks passed; ``config.yaml``, ``classes.json``, ``split.json``, ``env.json``, the quick
   data check; after training, ``skipped_files.json``. Every name comes from
   :class:`~cnnkit.runfolder.RunFolder`.
4. **The checkpoint's description** (:func:`describe_checkpoint`): the typed
   :class:`~cnnkit.checkpoint.Checkpoint` every checkpoint of the run starts from.
5. **Resuming** (:func:`resume_state`): the config, folder and ``last.pt`` of a run to continue.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import usercode
from cnnkit._version import __version__
from cnnkit.checkpoint import Checkpoint, ModelDesc
from cnnkit.config import RunConfig, apply_overrides, validate
from cnnkit.data import DataSpec, build
from cnnkit.data.audit import AuditReport, audit, examine_file, summary_line
from cnnkit.data.audit import write_json as write_audit_json
from cnnkit.data.builder import shard_loaders
from cnnkit.data.datasets import list_datasets
from cnnkit.data.folder import read_skipped_files
from cnnkit.data.tensor_data import Part, sample_images
from cnnkit.device import amp_dtype, data_device
from cnnkit.engine import distributed, resolve_device
from cnnkit.engine.memory import available_bytes, estimate, human
from cnnkit.engine.phases import total_epochs
from cnnkit.errors import CnnkitError, DataError, UsageError
from cnnkit.inference.loading import stored_config
from cnnkit.log import say
from cnnkit.models import (
    Weights,
    create_model,
    find_weights,
    list_sources,
    load_model_code,
    load_weights,
    model_code,
    model_info,
    require_model_code,
)
from cnnkit.runfolder import RunFolder, shown

# ----------------------------------------------------------------------------- checks and the session


# Training images given to a model's init_from_data (airbench whitens its stem on 5,000).
INIT_IMAGES = 5_000


@dataclass
class Session:
    """A model ready to train on its data.

    Attributes:
        device: where training runs.
        loaders: train/val/test loaders (this process's shard under torchrun).
        spec: classes, preprocessing, split and sizes of the data.
        model: built, seeded and initialised (starting weights loaded, stem set from data).
        weights: where the starting weights came from (None: random init or a resumed run).
        notes: lines for the log (preprocessing adopted, weights loaded, stem initialised).
    """

    device: torch.device
    loaders: Any
    spec: DataSpec
    model: nn.Module
    weights: Weights | None
    notes: list[str] = field(default_factory=list)


def prepare(cfg: RunConfig, *, resume: Checkpoint | None = None, split: dict[str, Any] | None = None,
            ranks: distributed.DistEnv | None = None) -> Session:  # fmt: skip
    """Build device, loaders and model for ``cfg`` (``resume``: the ``last.pt`` to continue).

    ``split``: the saved split of a resumed run. Under torchrun each rank gets its shard
    of every epoch and ``cfg.data.batch_size`` is the global batch.
    """
    ranks = ranks or distributed.current()
    device = resolve_device(cfg.train.device)
    weights = start_weights(cfg) if resume is None else None  # a resumed run's weights are in last.pt
    notes = adopt_preprocess(cfg, weights)
    data_cfg = dataclasses.replace(cfg.data, batch_size=distributed.local_batch_size(cfg.data.batch_size, ranks))
    loaders, spec = build(data_cfg, seed=cfg.train.seed, device=data_device(device), split=split,
                          default_image_size=model_info(cfg.model.name).default_input_size[0],
                          needs_channels=_weights_channels(cfg, weights))  # fmt: skip
    shard_loaders(loaders, Part(ranks.rank, ranks.world))  # torchrun: this process's share of every epoch
    torch.manual_seed(cfg.train.seed)  # initial weights (a new head too) follow the seed
    model = create_model(cfg.model.name, num_classes=spec.num_classes, in_chans=spec.channels,
                         input_size=spec.input_size, **cfg.model.kwargs)  # fmt: skip
    if resume is not None:
        model.load_state_dict(resume.state_dict)  # before any feature caching reads the backbone
        return Session(device, loaders, spec, model, None, notes)
    if hasattr(model, "init_from_data"):  # a stem set from the data (airbench's whitening conv)
        images = sample_images(loaders.train, INIT_IMAGES)
        model.init_from_data(images)
        notes.append(f"note: initialised {type(model).__name__}'s stem from {len(images):,} training images")
    if weights is not None:
        notes += load_weights(model, weights).lines()
    return Session(device, loaders, spec, model, weights, notes)


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its data folder, CSV file and ``data_dir`` as absolute paths.

    A run folder is read from anywhere (``cnnkit eval /abs/path/RUN`` from another
    folder), so it must not hold paths relative to where training started. Registered
    dataset names and your own ``FILE.py:NAME`` datasets (recorded with their absolute
    file by :mod:`cnnkit.usercode`) are kept as they are.
    """
    name = cfg.data.name
    if name not in list_datasets() and usercode.parse_ref(name) is None and Path(name).expanduser().exists():
        cfg.data.name = str(Path(name).expanduser().absolute())
    if cfg.data.data_dir:
        cfg.data.data_dir = str(Path(cfg.data.data_dir).expanduser().absolute())
    return cfg


def _weights_channels(cfg: RunConfig, weights: Weights | None) -> int | None:
    """The input channels starting weights fix (3 for pretrained RGB backbones), or None."""
    if weights is not None and weights.preprocess and weights.preprocess.get("channels"):
        return int(weights.preprocess["channels"])
    return 3 if cfg.model.pretrained else None


def check_run_config(cfg: RunConfig, *, tracked: bool = True) -> RunConfig:
    """Every check a run (``tracked``: one that logs to trackers) or a learning-rate sweep needs
    before anything is written; returns ``cfg`` with absolute data paths."""
    validate(cfg)
    model_info(cfg.model.name)  # unknown names fail here, before any slow work
    check_memory(cfg)
    if tracked:
        from cnnkit.tracking import check_loggers

        check_loggers(cfg)  # --log mlflow/wandb without the package fails here
    return absolute_paths(cfg)


def check_memory(cfg: RunConfig) -> None:
    """Refuse an ``--image-size`` whose first training batch cannot fit the device's free memory.

    The estimate (:func:`cnnkit.engine.memory.estimate`: input batch, activations kept for the
    backward, weights with gradients and optimizer state) is made on the meta device, so it
    costs a model build and no memory. Only an explicit ``--image-size`` is checked: the
    data's own size and the model's default are sizes they were made for.

    Raises:
        UsageError: the estimate exceeds the free memory; the message gives both and what to try.
    """
    side = cfg.data.image_size
    if side is None:
        return
    device = resolve_device(cfg.train.device)
    free = available_bytes(device)
    if free is None:
        return
    # the data's channels are known only once it is read: forced, RGB for pretrained weights, else the model's own
    chans = cfg.data.channels or (3 if cfg.model.pretrained else model_info(cfg.model.name).default_in_chans)
    batch = cfg.data.batch_size
    half = amp_dtype(cfg.train.amp, device, training=True, deterministic=cfg.train.deterministic) is not None
    need = estimate(lambda: create_model(cfg.model.name, num_classes=10, in_chans=chans, input_size=side,
                                         **cfg.model.kwargs), batch, chans, side, frozen=cfg.train.freeze, half=half)
    if need.total > free:
        where = "GPU memory free" if device.type == "cuda" else "memory available"
        raise UsageError(
            f"--image-size {side} needs about {human(need.total)} for one training batch of {batch} "
            f"({human(need.inputs)} input, {human(need.activations)} activations, {human(need.parameters)} weights "
            f"and optimizer state), but {device.type} has {human(free)} {where}; try a smaller --image-size "
            f"(e.g. {min(side // 4, 224) or 1}) or --batch-size"
        )


def start_weights(cfg: RunConfig) -> Weights | None:
    """The weights a new run starts from: ``--weights FILE_OR_RUN``, ``--pretrained``, or none."""
    if cfg.model.weights:
        return find_weights(cfg.model.name, weights=cfg.model.weights)
    if cfg.model.pretrained:
        return find_weights(cfg.model.name)
    return None


def adopt_preprocess(cfg: RunConfig, weights: Weights | None) -> list[str]:
    """Use the preprocessing the weights were trained with wherever the user set none.

    Returns the note lines to log.
    """
    if weights is None or not weights.preprocess:
        return []
    pre, data = weights.preprocess, cfg.data
    side = int(pre["input_size"][0])
    if data.image_size is None:
        data.image_size = side
    if data.resize is None and pre.get("resize"):
        data.resize = round(data.image_size * pre["resize"] / side)
    if data.interpolation is None:
        data.interpolation = pre.get("interpolation")
    if data.mean is None and data.std is None:
        data.mean, data.std = list(pre["mean"]), list(pre["std"])
    return [
        f"note: preprocessing as the weights were trained: {data.image_size}px centre crop of a {data.resize}px "
        f"short side, {data.interpolation}, mean {fmt_values(data.mean)} std {fmt_values(data.std)}"
    ]


def fmt_values(values: list[float] | None) -> str:
    return "-" if values is None else "(" + ", ".join(f"{v:g}" for v in values) + ")"


def balanced_class_weights(loader: Any, num_classes: int) -> torch.Tensor:
    """Loss weights ``N / (K * n_k)`` from the training labels (scikit-learn's "balanced").

    A class absent from training gets weight 1 (it never appears as a target anyway).
    """
    labels = torch.as_tensor(loader.labels).long().cpu()
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = len(labels) / (num_classes * counts.clamp_min(1))
    return torch.where(counts > 0, weights, torch.ones_like(weights)).float()


def describe_checkpoint(cfg: RunConfig, spec: DataSpec, weights_source: str | None = None) -> Checkpoint:
    """The self-describing part every checkpoint of the run carries (see :mod:`cnnkit.checkpoint`):
    a :class:`Checkpoint` without weights, which the loop fills in at each save.

    ``weights_source`` says where the starting weights came from (None: random init).
    """
    model = ModelDesc(name=cfg.model.name, kwargs=dict(cfg.model.kwargs), num_classes=spec.num_classes,
                      in_chans=spec.channels, input_size=list(spec.input_size), source=weights_source,
                      code=model_code(cfg.model.name))  # your own model: where its code came from
    return Checkpoint(
        model=model,
        state_dict={},
        class_names=list(spec.class_names),
        preprocess=spec.preprocess,
        config=copy.deepcopy(cfg),
        data_fingerprint=spec.fingerprint,
        data_code=usercode.record(cfg.data.name),  # your own Dataset: where its code came from
        cnnkit_version=__version__,
    )


def load_run_code(cfg: RunConfig) -> None:
    """Import the model and dataset code a new run's config names (``FILE.py:NAME``).

    Naming the code in ``--model``/``--data`` (or ``train(model=...)``) is the request to
    import it; checkpoints only record it (see :func:`bind_checkpoint_code`).
    """
    load_model_code(cfg.model.name)
    if usercode.parse_ref(cfg.data.name) is not None:
        usercode.load(cfg.data.name)


def bind_checkpoint_code(ckpt: Checkpoint, trust: Any = None) -> None:
    """Make the model and dataset code a checkpoint records usable, importing it only if
    trusted (``trust``, ``cnnkit.trust_code`` blocks, ``$CNNKIT_TRUST_CODE``).

    Raises:
        UsageError: untrusted code; the message says what to pass.
    """
    require_model_code(ckpt.model.to_dict(), trust)
    usercode.bind_record(ckpt.data_code, "dataset", trust=trust)


def code_lines(description: Checkpoint) -> list[str]:
    """Where the run's own model/dataset code came from, and what loading the run needs."""
    lines = []
    model_record = description.model.code if description.model is not None else None
    for what, record in (("model", model_record), ("dataset", description.data_code)):
        if record:
            lines.append(f"code: {what} {usercode.describe_record(record)}; commands that load this run import it "
                         f"only with --trust-code {usercode.trust_hint(record)}")  # fmt: skip
    return lines


def run_label(cfg: RunConfig) -> str:
    """The run folder's name stem: the recipe, else a folder-safe model name
    (``timm:resnet18`` -> ``timm-resnet18``, ``nets.py:Tiny`` -> ``Tiny``)."""
    if cfg.recipe not in (None, "default"):
        return cfg.recipe
    ref = usercode.parse_ref(cfg.model.name, list_sources())
    return ref.label if ref is not None else cfg.model.name.replace(":", "-")


# ----------------------------------------------------------------------------- the run folder's files


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
    folder.write_json(RunFolder.CLASSES, list(spec.class_names))
    folder.write_split({"fingerprint": spec.fingerprint, "sizes": spec.sizes, **spec.split})
    folder.write_json(RunFolder.ENV, environment(cfg, spec))


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
    write_audit_json(report, folder.file(RunFolder.DATA_CHECK))
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
    folder.write_json(RunFolder.SKIPPED, sorted(found.values(), key=lambda e: e["path"]))
    by_training = sum("training" in entry["found_by"] for entry in found.values())
    say(f"skipped files: {len(found)} unreadable ({by_training} met while training); listed in {RunFolder.SKIPPED}")


# ----------------------------------------------------------------------------- resuming


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
    folder = _resumed_folder(Path(run))
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


def _resumed_folder(given: Path) -> RunFolder:
    """``given`` as a run folder (one ``cnnkit train`` made: :meth:`RunFolder.open` finds its config).

    Raises:
        CnnkitError: nothing there; a file (a checkpoint's run folder is two levels up); a
            folder that is not a run folder (a dataset, say).
    """
    if given.is_file():
        in_run = given.suffix == ".pt" and RunFolder(given.parent.parent).checkpoints == given.absolute().parent
        hint = f"; resume its run folder: --resume {given.parent.parent}" if in_run else ""
        raise CnnkitError(f"--resume: {given} is a file, not a cnnkit run folder (a folder made by `cnnkit train`, "
                          f"with {RunFolder.CONFIG} and checkpoints/){hint}")  # fmt: skip
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
    split = folder.read_split()
    if split is None:
        raise CnnkitError(f"--resume: {folder.split_file} is missing; the run cannot continue on the same split")
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
    env = folder.read_json(RunFolder.ENV, {})
    env.setdefault("resumed", []).append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
                                          "device": resolve_device(cfg.train.device).type})  # fmt: skip
    folder.write_json(RunFolder.ENV, env)
    folder.write_config(cfg)  # with the new --epochs etc. (`cnnkit runs` reads it)

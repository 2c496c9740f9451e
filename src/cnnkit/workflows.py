"""The workflows behind the command line, callable from Python and notebooks.

``train`` resolves a :class:`RunConfig` (defaults < recipe < config file < overrides),
builds data and model, runs :func:`cnnkit.engine.fit` and writes the run folder.
``evaluate_checkpoint`` rebuilds model, preprocessing and split from a checkpoint alone.
``fit`` trains any model on any torch ``Dataset`` the user wrote.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from cnnkit import usercode
from cnnkit._version import __version__
from cnnkit.config import (
    RunConfig,
    TrainConfig,
    apply_overrides,
    flatten,
    load_yaml,
    save_yaml,
    valid_keys,
)
from cnnkit.data import DataSpec, build, loader_from_dataset
from cnnkit.data.audit import AuditReport, audit, examine_file, summary_line, write_json
from cnnkit.data.builder import shard_loaders
from cnnkit.data.datasets import cache_dir, list_datasets
from cnnkit.data.folder import read_skipped_files, skipped_files_log
from cnnkit.data.tensor_data import Part, sample_images
from cnnkit.data.transforms import config_augment
from cnnkit.engine import (
    EvalResult,
    FitResult,
    distributed,
    evaluate,
    read_checkpoint,
    resolve_device,
)
from cnnkit.engine import fit as engine_fit
from cnnkit.engine.device import amp_dtype
from cnnkit.engine.features import (
    FeatureLoader,
    HeadOnly,
    cache_key,
    cached_features,
    extract_features,
    state_digest,
)
from cnnkit.engine.lr_find import LrFindResult, lr_range_test
from cnnkit.engine.lr_find import plot as lr_plot
from cnnkit.engine.optim import check_train_config
from cnnkit.engine.tta import check_tta
from cnnkit.errors import CnnkitError, DataError, UsageError, unknown_name
from cnnkit.inference import export
from cnnkit.inference.predictor import checkpoint_metadata, model_from_checkpoint
from cnnkit.models import (
    BackboneClassifier,
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
from cnnkit.recipes import recipe_config_values
from cnnkit.tracking import check_loggers, open_loggers

# Training images given to a model's init_from_data (airbench whitens its stem on 5,000).
INIT_IMAGES = 5_000

# Short keyword names accepted by train(); every other config field is reachable by its own name.
_ALIASES = {"data": "data.name", "model": "model.name", "model_kwargs": "model.kwargs", "data_kwargs": "data.kwargs",
            "name": "name"}  # fmt: skip


def resolve_config(
    recipe: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < recipe < YAML file < dotted-key overrides.

    With no recipe, no config file and no dataset chosen, the ``default`` recipe is used
    (the embedded-MNIST run of a bare ``cnnkit train``); choosing a dataset without a
    recipe starts from the plain dataclass defaults instead, so no digit-specific
    setting leaks into training on photos.
    """
    overrides = overrides or {}
    if recipe is None and config_file is None and "data.name" not in overrides:
        recipe = "default"
    cfg = RunConfig()
    if recipe is not None:
        apply_overrides(cfg, flatten(recipe_config_values(recipe)))
    if config_file is not None:
        apply_overrides(cfg, flatten(load_yaml(config_file)))
    apply_overrides(cfg, overrides)
    return cfg


def keyword_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Map keyword names (``epochs=2``, ``data_dir=...``, ``output_dir=...``) to config keys."""
    # Section fields by their short name, plus the top-level ones (output_dir, recipe...).
    fields = {key.rpartition(".")[2]: key for key in _all_keys()}
    dotted = {}
    for key, value in values.items():
        if key in _ALIASES:
            dotted[_ALIASES[key]] = value
        elif "." in key:
            dotted[key] = value
        elif key in fields:
            dotted[fields[key]] = value
        else:
            raise UsageError(f"unknown option {key!r}; valid: {', '.join(sorted(set(fields) | set(_ALIASES)))}")
    return dotted


def _all_keys() -> list[str]:
    return [k for k in valid_keys() if k not in {"data.name", "model.name", "model.kwargs", "data.kwargs"}]


@dataclass
class Run:
    """A finished training run: its folder, metrics and the trained model (best weights).

    Attributes:
        dir: the run folder (``config.yaml``, ``metrics.csv``, ``checkpoints/``...).
        config: the resolved config.
        spec: classes, preprocessing and split sizes of the data.
        model: the trained model with the best validation weights, in eval mode.
        history: one metrics dict per epoch (as in ``metrics.csv``).
        test: evaluation of the best weights on the test split (None when there is none).
        seconds: wall time of the whole run.
    """

    dir: Path | None
    config: RunConfig
    spec: DataSpec
    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int | None
    test: EvalResult | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        """Final figures: the best epoch's validation metrics and the test result."""
        best = next((r for r in self.history if r["epoch"] == self.best_epoch), self.history[-1])
        out = {"best_epoch": best["epoch"], "val_acc": best["val_acc"], "val_loss": best["val_loss"]}
        if self.test is not None:
            out.update(test_acc=self.test.acc, test_loss=self.test.loss, test_top5=self.test.top5)
        out["seconds"] = round(self.seconds, 1)
        return out

    @property
    def checkpoint(self) -> Path | None:
        return None if self.dir is None else self.dir / "checkpoints" / "best.pt"

    def __repr__(self) -> str:
        return f"Run(dir={str(self.dir)!r}, metrics={self.metrics})"


def train(
    recipe: str | None = None,
    *,
    config: RunConfig | None = None,
    config_file: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    resume: str | Path | None = None,
    check: bool = True,
    trust_code: Any = None,
    **overrides: Any,
) -> Run:
    """Train a model as ``cnnkit train`` does and return the :class:`Run`.

    Args:
        recipe: a shipped recipe name (see ``cnnkit recipes``); None: the default run.
        config: a ready :class:`RunConfig` (then ``recipe``/``config_file`` are ignored).
        config_file: a YAML file of config values layered over the recipe.
        progress: show progress bars (only on a terminal).
        log: receives each log line (default: print); lines also go to ``log.txt``.
        resume: a run folder to continue from its ``last.pt`` (killed, crashed or
            finished early), with its own config, split and data order; only
            :data:`RESUME_OVERRIDES` may be changed (e.g. ``epochs`` to train longer).
        check: first run the quick dataset check (:mod:`cnnkit.data.audit`) on a folder or
            CSV dataset: unusable data stops here, anything training survives is logged as
            a warning, and the report goes to ``data_check.json``.
        trust_code: with ``resume``, the files/modules of the run's own model or dataset
            code that may be imported (``True``: whatever the checkpoint names); see
            :mod:`cnnkit.usercode`. A new run imports the code its ``model``/``data``
            name (``"my_models.py:MyModel"``) without it.
        **overrides: config values by field name (``epochs=2``, ``lr=0.01``,
            ``data="cifar10"``, ``data_dir=...``, ``model="vgg16_bn"``, ``model_kwargs={...}``)
            or dotted key.

    Example:
        >>> run = cnnkit.train(recipe="mnist-lenet", epochs=1, data_dir="../shared/data")
        >>> run.metrics["test_acc"]
    """
    payload, run_dir = None, None
    if resume is not None:
        cfg, run_dir, payload = _resume_state(resume, keyword_overrides(overrides))
        bind_checkpoint_code(payload, trust_code)  # the run's own code, recorded in last.pt: only if trusted
    else:
        cfg = config if config is not None else resolve_config(recipe, config_file, keyword_overrides(overrides))
        load_run_code(cfg)  # the FILE.py:NAME code this new run names: imported now, as asked
    info = model_info(cfg.model.name)  # unknown names fail here, before any slow work
    check_train_config(cfg.train)
    _check_transfer_options(cfg)
    check_balance(cfg.data.balance)
    check_loggers(cfg)  # --log mlflow/wandb without the package fails here
    data_check = _check_data(cfg, progress and distributed.from_environment().is_main) if check else None
    start = time.perf_counter()
    ranks = distributed.setup(cfg.train.device)  # under torchrun: join the group (a no-op otherwise)
    try:
        return _train(cfg, payload, run_dir, info, data_check, ranks, start, progress, log)
    finally:
        distributed.teardown()


def _train(cfg: RunConfig, payload: dict[str, Any] | None, run_dir: Path | None, info: Any,
           data_check: AuditReport | None, ranks: distributed.DistEnv, start: float, progress: bool,
           log: Callable[[str], None] | None) -> Run:  # fmt: skip
    """The body of :func:`train` once the config is checked. Under torchrun every rank runs
    it on its shard of the data; only rank 0 writes files and prints."""
    device = resolve_device(cfg.train.device)
    weights = _find_weights(cfg) if payload is None else None  # a resumed run's weights are in last.pt
    weight_notes = _adopt_preprocess(cfg, weights)
    data_cfg = dataclasses.replace(cfg.data, batch_size=distributed.local_batch_size(cfg.data.batch_size, ranks))
    loaders, spec = build(data_cfg, seed=cfg.train.seed, device=_data_device(device),
                          default_image_size=info.default_input_size[0],
                          split=_saved_split_of(run_dir) if payload is not None else None)  # fmt: skip
    shard_loaders(loaders, Part(ranks.rank, ranks.world))  # torchrun: this process's share of every epoch
    torch.manual_seed(cfg.train.seed)  # initial weights (a new head too) follow the seed
    model = create_model(cfg.model.name, num_classes=spec.num_classes, in_chans=spec.channels,
                         input_size=spec.input_size, **cfg.model.kwargs)  # fmt: skip
    writer = ranks.is_main  # the one process that writes the run folder and prints
    if payload is None:
        run_dir = Path(distributed.broadcast(str(_new_run_dir(cfg)) if writer else None))
    say = _logger(run_dir, log) if writer else _silent
    if payload is None and writer:
        _write_run_files(run_dir, cfg, spec)
        say(f"run folder: {run_dir}")
        if ranks.active:
            say(f"distributed: {ranks.world} processes (torchrun), global batch {cfg.data.batch_size} = "
                f"{ranks.world} x {data_cfg.batch_size}; rank 0 writes this folder")  # fmt: skip
    elif payload is not None:
        _check_same_data(payload, spec, run_dir)
        model.load_state_dict(payload["state_dict"])  # before any feature caching reads the backbone
        if writer:
            _record_resume(run_dir, cfg)
            save_yaml(cfg, run_dir / "config.yaml")  # with the new --epochs etc. (`cnnkit runs` reads it)
        say(f"resuming {run_dir} after epoch {payload['epoch']}" + _position(payload, len(loaders.train))
            + (f" on {ranks.world} processes" if ranks.active else ""))  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    say(f"data: {spec.name}  {spec.num_classes} classes  {_sizes(spec)}  input {spec.channels}x{spec.input_size[0]}x{spec.input_size[1]}")
    for note in spec.notes + weight_notes:
        say(f"note: {note}")
    if writer:
        _log_data_check(run_dir, data_check, say)
    epochs = sum(cfg.train.fine_tune) if cfg.train.fine_tune else cfg.train.epochs
    precision = amp_dtype(cfg.train.amp, device, training=True, deterministic=cfg.train.deterministic)
    say(f"model: {cfg.model.name} ({params:,} parameters)  device: {device}  epochs: {epochs}  "
        f"precision: {'float32' if precision is None else str(precision).removeprefix('torch.') + ' autocast'}")
    if hasattr(model, "init_from_data") and payload is None:  # a stem set from the data (airbench's whitening conv)
        init_images = sample_images(loaders.train, INIT_IMAGES)
        model.init_from_data(init_images)
        say(f"note: initialised {type(model).__name__}'s stem from {len(init_images):,} training images")
    if weights is not None:
        for line in load_weights(model, weights).lines():
            say(line)
    class_weights = balanced_class_weights(loaders.train, spec.num_classes) if cfg.data.balance == "weights" else None
    if class_weights is not None:
        say("note: class-balanced loss weights " + _fmt([round(float(w), 3) for w in class_weights]))
    source = weights.source if weights else (payload["model"].get("source") if payload else None)
    if cfg.train.lr_find and payload is None:  # --lr auto: sweep first, then train at the suggestion
        # torchrun: rank 0 sweeps on its shard while the others wait, then all train at its suggestion
        suggestion = _lr_from_sweep(model, loaders.train, cfg, device, run_dir, say).suggestion if writer else None
        cfg.train.lr = distributed.broadcast(suggestion)
        if writer:
            save_yaml(cfg, run_dir / "config.yaml")  # the run trains at the suggested lr
    meta = checkpoint_meta(cfg, spec, model, weights_source=source)
    _log_code(meta, say)
    tracked = cfg if writer else dataclasses.replace(cfg, tensorboard=False, loggers=None)
    with (skipped_files_log(run_dir / SKIP_LOG) as skip_log,  # bad files met by any loader worker
          open_loggers(run_dir, tracked, first_epoch=payload["epoch"] + 1 if payload else 1, say=say) as trackers):
        trackers.start(model, (spec.channels, *spec.input_size), cfg)  # TensorBoard, MLflow, W&B
        result = _fit_phases(model, loaders, cfg, spec, device, run_dir if writer else None, meta, say,
                             progress and writer, resume=payload, class_weights=class_weights,
                             trackers=trackers)  # fmt: skip
        result.run_dir = run_dir
        if writer:
            model.load_state_dict(read_checkpoint(run_dir / "checkpoints" / "best.pt")["state_dict"])
        distributed.broadcast_module(model)  # rank 0's best weights on every rank (no shared disk needed)
        test = None
        if loaders.test is not None:
            test = evaluate(model, loaders.test, spec.num_classes, device=device, dtype=amp_dtype(cfg.train.amp, device),
                            tta=cfg.train.tta)  # fmt: skip
            trackers.log_test(test, step=len(result.history))
    if writer:
        _list_skipped_files(run_dir, skip_log, data_check, loaders, say)
    model.eval()
    run = Run(run_dir, cfg, spec, model, result.history, result.best_epoch, test, time.perf_counter() - start, spec.notes)
    if writer:
        _write_summary(run_dir, run, result)
        say(_final_line(run, cfg))
        if cfg.report:
            _write_run_report(run_dir, cfg, say)
    distributed.barrier()  # the other ranks leave once the run folder is complete
    return run


def _silent(line: str) -> None:
    """The logger of ranks other than 0 under torchrun: they print and write nothing."""


SKIP_LOG = "skipped_files.jsonl"  # raw, one line per skip and process; folded into skipped_files.json


def _check_data(cfg: RunConfig, progress: bool) -> AuditReport | None:
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


def _log_data_check(run_dir: Path, report: AuditReport | None, say: Callable[[str], None]) -> None:
    """One summary line and the warnings in the log; the whole report in ``data_check.json``."""
    if report is None:
        return
    write_json(report, run_dir / "data_check.json")
    say(f"{summary_line(report)}; report in data_check.json (`cnnkit check {report.source}` decodes every image)")
    for warning in report.warnings:
        say(f"warning: {warning}")


def _list_skipped_files(run_dir: Path, skip_log: Path, report: AuditReport | None, loaders: Any,
                        say: Callable[[str], None]) -> None:  # fmt: skip
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
    _write_text_atomic(run_dir / "skipped_files.json", json.dumps(sorted(found.values(), key=lambda e: e["path"]), indent=1))
    by_training = sum("training" in entry["found_by"] for entry in found.values())
    say(f"skipped files: {len(found)} unreadable ({by_training} met while training); listed in skipped_files.json")


def lr_find(
    recipe: str | None = None,
    *,
    config: RunConfig | None = None,
    config_file: str | Path | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> tuple[LrFindResult, Path]:
    """``cnnkit lr-find``: the learning-rate range test on the data and model ``train`` would use.

    Takes the same options as :func:`train`; writes ``lr_find.png``, ``lr_find.json`` and
    ``config.yaml`` into a new run folder (``NAME-lrfind-TIME``) and returns the sweep and
    that folder. The model is built, seeded and initialised exactly as ``train`` builds it.
    """
    cfg = config if config is not None else resolve_config(recipe, config_file, keyword_overrides(overrides))
    load_run_code(cfg)  # FILE.py:NAME model or dataset code named here: imported now, as asked
    info = model_info(cfg.model.name)
    check_train_config(cfg.train)
    _check_transfer_options(cfg)
    device = resolve_device(cfg.train.device)
    weights = _find_weights(cfg)
    _adopt_preprocess(cfg, weights)
    loaders, spec = build(cfg.data, seed=cfg.train.seed, device=_data_device(device),
                          default_image_size=info.default_input_size[0])  # fmt: skip
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, num_classes=spec.num_classes, in_chans=spec.channels,
                         input_size=spec.input_size, **cfg.model.kwargs)  # fmt: skip
    if weights is not None:
        load_weights(model, weights)
    if hasattr(model, "init_from_data"):
        model.init_from_data(sample_images(loaders.train, INIT_IMAGES))
    if isinstance(model, BackboneClassifier):
        model.freeze_backbone(cfg.train.freeze or bool(cfg.train.fine_tune))  # the first phase's setting
    label = cfg.recipe if cfg.recipe not in (None, "default") else _run_label(cfg.model.name)
    run_dir = _new_run_dir(dataclasses.replace(cfg, name=cfg.name or f"{label}-lrfind-{time.strftime('%Y%m%d-%H%M%S')}"))
    say = _logger(run_dir, log)
    save_yaml(cfg, run_dir / "config.yaml")
    say(f"run folder: {run_dir}")
    result = _lr_from_sweep(model, loaders.train, cfg, device, run_dir, say, start_lr=start_lr, end_lr=end_lr,
                            steps=steps)  # fmt: skip
    return result, run_dir


def _lr_from_sweep(model, loader, cfg: RunConfig, device, run_dir: Path, say, **sweep: Any) -> LrFindResult:
    """Run the range test, save its plot and numbers in ``run_dir``, log the suggestion."""
    say(f"lr-find: sweeping the learning rate ({cfg.train.optimizer}, batch {distributed.local_batch_size(cfg.data.batch_size, distributed.current())}) ...")
    result = lr_range_test(model, loader, cfg.train, device=device, **sweep)
    figure = lr_plot(result, title=f"{cfg.model.name} on {cfg.data.name}: learning-rate range test")
    figure.savefig(run_dir / "lr_find.png")
    _write_text_atomic(run_dir / "lr_find.json", json.dumps(result.as_dict(), indent=1))
    ended = "the loss diverged" if result.diverged else "the sweep ended"
    say(f"lr-find: suggested lr {result.suggestion:.2e} (the lower of the steepest descent, {result.steepest_lr:.2e}, "
        f"and a tenth of the lowest loss's lr, {result.min_loss_lr:.2e}); "
        f"{len(result.lrs)} steps until {ended}; plot: {run_dir / 'lr_find.png'}")  # fmt: skip
    if result.doubtful:
        say(f"warning: the loss fell only {result.fall:.1%} during the sweep, so the suggestion is a guess; "
            "sweep longer (--steps), check the data and model, or choose the lr by hand")  # fmt: skip
    return result


# Config keys a resumed run may change: how long and where it trains, not what it learns.
RESUME_OVERRIDES = ("train.epochs", "train.device", "train.threads", "train.checkpoint_every_steps",
                    "data.data_dir", "data.workers", "report", "tensorboard", "loggers")  # fmt: skip
BALANCE_MODES = ("none", "weights", "sampler")


def check_balance(mode: str) -> None:
    """``--balance`` must be one of :data:`BALANCE_MODES`."""
    if mode not in BALANCE_MODES:
        raise unknown_name("--balance mode", mode, BALANCE_MODES)


def _resume_state(run: str | Path, overrides: dict[str, Any]) -> tuple[RunConfig, Path, dict[str, Any]]:
    """The config, folder and ``last.pt`` payload of a run to resume.

    Raises:
        UsageError: an override that would change what the run learns, a run already
            finished, or fewer epochs than it has done.
        CnnkitError: no such run folder or no ``last.pt`` in it.
    """
    run_dir = Path(run)
    last = run_dir / "checkpoints" / "last.pt"
    if not run_dir.is_dir():
        raise CnnkitError(f"--resume: run folder not found: {run_dir}")
    if not last.is_file():
        raise CnnkitError(f"--resume: {run_dir} has no checkpoints/last.pt (the run stopped before its first "
                          "checkpoint); start it again without --resume")  # fmt: skip
    payload = read_checkpoint(last)
    if "history" not in payload or "rng" not in payload:
        raise CnnkitError(f"--resume: {last} was written by an older cnnkit without the training state; "
                          "start the run again")  # fmt: skip
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        raise UsageError(f"--resume continues a run with its own config; {', '.join(refused)} cannot change "
                         f"(allowed: {', '.join(RESUME_OVERRIDES)}); start a new run to change them")  # fmt: skip
    cfg = RunConfig.from_dict(payload["config"])
    cfg.name, cfg.output_dir = run_dir.name, str(run_dir.parent)
    apply_overrides(cfg, overrides)
    total = sum(cfg.train.fine_tune) if cfg.train.fine_tune else cfg.train.epochs
    done = payload["epoch"]
    if "train.epochs" in overrides and total != payload["config"]["train"]["epochs"] and cfg.train.scheduler == "onecycle":
        raise UsageError("--epochs cannot change when resuming a onecycle schedule (its length is fixed); "
                         "start a new run, e.g. with --weights RUN/checkpoints/last.pt")  # fmt: skip
    if total < done or (total == done and not payload.get("in_epoch")):
        raise UsageError(f"{run_dir} has already trained {done} of {total} epochs; "
                         f"pass --epochs N (more than {done}) to train it longer")  # fmt: skip
    return cfg, run_dir, payload


def _saved_split_of(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "split.json"
    if not path.is_file():
        raise CnnkitError(f"--resume: {path} is missing; the run cannot be continued on the same split")
    split = json.loads(path.read_text(encoding="utf-8"))
    return {key: value for key, value in split.items() if key not in ("fingerprint", "sizes")}


def _check_same_data(payload: dict[str, Any], spec: DataSpec, run_dir: Path) -> None:
    before = payload.get("data_fingerprint")
    if before and before != spec.fingerprint:
        raise DataError(f"the data of {run_dir} changed since the run started (fingerprint {before} -> "
                        f"{spec.fingerprint}); resuming would train on other images. Restore the data or "
                        "start a new run")  # fmt: skip


def _position(payload: dict[str, Any], steps_per_epoch: int) -> str:
    in_epoch = payload.get("in_epoch")
    if not in_epoch:
        return ""
    return f" and {in_epoch['batches']}/{steps_per_epoch} steps of epoch {payload['epoch'] + 1}"


def _record_resume(run_dir: Path, cfg: RunConfig) -> None:
    """Append this resumption (time, command, device) to ``env.json``."""
    path = run_dir / "env.json"
    env = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    env.setdefault("resumed", []).append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
                                          "device": resolve_device(cfg.train.device).type})  # fmt: skip
    _write_text_atomic(path, json.dumps(env, indent=1))


def balanced_class_weights(loader: Any, num_classes: int) -> torch.Tensor:
    """Loss weights ``N / (K * n_k)`` from the training labels (scikit-learn's "balanced").

    A class absent from training gets weight 1 (it never appears as a target anyway).
    """
    labels = torch.as_tensor(getattr(loader, "labels")).long().cpu()
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = len(labels) / (num_classes * counts.clamp_min(1))
    return torch.where(counts > 0, weights, torch.ones_like(weights)).float()


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_run_report(run_dir: Path, cfg: RunConfig, say: Callable[[str], None]) -> None:
    """The end-of-run report; the run itself is already saved, so a data problem only warns."""
    try:
        path = report(run_dir, device=cfg.train.device, data_dir=cfg.data.data_dir)
    except CnnkitError as err:
        say(f"warning: no report written: {err}")
        return
    say(f"report: {path}")


def _is_backbone_name(name: str) -> bool:
    return name.partition(":")[0] in list_sources() and ":" in name


def _check_transfer_options(cfg: RunConfig) -> None:
    """--pretrained/--freeze/--fine-tune only make sense for timm:/tv: backbones."""
    if _is_backbone_name(cfg.model.name):
        return
    for used, flag in ((cfg.model.pretrained, "--pretrained"), (cfg.train.freeze, "--freeze"),
                       (cfg.train.fine_tune, "--fine-tune"), (cfg.model.weights, "--weights")):  # fmt: skip
        if used:
            raise UsageError(
                f"{flag} needs a pretrained backbone model (timm:NAME or tv:NAME, e.g. timm:efficientnet_lite0 "
                f"or tv:{cfg.model.name if cfg.model.name.startswith('vgg') else 'resnet18'}); "
                f"{cfg.model.name!r} is one of cnnkit's own architectures and trains from scratch"
            )


def _find_weights(cfg: RunConfig) -> Weights | None:
    if cfg.model.weights:
        return find_weights(cfg.model.name, weights=cfg.model.weights)
    if cfg.model.pretrained:
        return find_weights(cfg.model.name)
    return None


def _adopt_preprocess(cfg: RunConfig, weights: Weights | None) -> list[str]:
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
        f"preprocessing as the weights were trained: {data.image_size}px centre crop of a {data.resize}px "
        f"short side, {data.interpolation}, mean {_fmt(data.mean)} std {_fmt(data.std)}"
    ]


def _fmt(values: list[float] | None) -> str:
    return "-" if values is None else "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _phases(train: TrainConfig) -> list[tuple[int, bool]]:
    """(epochs, backbone frozen) per training phase."""
    if train.fine_tune:
        return [(train.fine_tune[0], True), (train.fine_tune[1], False)]
    return [(train.epochs, train.freeze)]


def _fit_phases(model, loaders, cfg: RunConfig, spec: DataSpec, device, run_dir, meta, say, progress, *,
                resume: dict[str, Any] | None = None, class_weights: torch.Tensor | None = None,
                trackers: Any = None) -> FitResult:  # fmt: skip
    """Train in phases: head only (frozen backbone, cached features when possible), then all layers.

    A resumed run skips the phases its checkpoint has finished and resumes inside the one
    it was in. ``trackers`` (a :class:`cnnkit.tracking.RunLoggers`) receives each epoch's
    metrics row and a copy of the first training images.
    """
    phases = [(epochs, frozen) for epochs, frozen in _phases(cfg.train) if epochs > 0]
    total = sum(epochs for epochs, _ in phases)
    result, begun = None, 0
    for epochs, frozen in phases:
        begun, phase_start = begun + epochs, begun
        if resume is not None and resume["epoch"] >= begun:
            continue  # finished before the interruption; its history comes back with the checkpoint
        if resume is not None and resume["epoch"] == phase_start and not resume.get("in_epoch"):
            # stopped between two phases: this one starts afresh (as it did uninterrupted) from the saved weights
            result = FitResult(history=[dict(r) for r in resume["history"]], best_metric=resume.get("best_metric"),
                               best_epoch=resume.get("best_epoch"), run_dir=run_dir, steps=resume["step"])  # fmt: skip
            resume = None
        elif resume is not None:
            result = FitResult(history=[dict(r) for r in resume["history"][:phase_start]], run_dir=run_dir)
        phase_model, phase_loaders = model, loaders
        if isinstance(model, BackboneClassifier):
            model.freeze_backbone(frozen)
            if len(phases) > 1:
                lr = f"lr {cfg.train.lr:g}" + ("" if frozen else f", backbone lr {cfg.train.lr * cfg.train.backbone_lr_scale:g}")
                say(f"phase: {'head only (backbone frozen)' if frozen else 'all layers'}, {epochs} epochs, {lr}")
            if frozen and _use_feature_cache(cfg):
                phase_model = HeadOnly(model)
                phase_loaders = _feature_loaders(model, cfg, spec, device, say, progress)
        if trackers is not None:
            phase_loaders = trackers.watch(phase_loaders, spec.preprocess.mean, spec.preprocess.std)
        result = engine_fit(phase_model, phase_loaders, dataclasses.replace(cfg.train, epochs=epochs),
                            num_classes=spec.num_classes, run_dir=run_dir, meta=meta, log=say, progress=progress,
                            previous=result, total_epochs=total, resume=resume, class_weights=class_weights,
                            on_epoch_end=trackers.log_epoch if trackers is not None else None)  # fmt: skip
        resume = None
        if result.stopped_early:
            break
    return result


def _use_feature_cache(cfg: RunConfig) -> bool:
    mode = cfg.train.cache_features
    return mode == "on" or (mode == "auto" and config_augment(cfg.data).is_identity)


def _feature_loaders(model, cfg: RunConfig, spec: DataSpec, device, say, progress) -> tuple:
    """Train/val loaders of backbone features, computed once and cached on disk.

    The images come from the same split, un-augmented and in order; the cache key holds
    everything the features depend on (data, split members, preprocessing, backbone weights).
    """
    eval_loaders, _ = build(cfg.data, seed=cfg.train.seed, device=_data_device(device), split=spec.split,
                            training=False)  # fmt: skip
    model.to(device)
    dtype = amp_dtype(cfg.train.amp, device)
    members = spec.split.get("indices") or spec.split.get("files")
    backbone = state_digest(model.backbone)
    out = []
    for name, loader in (("train", eval_loaders.train), ("val", eval_loaders.val)):
        key = cache_key(data=spec.fingerprint, split=name, members=hashlib.sha1(json.dumps(members[name]).encode()).hexdigest(),
                        preprocess=spec.preprocess.to_dict(), model=cfg.model.name, backbone=backbone, dtype=str(dtype))  # fmt: skip
        path = cache_dir() / "features" / f"{key}.pt"
        feats, labels, seconds = cached_features(path, lambda loader=loader, name=name: extract_features(
            model, loader, device=device, dtype=dtype, progress=progress, desc=f"{name} features"))  # fmt: skip
        how = "from the cache" if seconds is None else f"computed in {seconds:.1f}s ({len(labels) / max(seconds, 1e-9):.0f} img/s)"
        say(f"features: {name} {len(labels):,} x {feats.shape[1]:,} {how}; cached in {path.parent}")
        out.append(FeatureLoader(feats, labels, cfg.data.batch_size if name == "train" else 1024,
                                 shuffle=name == "train" and cfg.data.shuffle, drop_last=name == "train",
                                 seed=cfg.train.seed))  # fmt: skip
    ranks = distributed.current()
    shard_loaders(out, Part(ranks.rank, ranks.world))  # torchrun: this process's share, as for the images
    return tuple(out)


def _data_device(device: torch.device) -> torch.device:
    """In-memory datasets live on the GPU when training there (batches never cross PCIe)."""
    return device if device.type == "cuda" else torch.device("cpu")


def checkpoint_meta(
    cfg: RunConfig, spec: DataSpec, model: nn.Module, weights_source: str | None = None
) -> dict[str, Any]:
    """The self-describing part of a checkpoint (see :mod:`cnnkit.engine.checkpoint`).

    ``model.source`` says where the starting weights came from (None: random init).
    """
    return {
        "model": {
            "name": cfg.model.name,
            "kwargs": dict(cfg.model.kwargs),
            "num_classes": spec.num_classes,
            "in_chans": spec.channels,
            "input_size": list(spec.input_size),
            "source": weights_source,
            "code": model_code(cfg.model.name),  # your own model: where its code came from
        },
        "data_code": usercode.record(cfg.data.name),  # your own Dataset: where its code came from
        "class_names": list(spec.class_names),
        "preprocess": spec.preprocess.to_dict(),
        "config": cfg.to_dict(),
        "data_fingerprint": spec.fingerprint,
        "cnnkit_version": __version__,
    }


def load_run_code(cfg: RunConfig) -> None:
    """Import the model and dataset code a new run's config names (``FILE.py:NAME``).

    Naming the code in ``--model``/``--data`` (or ``train(model=...)``) is the request to
    import it; checkpoints only record it (see :func:`bind_checkpoint_code`).
    """
    load_model_code(cfg.model.name)
    if usercode.parse_ref(cfg.data.name) is not None:
        usercode.load(cfg.data.name)


def bind_checkpoint_code(payload: dict[str, Any], trust: Any = None) -> None:
    """Make the model and dataset code a checkpoint records usable, importing it only if
    trusted (``trust``, ``cnnkit.trust_code`` blocks, ``$CNNKIT_TRUST_CODE``).

    Raises:
        UsageError: untrusted code; the message says what to pass.
    """
    require_model_code(payload["model"], trust)
    usercode.bind_record(payload.get("data_code"), "dataset", trust=trust)


def _log_code(meta: dict[str, Any], say: Callable[[str], None]) -> None:
    """Where the run's own model/dataset code came from, and what loading the run needs."""
    for what, record in (("model", meta["model"].get("code")), ("dataset", meta.get("data_code"))):
        if record:
            say(f"code: {what} {usercode.describe_record(record)}; commands that load this run import it "
                f"only with --trust-code {usercode.trust_hint(record)}")  # fmt: skip


def _run_label(name: str) -> str:
    """A folder-safe label for a model name (``timm:resnet18`` -> ``timm-resnet18``, ``nets.py:Tiny`` -> ``Tiny``)."""
    ref = usercode.parse_ref(name, list_sources())
    return ref.label if ref is not None else name.replace(":", "-")


def _new_run_dir(cfg: RunConfig) -> Path:
    base = Path(cfg.output_dir)
    label = cfg.recipe if cfg.recipe not in (None, "default") else _run_label(cfg.model.name)
    name = cfg.name or f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, suffix = base / name, 2
    while path.exists() and cfg.name is None:
        path, suffix = base / f"{name}-{suffix}", suffix + 1
    path.mkdir(parents=True, exist_ok=cfg.name is not None)
    return path


def _logger(run_dir: Path, log: Callable[[str], None] | None) -> Callable[[str], None]:
    """Print a line (or hand it to ``log``) and append it to ``log.txt``.

    The file is opened per line: a handful of lines per epoch, and no handle outlives the run.
    """

    def say(line: str) -> None:
        (log or print)(line)
        with (run_dir / "log.txt").open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    return say


def _write_run_files(run_dir: Path, cfg: RunConfig, spec: DataSpec) -> None:
    save_yaml(cfg, run_dir / "config.yaml")
    (run_dir / "classes.json").write_text(json.dumps(spec.class_names, indent=1), encoding="utf-8")
    split = {"fingerprint": spec.fingerprint, "sizes": spec.sizes, **spec.split}
    (run_dir / "split.json").write_text(json.dumps(split), encoding="utf-8")
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "cnnkit": __version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": resolve_device(cfg.train.device).type,
        "gpu": torch.cuda.get_device_name() if resolve_device(cfg.train.device).type == "cuda" else None,
        "torch_threads": cfg.train.threads or torch.get_num_threads(),
        "seed": cfg.train.seed,
        "deterministic": cfg.train.deterministic,
        "train_precision": str(amp_dtype(cfg.train.amp, resolve_device(cfg.train.device), training=True,
                                         deterministic=cfg.train.deterministic) or "float32"),
        "data_fingerprint": spec.fingerprint,
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (run_dir / "env.json").write_text(json.dumps(env, indent=1), encoding="utf-8")


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # not installed: recorded as unknown
        return None


def _write_summary(run_dir: Path, run: Run, result: FitResult) -> None:
    summary = {**run.metrics, "epochs_run": len(result.history), "stopped_early": result.stopped_early}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")


def _sizes(spec: DataSpec) -> str:
    return " / ".join(f"{name} {count:,}" for name, count in spec.sizes.items())


def _final_line(run: Run, cfg: RunConfig) -> str:
    m = run.metrics
    parts = [f"done in {m['seconds']:.0f}s", f"best epoch {m['best_epoch']}: val acc {m['val_acc']:.2%}"]
    if run.test is not None:
        parts.append(f"test acc {run.test.acc:.2%}" + (f" top5 {run.test.top5:.2%}" if run.test.top5 is not None else ""))
    if cfg.expected:
        parts.append(f"(expected: {cfg.expected})")
    return "  ".join(parts) + f"\nrun folder: {run.dir}"


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, with everything needed to use it."""

    model: nn.Module
    class_names: list[str]
    preprocess: dict[str, Any]
    config: RunConfig
    metrics: dict[str, Any]
    path: Path
    payload: dict[str, Any]


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``best.pt``, else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CnnkitError(f"{path} holds no checkpoints/best.pt or last.pt; give a run folder or a .pt file")
    if not path.exists():
        raise CnnkitError(f"not found: {path}; give a run folder or a checkpoint .pt file")
    return path


def load_checkpoint(path: str | Path, trust_code: Any = None) -> LoadedCheckpoint:
    """Rebuild the model from a checkpoint (or run folder) alone, in eval mode on the CPU.

    ``trust_code``: files/modules of your own model code that may be imported (``True``:
    whatever the checkpoint names); without them a checkpoint of a ``FILE.py:NAME`` model
    raises :class:`UsageError` saying what to pass (see :mod:`cnnkit.usercode`).
    """
    path = checkpoint_path(path)
    payload = read_checkpoint(path)
    model = model_from_checkpoint(payload, trust_code=trust_code)
    config = RunConfig.from_dict(payload.get("config", {}))
    return LoadedCheckpoint(model, list(payload["class_names"]), payload["preprocess"], config,
                            payload.get("metrics", {}), path, payload)  # fmt: skip


@dataclass
class EvalReport:
    """What ``cnnkit eval`` prints."""

    split: str
    result: EvalResult
    class_names: list[str]
    checkpoint: Path

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "split": self.split,
            "images": self.result.count,
            "loss": self.result.loss,
            "top1": self.result.acc,
            "top5": self.result.top5,
            "per_class_accuracy": dict(zip(self.class_names, self.result.per_class_acc)),
        }


def evaluate_checkpoint(
    path: str | Path,
    *,
    split: str = "test",
    data: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    tta: str | None = None,
) -> EvalReport:
    """Evaluate a checkpoint on a split of its own data (the saved split) or of ``data``.

    The checkpoint's preprocessing (size, channels, mean/std) is always used, and its
    run's test-time augmentation unless ``tta`` names another (``none``, ``flip``...).
    """
    _check_split(split)
    if tta is not None:
        check_tta(tta)
    loaded = load_checkpoint(path)
    torch_device = resolve_device(device)
    loaders, spec, cfg = _checkpoint_loaders(loaded, data=data, data_dir=data_dir, device=torch_device,
                                             batch_size=batch_size)  # fmt: skip
    loader = {"train": loaders.train, "val": loaders.val, "test": loaders.test or loaders.val}[split]
    model = loaded.model.to(torch_device)
    # The run's own precision (bf16 on CUDA under amp=auto), so the figure matches train()'s.
    dtype = amp_dtype(cfg.train.amp, torch_device)
    result = evaluate(model, loader, spec.num_classes, device=torch_device, dtype=dtype,
                      tta=cfg.train.tta if tta is None else tta)  # fmt: skip
    return EvalReport(split, result, loaded.class_names, loaded.path)


def _check_split(split: str) -> None:
    if split not in {"train", "val", "test"}:
        raise UsageError(f"unknown split {split!r}; valid splits: test, train, val")


def _checkpoint_loaders(
    loaded: LoadedCheckpoint, *, data: str | None = None, data_dir: str | None = None,
    device: torch.device, batch_size: int | None = None, training: bool = False,
) -> tuple[Any, DataSpec, RunConfig]:  # fmt: skip
    """Loaders of the checkpoint's own split (or of ``data``) with its stored preprocessing.

    ``training=True`` keeps the run's augmentation on the train loader (to show what the
    model saw); otherwise every split is plain, unshuffled evaluation data.
    """
    if data is None:  # the run's own data: your own Dataset code is imported only if trusted
        usercode.bind_record(loaded.payload.get("data_code"), "dataset")
    cfg = copy.deepcopy(loaded.config)  # callers build several loader sets from one checkpoint
    pre = loaded.preprocess
    cfg.data.mean, cfg.data.std = list(pre["mean"]), list(pre["std"])
    cfg.data.channels, cfg.data.image_size = pre["channels"], pre["input_size"][0]
    cfg.data.resize = pre.get("resize")
    cfg.data.interpolation = pre.get("interpolation")
    if not training:
        cfg.data.augment, cfg.data.shuffle = "none", False
    if batch_size:
        cfg.data.eval_batch_size = batch_size
    saved_split = None
    if data is not None:
        cfg.data.name = data
        cfg.data.limit_train = cfg.data.limit_eval = None
    else:
        saved_split = _saved_split(loaded.path)
    if data_dir is not None:
        cfg.data.data_dir = data_dir
    loaders, spec = build(cfg.data, seed=cfg.train.seed, device=_data_device(device), split=saved_split,
                          training=training)  # fmt: skip
    if spec.class_names != loaded.class_names:
        raise CnnkitError(
            f"the data's classes {spec.class_names[:10]} differ from the checkpoint's {loaded.class_names[:10]}"
        )
    return loaders, spec, cfg


def _saved_split(checkpoint: Path) -> dict[str, Any] | None:
    """The run's ``split.json`` next to ``checkpoints/``, if there is one."""
    split_file = checkpoint.parent.parent / "split.json"
    if split_file.is_file():
        return json.loads(split_file.read_text(encoding="utf-8"))
    return None


# Validation images example_images() looks through for one of each class (a bound on decoding).
EXAMPLE_SCAN_LIMIT = 2000


def example_images(checkpoint: str | Path, count: int = 8, data_dir: str | None = None) -> list[tuple[Any, str]]:
    """Up to ``count`` images of the run's validation split as (8-bit PIL image, class name).

    The first image of each class (in class order; classes not among the split's first
    2,000 images are left out), then the next images of the split; each is the model's
    input, de-normalised. Returns ``[]``, never raising, when the checkpoint or its data
    cannot be found (a demo then simply has no examples).
    """
    from PIL import Image

    try:
        loaded = load_checkpoint(checkpoint)
        loaders, _, _ = _checkpoint_loaders(loaded, data_dir=data_dir, device=torch.device("cpu"))
    except (CnnkitError, OSError):
        return []
    pre = loaded.preprocess
    mean, std = torch.tensor(pre["mean"]).view(-1, 1, 1), torch.tensor(pre["std"]).view(-1, 1, 1)
    names = loaded.class_names
    firsts: dict[int, torch.Tensor] = {}  # class -> its first image
    rest: list[tuple[torch.Tensor, int]] = []
    scanned = 0
    for images, labels in loaders.val:
        for image, label in zip(images.cpu(), labels.tolist(), strict=True):
            if label not in firsts:
                firsts[label] = image
            elif len(rest) < count:
                rest.append((image, label))
        scanned += len(labels)
        enough = len(firsts) >= min(count, len(names)) and len(firsts) + len(rest) >= count
        if enough or scanned >= EXAMPLE_SCAN_LIMIT:
            break
    chosen = ([(firsts[label], label) for label in sorted(firsts)] + rest)[:count]
    out = []
    for image, label in chosen:
        pixels = ((image.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)  # [C, H, W]
        array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
        out.append((Image.fromarray(array), names[label]))
    return out


# ----------------------------------------------------------------------------- fit on datasets


def fit(
    model: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    *,
    class_names: list[str] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    run_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **train_options: Any,
) -> FitResult:
    """Train ``model`` on any torch ``Dataset`` pair (e.g. a custom class as in the seeds).

    Each dataset item is ``(image, label)``: a float tensor ``[C, H, W]`` (normalised by
    your own transform), a PIL image or an array. ``train_options`` are
    :class:`~cnnkit.config.TrainConfig` fields (``epochs``, ``lr``, ``optimizer``...).
    """
    cfg = TrainConfig()
    for key, value in train_options.items():
        if not hasattr(cfg, key):
            raise UsageError(f"unknown training option {key!r}; valid: {', '.join(TrainConfig.__dataclass_fields__)}")
        setattr(cfg, key, value)
    num_classes = len(class_names) if class_names else _count_classes(train_dataset, model)
    loaders = (
        loader_from_dataset(train_dataset, batch_size, shuffle=True, workers=workers, seed=cfg.seed),
        loader_from_dataset(val_dataset, max(256, 2 * batch_size), shuffle=False, workers=workers),
    )
    return engine_fit(model, loaders, cfg, num_classes=num_classes, run_dir=run_dir, log=log, progress=progress)


def _count_classes(dataset: Dataset, model: nn.Module) -> int:
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return len(classes)
    out = getattr(model, "num_classes", None)
    if out is None:
        raise UsageError("cannot tell the number of classes: pass class_names=[...] or give the dataset a 'classes' attribute")
    return int(out)


# ----------------------------------------------------------------------------- report


def report(
    path: str | Path,
    *,
    split: str | None = None,
    robustness: bool = False,
    data_dir: str | None = None,
    device: str = "auto",
    out_dir: str | Path | None = None,
) -> Path:
    """Write ``report/report.html`` (and its PNGs) for a run folder or checkpoint.

    Args:
        path: run folder or checkpoint (``best.pt`` of a folder is used).
        split: ``test`` or ``val`` (None: the test split when the run has one, else val).
        robustness: also measure accuracy under FGSM and simple corruptions.
        data_dir: folder holding torchvision datasets, if not the run's.
        device: where to run the model.
        out_dir: where to write (None: ``report/`` in the run folder).

    Returns:
        The path of ``report.html``.
    """
    from cnnkit.evaluation import report as rep
    from cnnkit.models.summary import format_summary, summarize

    loaded = load_checkpoint(path)
    run_dir = loaded.path.parent.parent
    torch_device = resolve_device(device)
    loaders, spec, cfg = _checkpoint_loaders(loaded, data_dir=data_dir, device=torch_device)
    split = split or ("test" if loaders.test is not None else "val")
    _check_split(split)
    loader = {"train": loaders.train, "val": loaders.val, "test": loaders.test or loaders.val}[split]
    pre = loaded.preprocess
    model = loaded.model.to(torch_device)
    pred = rep.collect_predictions(model, loader, mean=pre["mean"], std=pre["std"], device=torch_device)
    data = rep.summarise(pred, loaded.class_names, split)
    extra = _robustness(model, loader, pre, torch_device, loaded.class_names) if robustness else None
    if extra is not None:
        extra["images"] = min(ROBUSTNESS_IMAGES, data.count)
    summary = summarize(model.cpu(), (pre["channels"], *pre["input_size"]))
    config_file = run_dir / "config.yaml"
    return rep.write_report(
        Path(out_dir) if out_dir else run_dir / "report", data, pred,
        history=_read_history(run_dir / "metrics.csv"),
        preview=_train_preview(loaded, torch_device, data_dir),
        config_text=config_file.read_text(encoding="utf-8") if config_file.is_file() else "",
        summary_text=format_summary(summary),
        title=f"{run_dir.name}: {loaded.payload['model']['name']} on {cfg.data.name}",
        robustness=extra,
    )  # fmt: skip


# Images of the split that the (slower) robustness measurements use.
ROBUSTNESS_IMAGES = 1000


def _read_history(metrics_csv: Path) -> list[dict[str, Any]]:
    import csv

    if not metrics_csv.is_file():
        return []
    with metrics_csv.open(encoding="utf-8") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(value: str) -> Any:
    try:
        return float(value) if value not in ("", "None") else None
    except ValueError:
        return value


def _train_preview(loaded: LoadedCheckpoint, device: torch.device, data_dir: str | None, count: int = 16):
    """The first training batch after augmentation, de-normalised, with class names."""
    loaders, _, _ = _checkpoint_loaders(loaded, data_dir=data_dir, device=device, training=True)
    images, labels = next(iter(loaders.train))
    pre = loaded.preprocess
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
    shown = (images[:count].cpu().float() * std + mean).clamp(0, 1)
    return shown, [loaded.class_names[int(i)] for i in labels[:count]]


def _robustness(model, loader, pre, device, class_names) -> dict[str, Any]:
    from cnnkit.evaluation import plots
    from cnnkit.evaluation.robustness import Normalisation, robustness_table

    rows, example = robustness_table(model, loader, Normalisation.of(pre["mean"], pre["std"]), device=device,
                                     max_images=ROBUSTNESS_IMAGES)  # fmt: skip
    figure = None
    if example is not None:
        diff = (example["adversarial"] - example["clean"]).abs()
        diff = diff / max(float(diff.max()), 1e-8)  # amplified to be visible
        figure = plots.image_grid_figure(
            torch.stack([example["clean"], example["adversarial"], diff]),
            [f"original: {class_names[example['clean_pred']]}",
             f"FGSM {example['eps']}/255: {class_names[example['adv_pred']]}", "perturbation (amplified)"],
            ncols=3, title=f"true class: {class_names[example['label']]}",
        )  # fmt: skip
    return {"rows": rows, "figure": figure}


# ----------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What ``cnnkit export`` wrote and how the file compares with PyTorch.

    Attributes:
        path: the exported file (written even when parity failed, for inspection).
        format: ``onnx`` or ``torchscript``.
        parity: the exported file's logits against PyTorch's on ``checked``.
        checked: what the parity images were (``validation images`` or ``given images``).
        exported: how the file was made (exporter, opset, seconds).
        notes: exporter fallbacks, tracing warnings, skipped image files.
    """

    path: Path
    format: str
    parity: export.ParityResult
    checked: str
    exported: export.ExportedFile
    notes: list[str] = field(default_factory=list)


def export_checkpoint(
    path: str | Path, fmt: str = "onnx", *, out: str | Path | None = None, dynamic_batch: bool = False,
    opset: int | None = None, check_images: list[str] | None = None, tolerance: float = export.DEFAULT_TOLERANCE,
    data_dir: str | None = None, count: int = 64,
) -> ExportResult:  # fmt: skip
    """Export a checkpoint (or run folder) to ONNX or TorchScript and check it against PyTorch.

    Args:
        path: run folder (its ``best.pt``) or ``.pt`` checkpoint.
        fmt: ``onnx`` or ``torchscript``.
        out: the file to write (default: ``RUN/export/model.onnx`` or
            ``model.torchscript.pt`` for a run folder, else beside the ``.pt`` file).
        dynamic_batch: ONNX only: any batch size (default: a fixed batch of 1).
        opset: ONNX only: opset version (default: the exporter's).
        check_images: image files/folders for the parity check (default: the first
            ``count`` images of the run's validation split).
        tolerance: largest absolute logit difference that passes.
        data_dir: folder holding the run's dataset, if not where it was trained.
        count: validation images to check when no ``check_images`` are given.

    Raises:
        UsageError: an unknown format, an ONNX-only option with TorchScript, a bad tolerance.
        CnnkitError: no checkpoint, no parity images, or an export failure.
    """
    _check_export_options(fmt, dynamic_batch, opset, tolerance, count)
    loaded = load_checkpoint(path)
    images, checked, notes = _parity_images(loaded, check_images, data_dir, count)
    target = Path(out) if out else _export_path(Path(path), loaded.path, fmt)
    # the example fixes the file's batch size (1) unless dynamic_batch; any image traces the same graph
    exported = export.export_model(loaded.model, images[:1], target, checkpoint_metadata(loaded.payload), fmt,
                                   dynamic_batch=dynamic_batch, opset=opset)  # fmt: skip
    reference = export.reference_logits(loaded.model, images)
    parity = export.check_parity(reference, export.exported_logits(exported.path, fmt, images), tolerance)
    return ExportResult(exported.path, fmt, parity, checked, exported, exported.notes + notes)


def _check_export_options(fmt: str, dynamic_batch: bool, opset: int | None, tolerance: float, count: int) -> None:
    if fmt not in export.FORMATS:
        raise unknown_name("format", fmt, export.FORMATS)
    if fmt != "onnx" and (dynamic_batch or opset is not None):
        raise UsageError("--dynamic-batch and --opset apply to --format onnx (a traced TorchScript file takes any batch)")
    if opset is not None and opset < 7:
        raise UsageError(f"--opset must be 7 or more, got {opset}")
    if not tolerance >= 0:  # also refuses NaN
        raise UsageError(f"--tolerance must be 0 or more, got {tolerance}")
    if count < 1:
        raise UsageError(f"the parity check needs at least 1 image, got count={count}")


def _export_path(given: Path, checkpoint: Path, fmt: str) -> Path:
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    if given.is_dir():
        return given / "export" / f"model{suffix}"
    return checkpoint.with_name(checkpoint.stem + suffix)


def _parity_images(loaded: LoadedCheckpoint, files: list[str] | None, data_dir: str | None,
                   count: int) -> tuple[torch.Tensor, str, list[str]]:  # fmt: skip
    """Normalised images ``[N, C, H, W]`` for the parity check, what they are, and notes."""
    if files:
        images, skipped = export.prepare_files(files, checkpoint_metadata(loaded.payload))
        notes = [f"skipped {item.source}: {item.reason}" for item in skipped]
        if images is None:
            raise CnnkitError(f"none of the --check-images could be used ({'; '.join(notes)[:500]})")
        return images, "given images", notes
    try:
        loaders, _, _ = _checkpoint_loaders(loaded, data_dir=data_dir, device=torch.device("cpu"))
    except DataError as err:
        raise CnnkitError(f"the parity check needs the run's validation images, which were not found ({err}); "
                          "pass --check-images FILES, or --data-dir FOLDER holding the run's data") from None  # fmt: skip
    batches, have = [], 0
    for images, _ in loaders.val:
        batches.append(images[: count - have].cpu().float())
        have += len(batches[-1])
        if have >= count:
            break
    if not batches:
        raise CnnkitError("the run's validation split is empty; pass --check-images FILES")
    return torch.cat(batches), "validation images", []


@dataclass
class PredictSummary:
    """What ``cnnkit predict`` did: counts, skipped files, throughput and where results went."""

    predicted: int
    skipped: list[Any]
    unknown: int
    seconds: float
    out: Path | None
    backend: str

    def as_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "skipped": len(self.skipped), "unknown": self.unknown,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.predicted / max(self.seconds, 1e-9), 1),
                "backend": self.backend}  # fmt: skip


def predict(
    model: str | Path,
    inputs: list[str],
    *,
    out: str | Path | None = None,
    backend: str = "auto",
    device: str = "cpu",
    topk: int = 5,
    batch_size: int = 64,
    workers: int | None = None,
    tta: bool = False,
    threshold: float | None = None,
    progress: bool = True,
    amp: str = "off",
) -> PredictSummary:
    """Predict every image among ``inputs`` (files, folders, globs), streaming results to ``out``.

    ``amp`` (torch backend): ``off`` (float32), ``bf16``, ``fp16`` or ``auto`` (bf16 on CUDA).

    Unreadable files and inputs that match nothing are skipped and listed (in ``out`` and
    the returned summary); they never end the run. ``out`` is a .csv, .json or .jsonl file
    written atomically, or None for one line per image on stdout.

    Raises:
        UsageError: bad option values. CnnkitError: an unusable model file, or no file at all.
    """
    from tqdm import tqdm

    from cnnkit.inference import Predictor, expand_inputs
    from cnnkit.inference.output import check_out_path, open_writer

    _check_predict_options(topk, batch_size, workers, threshold)
    out_path = check_out_path(out) if out is not None else None
    predictor = Predictor.load(model, backend=backend, device=device, amp=amp)
    files, missing = expand_inputs(inputs)
    if not files:
        raise CnnkitError("no files to predict: " + "; ".join(f"{m.source}: {m.reason}" for m in missing))
    writer, target = open_writer(out_path, topk)
    start = time.perf_counter()
    try:
        for item in missing:
            writer.write(item)
        bar = tqdm(total=len(files), unit="img", disable=not progress or None, file=sys.stderr, leave=False)
        for item in predictor.predict_files(files, topk=topk, batch_size=batch_size, workers=workers,
                                            tta=tta, threshold=threshold):  # fmt: skip
            writer.write(item)
            bar.update()
        bar.close()
        summary = PredictSummary(writer.predicted, writer.skipped, writer.unknown, time.perf_counter() - start,
                                 out_path, predictor.backend.name)  # fmt: skip
        writer.finish(summary.as_dict())
    except BaseException:
        if target is not None:
            target.discard()
        raise
    if target is not None:
        target.commit()
    return summary


def _check_predict_options(topk: int, batch_size: int, workers: int | None, threshold: float | None) -> None:
    if topk < 1:
        raise UsageError(f"--topk must be at least 1, got {topk}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold is a probability in [0, 1], got {threshold}")

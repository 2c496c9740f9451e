"""Experiment tracking: TensorBoard event files in every run, MLflow or W&B when asked.

:class:`RunLoggers` hands what a run reports to each logger: the config and the model
graph (models up to 100 modules) when training starts, a grid of the first training images as the model saw them
(augmented, de-normalised) at the end of the epoch they came in, every epoch's metrics row
under the names of the ``metrics.csv`` columns (``train_loss``, ``val_acc``, ``lr``...,
step = epoch), and the test result at the end.

- **TensorBoard** (``RunConfig.tensorboard``, on by default) writes ``RUN/tensorboard/``;
  ``tensorboard --logdir runs`` shows every run side by side. A resumed run opens the
  folder with ``purge_step`` at its first new epoch, so no epoch appears twice.
- **MLflow** (``--log mlflow``, needs ``mlflow`` or ``mlflow-skinny``) logs to
  ``$MLFLOW_TRACKING_URI``, or else a file store in ``OUTPUT_DIR/mlruns``; experiment
  ``$MLFLOW_EXPERIMENT_NAME`` or ``cnnkit``; the config as parameters.
- **Weights & Biases** (``--log wandb``, needs ``wandb``) logs to project ``$WANDB_PROJECT``
  or ``cnnkit``; offline when ``WANDB_MODE=offline`` or ``CNNKIT_OFFLINE=1``.

A resumed run continues the same MLflow / W&B run (their ids are kept in
``RUN/tracking.json``). A logger that fails in the middle of a run is switched off with a
warning: logging never costs the training run.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import settings
from cnnkit.config import TRACKERS, RunConfig, flatten
from cnnkit.errors import CnnkitError, unknown_name
from cnnkit.runfolder import RunFolder

# The package each tracker imports, and what to install for it.
_PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"),
             "mlflow": ("mlflow", "pip install 'cnnkit[mlflow]' (mlflow-skinny) or pip install mlflow"),
             "wandb": ("wandb", "pip install 'cnnkit[wandb]' (or pip install wandb)")}  # fmt: skip
IMAGES_SHOWN = 16  # training images in the logged grid
# Larger models get no TensorBoard graph: torch.jit.trace runs the model three times with
# first-call costs, about 40 ms a module on 2 CPU cores (EfficientNet-Lite0, 276 modules:
# 12 s, more than a frozen rerun on cached features trains); LeNet 15, VGG16-BN 55, ResNet-18 71.
GRAPH_MAX_MODULES = 100


def requested(cfg: RunConfig) -> list[str]:
    """The trackers a config asks for, in :data:`TRACKERS` order.

    TensorBoard comes from ``cfg.tensorboard``; ``cfg.loggers`` adds ``mlflow`` and/or
    ``wandb`` (comma-separated; ``tensorboard`` there is allowed and changes nothing).

    Raises:
        UsageError: an unknown name (the valid ones are listed).
    """
    names = {name.strip().lower() for name in (cfg.loggers or "").split(",") if name.strip()}
    for name in names:
        if name not in TRACKERS:
            raise unknown_name("logger", name, TRACKERS)
    names.discard("tensorboard")
    if cfg.tensorboard:
        names.add("tensorboard")
    return [name for name in TRACKERS if name in names]


def check_loggers(cfg: RunConfig) -> list[str]:
    """Check, before any slow work, that each asked-for optional tracker can be imported.

    Returns the trackers that will run (TensorBoard is skipped with a note in
    :func:`open_loggers` when its package is missing: it was not asked for explicitly).

    Raises:
        UsageError: an unknown logger name.
        CnnkitError: ``--log mlflow`` or ``--log wandb`` without the package installed.
    """
    names = requested(cfg)
    for name in names:
        module, install = _PACKAGES[name]
        if name != "tensorboard" and importlib.util.find_spec(module) is None:
            raise CnnkitError(f"--log {name} needs the {module} package, which is not installed: {install}")
    return names


@contextmanager
def open_loggers(run_dir: Path, cfg: RunConfig, *, first_epoch: int = 1,
                 say: Callable[[str], None] = print) -> Iterator[RunLoggers]:  # fmt: skip
    """The run's loggers, closed on leaving (a run that raised is marked failed/killed).

    Args:
        run_dir: the run folder (``tensorboard/`` and ``tracking.json`` go there).
        cfg: the resolved config (logged once, as text or parameters).
        first_epoch: the first epoch this process trains (> 1 when resuming): earlier
            steps are kept, later ones purged, and graph and images are not logged again.
        say: receives notes and warnings.
    """
    loggers = []
    for name in check_loggers(cfg):
        if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            say(f"note: no TensorBoard event files: the tensorboard package is not installed ({_PACKAGES[name][1]})")
            continue
        try:
            loggers.append(_OPENERS[name](run_dir, cfg, first_epoch))
        except Exception as err:  # noqa: BLE001 (an unreachable tracking server must not cost the run)
            say(f"warning: {name} logging could not start ({type(err).__name__}: {str(err)[:300]}); "
                "training goes on without it")
    trackers = RunLoggers(loggers, say, first_epoch)
    status = "FINISHED"
    try:
        yield trackers
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        trackers.close(status)


class RunLoggers:
    """Fans a run's reports out to its loggers; see the module docstring for what is logged.

    Each logger has ``config(cfg)``, ``graph(model, example)``, ``images(grid, step)``,
    ``metrics(values, step)`` and ``close(status)``; any of them failing switches that
    logger off with one warning.
    """

    def __init__(self, loggers: list[Any], say: Callable[[str], None] = print, first_epoch: int = 1) -> None:
        self.loggers = loggers
        self.say = say
        self.first_epoch = first_epoch
        self._pending: torch.Tensor | None = None  # the image grid, logged at its epoch's end
        self._images_done = first_epoch > 1  # a resumed run logged them when it started

    @property
    def names(self) -> list[str]:
        return [logger.name for logger in self.loggers]

    def start(self, model: nn.Module, input_shape: tuple[int, int, int], cfg: RunConfig) -> None:
        """Log the config and, in a run's first process, the model graph (where it traces, and
        for models of at most :data:`GRAPH_MAX_MODULES` modules: a note says when it is left out)."""
        self._each("config", cfg)
        if self.first_epoch > 1:
            return
        graphing = [logger for logger in self.loggers if hasattr(logger, "graph")]
        modules = sum(1 for _ in model.modules())
        if graphing and modules > GRAPH_MAX_MODULES:
            self.say(f"note: no model graph in TensorBoard: {cfg.model.name} has {modules:,} modules "
                     f"(tracing more than {GRAPH_MAX_MODULES} takes seconds at every start)")  # fmt: skip
            return
        for logger in graphing:
            try:
                logger.graph(model, torch.zeros(1, *input_shape, device=_device_of(model)))
            except Exception as err:  # noqa: BLE001 (models that do not trace still train)
                self.say(f"note: no model graph in TensorBoard: {type(err).__name__}: {str(err)[:200]}")

    def watch(self, loaders: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
        """``loaders`` with a train loader that keeps a copy of the first image batch it
        yields (nothing else changes: the batches, their order and the RNG are untouched)."""
        if self._images_done or not self.loggers:
            return loaders
        return (_FirstBatch(loaders[0], self, mean, std), *loaders[1:])

    def log_epoch(self, row: dict[str, Any]) -> None:
        """The ``on_epoch_end`` callback of :func:`cnnkit.engine.fit`: one metrics row."""
        step = int(row["epoch"])
        if self._pending is not None:
            self._each("images", self._pending, step)
            self._pending, self._images_done = None, True
        self._each("metrics", _numbers(row), step)

    def log_test(self, result: Any, step: int) -> None:
        """The test split's loss and accuracy, at the run's last epoch."""
        values = {"test_loss": result.loss, "test_acc": result.acc, "test_top5": result.top5}
        self._each("metrics", _numbers(values), step)

    def keep_images(self, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if self._pending is None and not self._images_done and images.dim() == 4:  # [B, C, H, W], not features
            self._pending = image_grid(images[:IMAGES_SHOWN], mean, std)

    def close(self, status: str = "FINISHED") -> None:
        self._each("close", status)
        self.loggers = []

    def _each(self, method: str, *args: Any) -> None:
        for logger in list(self.loggers):
            if not hasattr(logger, method):
                continue
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # noqa: BLE001 (a tracker's failure must never end the run)
                self.loggers.remove(logger)
                self.say(f"warning: {logger.name} logging failed ({type(err).__name__}: {err}); "
                         f"it is off for the rest of this run")  # fmt: skip


class _FirstBatch:
    """A train loader that hands :class:`RunLoggers` a copy of its first image batch."""

    def __init__(self, loader: Any, trackers: RunLoggers, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.loader, self.trackers, self.mean, self.std = loader, trackers, mean, std

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if not self.trackers._images_done and self.trackers._pending is None:
                self.trackers.keep_images(batch[0], self.mean, self.std)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # set_epoch, labels, bad_files... of the loader
        if "loader" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["loader"], name)


def image_grid(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised images ``[N, C, H, W]`` -> one de-normalised RGB grid ``[3, H', W']`` in [0, 1]."""
    from torchvision.utils import make_grid

    images = images.detach().float().cpu()
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return make_grid((images * std_t + mean_t).clamp(0, 1), nrow=8, padding=2)


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics row (``epoch`` is the step, None values are absent)."""
    return {key: float(value) for key, value in values.items()
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)}  # fmt: skip


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _config_params(cfg: RunConfig) -> dict[str, str]:
    """The config as flat ``section.key`` -> string parameters (long notes cut to 500 characters)."""
    return {key: str(value)[:500] for key, value in flatten(cfg.to_dict()).items()}


def _read_ids(run_dir: Path) -> dict[str, str]:
    """``tracking.json``: the MLflow / W&B run ids a resumed run continues ({} when none)."""
    ids = RunFolder(run_dir, writer=False).read_json(RunFolder.TRACKING, {})
    return ids if isinstance(ids, dict) else {}


def _write_id(run_dir: Path, key: str, value: str) -> None:
    RunFolder(run_dir).write_json(RunFolder.TRACKING, {**_read_ids(run_dir), key: value})


# ----------------------------------------------------------------------------- loggers


class TensorBoardLogger:
    """Event files in ``RUN/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, cfg: RunConfig, first_epoch: int = 1) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides whatever an interrupted process logged at or after this epoch
        self.writer = SummaryWriter(str(RunFolder(run_dir).file(RunFolder.TENSORBOARD)),
                                    purge_step=first_epoch if first_epoch > 1 else None)  # fmt: skip

    def config(self, cfg: RunConfig) -> None:
        import yaml

        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # indented: markdown code

    def graph(self, model: nn.Module, example: torch.Tensor) -> None:
        """The traced graph; a model that cannot be traced is noted, not an error."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
                self.writer.add_graph(model, example)
        finally:
            model.train(was_training)

    def images(self, grid: torch.Tensor, step: int) -> None:
        self.writer.add_image("train_images", grid, step)
        self.writer.flush()

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a killed run keeps every finished epoch

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowLogger:
    """One MLflow run per cnnkit run, through ``MlflowClient`` (no global active run)."""

    name = "mlflow"

    def __init__(self, run_dir: Path, cfg: RunConfig, first_epoch: int = 1) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # cnnkit's default: a file store beside the run folders
            uri = (Path(cfg.output_dir) / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks to opt in to file stores
        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self.run_dir = uri, run_dir
        self.run_id = self._resumed_run(_read_ids(run_dir).get("mlflow_run_id")) or self._new_run(cfg)
        _write_id(run_dir, "mlflow_run_id", self.run_id)

    def _resumed_run(self, run_id: str | None) -> str | None:
        if run_id is None:
            return None
        try:
            self.client.update_run(run_id, status="RUNNING")
        except Exception:  # noqa: BLE001 (another tracking URI, or the run was deleted: start a new one)
            return None
        return run_id

    def _new_run(self, cfg: RunConfig) -> str:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "cnnkit"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"cnnkit.run_dir": str(self.run_dir.resolve())})  # fmt: skip
        params = [Param(key, value) for key, value in _config_params(cfg).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(run.info.run_id, params=params[start:start + 100])
        return run.info.run_id

    def images(self, grid: torch.Tensor, step: int) -> None:
        pixels = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # [H, W, 3]
        self.client.log_image(self.run_id, pixels, artifact_file=f"train_images_epoch{step}.png")

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def close(self, status: str) -> None:
        run = RunFolder(self.run_dir, writer=False)
        for path in (run.config_file, run.metrics_file):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=status)


class WandbLogger:
    """One W&B run per cnnkit run, files under ``RUN/wandb/``."""

    name = "wandb"

    def __init__(self, run_dir: Path, cfg: RunConfig, first_epoch: int = 1) -> None:
        import wandb

        self.wandb = wandb
        offline = settings.offline() and "WANDB_MODE" not in os.environ
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "cnnkit", name=run_dir.name,
                              dir=str(run_dir), config=cfg.to_dict(), id=_read_ids(run_dir).get("wandb_run_id"),
                              resume="allow", mode="offline" if offline else None)  # fmt: skip
        _write_id(run_dir, "wandb_run_id", self.run.id)

    def images(self, grid: torch.Tensor, step: int) -> None:
        pixels = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        self.run.log({"train_images": self.wandb.Image(pixels)}, step=step)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


_OPENERS: dict[str, Callable[[Path, RunConfig, int], Any]] = {
    "tensorboard": TensorBoardLogger, "mlflow": MlflowLogger, "wandb": WandbLogger}  # fmt: skip

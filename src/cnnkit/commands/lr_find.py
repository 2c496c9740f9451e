"""``cnnkit lr-find``: the learning-rate range test on the data and model ``train`` would use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.commands.train_run import check_run_config, load_run_code, new_run_folder, prepare
from cnnkit.config import RunConfig, keyword_overrides, resolve_config
from cnnkit.data import DataSpec
from cnnkit.engine import distributed
from cnnkit.engine.features import HeadOnly
from cnnkit.engine.lr_find import LrFindResult, default_steps, lr_range_test
from cnnkit.engine.lr_find import plot as lr_plot
from cnnkit.engine.phases import first_phase_inputs
from cnnkit.evaluation.plots import save_png
from cnnkit.log import console, logger, say
from cnnkit.runfolder import RunFolder


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
    """Sweep the learning rate on the data and model :func:`cnnkit.train` would use.

    Takes the same options as ``train``; writes ``lr_find.png``, ``lr_find.json`` and
    ``config.yaml`` into a new run folder (``NAME-lrfind-TIME``) and returns the sweep and
    that folder. The model is built, seeded and initialised exactly as ``train`` builds it.
    """
    with console(log):
        cfg = config if config is not None else resolve_config(recipe, config_file, keyword_overrides(overrides))
        load_run_code(cfg)  # FILE.py:NAME model or dataset code named here: imported now, as asked
        cfg = check_run_config(cfg, tracked=False)
        session = prepare(cfg)
        folder = new_run_folder(cfg, distributed.current(), kind="lrfind")
        with folder.lock(), folder.logging_to_file(logger):
            folder.write_config(cfg)
            say(f"run folder: {folder.path}")
            result = sweep(session.model, session.loaders, cfg, session.spec, session.device, folder,
                           start_lr=start_lr, end_lr=end_lr, steps=steps)  # fmt: skip
        return result, folder.path


def sweep(model: nn.Module, loaders: Any, cfg: RunConfig, spec: DataSpec, device: torch.device, folder: RunFolder,
          progress: bool = True, **options: Any) -> LrFindResult:  # fmt: skip
    """Run the range test on what the run's first phase trains (see
    :func:`~cnnkit.engine.phases.first_phase_inputs`: a frozen backbone's head sweeps on the
    cached features), save its plot and numbers in the folder, log the suggestion."""
    trained, loader = first_phase_inputs(model, loaders, cfg, spec, device, say, progress)
    batch = distributed.local_batch_size(cfg.data.batch_size, distributed.current())
    steps = options.get("steps") or default_steps(batch)
    what = "the head on the cached backbone features" if isinstance(trained, HeadOnly) else "the model"
    say(f"lr-find: sweeping the learning rate over {steps} steps, training {what} "
        f"({cfg.train.optimizer}, batch {batch}) ...")  # fmt: skip
    result = lr_range_test(trained, loader, cfg.train, device=device, progress=progress, **options)
    figure = lr_plot(result, title=f"{cfg.model.name} on {cfg.data.name}: learning-rate range test")
    if folder.writer:
        save_png(figure, folder.file(RunFolder.LR_FIND_PLOT), dpi=120)
    folder.write_json(RunFolder.LR_FIND, result.as_dict())
    ended = "the loss diverged" if result.diverged else "the sweep ended"
    say(f"lr-find: suggested lr {result.suggestion:.2e} (the lower of the steepest descent, {result.steepest_lr:.2e}, "
        f"and a tenth of the lowest loss's lr, {result.min_loss_lr:.2e}); "
        f"{len(result.lrs)} steps until {ended}; plot: {folder.file(RunFolder.LR_FIND_PLOT)}")  # fmt: skip
    if result.doubtful:
        logger.warning(f"warning: the loss fell only {result.fall:.1%} during the sweep, so the suggestion is a guess; "
                       "sweep longer (--steps), check the data and model, or choose the lr by hand")  # fmt: skip
    return result


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``--lr auto``'s sweep: no training step was taken, so there is nothing
    to resume; ``advice`` says what works instead."""

    def __init__(self, advice: str) -> None:
        super().__init__(advice)
        self.advice = advice


def sweep_and_adopt(model: nn.Module, loaders: Any, cfg: RunConfig, spec: DataSpec, device: torch.device,
                    folder: RunFolder, progress: bool = True) -> None:  # fmt: skip
    """``--lr auto``: sweep (rank 0 on its shard while the others wait), then train at the suggestion.

    Raises:
        SweepInterrupted: Ctrl-C during the sweep (a ``KeyboardInterrupt`` whose advice is
            to run again or to give the lr, not to resume a run that never trained).
    """
    try:
        suggestion = sweep(model, loaders, cfg, spec, device, folder, progress).suggestion if folder.writer else None
    except KeyboardInterrupt:
        raise SweepInterrupted("stopped during the lr sweep, before training began (nothing to resume); "
                               "run the command again, or give a fixed rate instead of --lr auto "
                               f"(e.g. --lr {cfg.train.lr:g})") from None  # fmt: skip
    cfg.train.lr = distributed.broadcast(suggestion)
    folder.write_config(cfg)  # the run trains at the suggested lr


def main(args: Any) -> None:
    """``cnnkit lr-find``."""
    from cnnkit.config import overrides_from_args

    overrides = overrides_from_args(args)
    overrides.pop("train.lr_find", None)
    cfg = resolve_config(args.recipe, args.config, overrides)
    result, _ = lr_find(config=cfg, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    print(f"suggested lr: {result.suggestion:.2e}  (use --lr {result.suggestion:.2g}, or --lr auto in train)")



"""``cnnkit lr-find``: the learning-rate range test on the data and model ``train`` would use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.commands.run_files import new_run_folder
from cnnkit.commands.setup import check_run_config, load_run_code, prepare
from cnnkit.config import RunConfig, keyword_overrides, resolve_config
from cnnkit.engine import distributed
from cnnkit.engine.lr_find import LrFindResult, lr_range_test
from cnnkit.engine.lr_find import plot as lr_plot
from cnnkit.evaluation.plots import save_png
from cnnkit.log import console, logger, say
from cnnkit.models import BackboneClassifier
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
        if isinstance(session.model, BackboneClassifier):
            session.model.freeze_backbone(cfg.train.freeze or bool(cfg.train.fine_tune))  # the first phase's
        folder = new_run_folder(cfg, distributed.current(), kind="lrfind")
        with folder.lock(), folder.logging_to_file(logger):
            folder.write_config(cfg)
            say(f"run folder: {folder.path}")
            result = sweep(session.model, session.loaders.train, cfg, session.device, folder,
                           start_lr=start_lr, end_lr=end_lr, steps=steps)  # fmt: skip
        return result, folder.path


def sweep(model: nn.Module, loader: Any, cfg: RunConfig, device: torch.device, folder: RunFolder,
          **options: Any) -> LrFindResult:  # fmt: skip
    """Run the range test, save its plot and numbers in the folder, log the suggestion."""
    batch = distributed.local_batch_size(cfg.data.batch_size, distributed.current())
    say(f"lr-find: sweeping the learning rate ({cfg.train.optimizer}, batch {batch}) ...")
    result = lr_range_test(model, loader, cfg.train, device=device, **options)
    figure = lr_plot(result, title=f"{cfg.model.name} on {cfg.data.name}: learning-rate range test")
    if folder.writer:
        save_png(figure, folder.file("lr_find.png"), dpi=120)
    folder.write_json("lr_find.json", result.as_dict())
    ended = "the loss diverged" if result.diverged else "the sweep ended"
    say(f"lr-find: suggested lr {result.suggestion:.2e} (the lower of the steepest descent, {result.steepest_lr:.2e}, "
        f"and a tenth of the lowest loss's lr, {result.min_loss_lr:.2e}); "
        f"{len(result.lrs)} steps until {ended}; plot: {folder.file('lr_find.png')}")  # fmt: skip
    if result.doubtful:
        logger.warning(f"warning: the loss fell only {result.fall:.1%} during the sweep, so the suggestion is a guess; "
                       "sweep longer (--steps), check the data and model, or choose the lr by hand")  # fmt: skip
    return result


def sweep_and_adopt(model: nn.Module, loader: Any, cfg: RunConfig, device: torch.device, folder: RunFolder) -> None:
    """``--lr auto``: sweep (rank 0 on its shard while the others wait), then train at the suggestion."""
    suggestion = sweep(model, loader, cfg, device, folder).suggestion if folder.writer else None
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



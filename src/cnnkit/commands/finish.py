"""The end of a training run: ``summary.json`` and the report."""

from __future__ import annotations

from typing import Any

from cnnkit.config import RunConfig
from cnnkit.errors import CnnkitError
from cnnkit.log import logger, say
from cnnkit.runfolder import RunFolder


def finish_run(folder: RunFolder, run: Any, result: Any, cfg: RunConfig, scores: tuple[str, Any] | None) -> None:
    """Write ``summary.json`` and, unless ``--no-report``, ``report/``.

    ``scores``: ``(split, Scores)`` the run already has (the final test evaluation's, or a
    frozen backbone's val scores from its cached features), which the report reuses
    instead of running the model over that split again (None: the report scores its split).
    """
    summary = {**run.metrics, "epochs_run": len(result.history), "stopped_early": result.stopped_early}
    folder.write_json("summary.json", summary)
    if cfg.report:
        _write_report(folder, cfg, scores)


def _write_report(folder: RunFolder, cfg: RunConfig, scores: tuple[str, Any] | None) -> None:
    """The report; the run itself is already saved, so a data problem only warns."""
    from cnnkit.commands.report import report

    split, split_scores = scores if scores is not None else (None, None)
    try:
        path = report(folder.path, split=split, device=cfg.train.device, data_dir=cfg.data.data_dir,
                      scores=split_scores)  # fmt: skip
    except CnnkitError as err:
        logger.warning(f"warning: no report written: {err}")
        return
    say(f"report: {path}")

"""The end of a training run: ``summary.json`` and the report."""

from __future__ import annotations

from typing import Any

from cnnkit.config import RunConfig
from cnnkit.errors import CnnkitError
from cnnkit.log import logger, say
from cnnkit.runfolder import RunFolder


def finish_run(folder: RunFolder, run: Any, result: Any, cfg: RunConfig, session: Any, scores: Any) -> None:
    """Write ``summary.json`` and, unless ``--no-report``, ``report/``.

    ``scores``: the final test evaluation's logits, which the report reuses instead of
    running the model over the split again (None: the report scores it itself).
    """
    summary = {**run.metrics, "epochs_run": len(result.history), "stopped_early": result.stopped_early}
    folder.write_json("summary.json", summary)
    if cfg.report:
        _write_report(folder, cfg, session, scores)


def _write_report(folder: RunFolder, cfg: RunConfig, session: Any, scores: Any) -> None:
    """The report; the run itself is already saved, so a data problem only warns."""
    from cnnkit.commands.report import report

    try:
        path = report(folder.path, device=cfg.train.device, data_dir=cfg.data.data_dir, scores=scores)
    except CnnkitError as err:
        logger.warning(f"warning: no report written: {err}")
        return
    say(f"report: {path}")

"""``cnnkit train``: resolve and check the config, build data and model, fit, test, report.

Read :func:`train` top to bottom: everything is validated before the run folder exists,
then :func:`_run` trains inside it and records how the run ended in ``status.json``. What
the run is built from (checks, session, run folder files, resuming) is in
:mod:`cnnkit.commands.train_run`; the loop in :mod:`cnnkit.engine`. The end of the run
(:func:`_finish`) writes ``summary.json`` and the report from the model, loaders and
scores in memory, and checks the recipe's stated expectation.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cnnkit.atomic import is_disk_full
from cnnkit.checkpoint import Checkpoint
from cnnkit.commands.train_confidence import Confidence, fit_confidence
from cnnkit.commands.train_run import (
    IN_USE_ADVICE,
    Session,
    balanced_class_weights,
    check_run_config,
    check_same_data,
    code_lines,
    describe_checkpoint,
    describe_run,
    fmt_values,
    list_skipped_files,
    load_run_code,
    log_data_check,
    new_run_folder,
    position,
    prepare,
    quick_data_check,
    record_resume,
    refuse_folder_in_use,
    resume_state,
    saved_split,
)
from cnnkit.config import RunConfig, keyword_overrides, resolve_config, to_yaml
from cnnkit.data import DataSpec
from cnnkit.data.folder import skipped_files_log
from cnnkit.data.tensor_data import WHOLE
from cnnkit.device import amp_dtype
from cnnkit.engine import EvalResult, distributed
from cnnkit.engine.epoch import TrainingStopped
from cnnkit.engine.phases import PhaseHooks, cached_head_scores, fit_phases, total_epochs
from cnnkit.engine.run_state import RunSaver
from cnnkit.errors import CnnkitError
from cnnkit.log import console, logger, quiet_unless, say
from cnnkit.runfolder import RunFolder
from cnnkit.scoring import Scores, ScoringSettings, metrics, score
from cnnkit.tracking import open_loggers

# A recipe's bar, the start of its ``expected`` text: ``>= 97% on the 2,000 held-out test digits``.
_BAR = re.compile(r"^\s*(>=|>|≥)\s*(\d+(?:\.\d+)?)\s*%")


@dataclass
class Run:
    """A finished training run: its folder, metrics and the trained model (best weights).

    Attributes:
        dir: the run folder (``config.yaml``, ``metrics.csv``, ``checkpoints/``...).
        config: the resolved config.
        spec: classes, preprocessing and split sizes of the data.
        model: the trained model with the best validation weights, in eval mode.
        history: one metrics dict per epoch (as in ``metrics.csv``).
        best_epoch: the epoch whose weights are ``best.pt``.
        test: evaluation of the best weights on the test split (None when there is none).
        seconds: wall time of the whole run.
        notes: what the data layer noted (split drawn, channels converted...).
        confidence: the temperature and open set fitted on the validation split when training
            ended (:mod:`cnnkit.commands.train_confidence`); ``best.pt`` records them.
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
    confidence: Confidence = field(default_factory=Confidence)

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
    def temperature(self) -> float:
        """The fitted temperature (1.0: none)."""
        return self.confidence.temperature

    @property
    def checkpoint(self) -> Path | None:
        return None if self.dir is None else RunFolder(self.dir).best

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
    should_stop: Callable[[], bool] | None = None,
    **overrides: Any,
) -> Run:
    """Train a model as ``cnnkit train`` does and return the :class:`Run`.

    Args:
        recipe: a shipped recipe name (see ``cnnkit recipes``); None: the default run.
        config: a ready :class:`RunConfig` (then ``recipe``/``config_file`` are ignored).
        config_file: a YAML file of config values layered over the recipe.
        progress: show progress bars (only on a terminal).
        log: receives each log line (default: printed, unless the ``cnnkit`` logger has
            handlers of your own); lines also go to the run's ``log.txt``.
        resume: a run folder to continue from its ``last.pt`` (killed, crashed or
            finished early), with its own config, split and data order; only
            :data:`cnnkit.commands.train_run.RESUME_OVERRIDES` may change (``epochs`` to train longer).
        check: first run the quick dataset check (:mod:`cnnkit.data.audit`) on a folder or
            CSV dataset: unusable data stops here, anything training survives is logged.
        trust_code: with ``resume``, the files/modules of the run's own model or dataset
            code that may be imported (``True``: whatever the checkpoint names).
        should_stop: asked between training steps and epochs (e.g. a ``threading.Event``'s
            ``is_set``); True stops the run there, resumable: ``last.pt`` records the position,
            ``status.json`` says ``interrupted`` and :class:`~cnnkit.engine.loop.TrainingStopped`
            is raised. Not under torchrun.
        **overrides: config values by field name (``epochs=2``, ``lr=0.01``, ``data="cifar10"``,
            ``data_dir=...``, ``model="vgg16_bn"``, ``model_kwargs={...}``) or dotted key.

    Raises:
        UsageError: a bad config value (nothing is written). CnnkitError / DataError:
            missing data, unusable files, a run that cannot resume.
        TrainingStopped: ``should_stop`` said so (the run folder is resumable).

    Example:
        >>> run = cnnkit.train(recipe="mnist-lenet", epochs=1, data_dir="../shared/data")
        >>> run.metrics["test_acc"]
    """
    with console(log):
        if resume is not None:
            cfg, folder, state = resume_state(resume, keyword_overrides(overrides), trust_code)
        else:
            cfg = config if config is not None else resolve_config(recipe, config_file, keyword_overrides(overrides))
            folder, state = None, None
            load_run_code(cfg)  # the FILE.py:NAME code this new run names: imported now, as asked
        cfg = check_run_config(cfg)
        data_check = quick_data_check(cfg, progress and distributed.from_environment().is_main) if check else None
        ranks = distributed.setup(cfg.train.device)  # under torchrun: join the group (a no-op otherwise)
        try:
            with quiet_unless(ranks.is_main):  # torchrun: only rank 0 prints
                return _run(cfg, folder, state, data_check, ranks, progress, should_stop)
        finally:
            distributed.teardown()


def _run(cfg: RunConfig, folder: RunFolder | None, state: Checkpoint | None, data_check: Any,
         ranks: distributed.DistEnv, progress: bool, should_stop: Callable[[], bool] | None = None) -> Run:  # fmt: skip
    """Train inside the run folder, holding its lock. Under torchrun every rank runs this on
    its shard of the data; only rank 0 writes files, locks and prints."""
    start = time.perf_counter()
    with ExitStack() as held:
        if folder is not None:  # resuming: its own folder, held before anything loads
            folder.writer = ranks.is_main  # a resumed run under torchrun: only rank 0 writes
            held.enter_context(folder.lock(advice=IN_USE_ADVICE))
        elif ranks.is_main:
            refuse_folder_in_use(cfg)  # --exist-ok on a folder in use: said before the data loads
        split = saved_split(folder) if state is not None else None
        session = prepare(cfg, resume=state, split=split, ranks=ranks)
        if state is not None:
            check_same_data(state, session.spec, folder)
        if folder is None:  # everything is checked: the new run's folder exists from here on
            folder = new_run_folder(cfg, ranks)
            held.enter_context(folder.lock())
        with folder.logging_to_file(logger), _recording_status(folder, ranks.is_main):
            if state is None:
                describe_run(folder, cfg, session.spec)
            _log_start(cfg, session, folder, state, data_check, ranks)
            if state is not None and folder.writer:
                record_resume(folder, cfg)
            result, test, scores, confidence = _fit_and_test(cfg, session, folder, state, data_check,
                                                              progress and ranks.is_main, should_stop)  # fmt: skip
            run = Run(folder.path, cfg, session.spec, session.model, result.history, result.best_epoch, test,
                      time.perf_counter() - start, session.spec.notes, confidence)  # fmt: skip
            if folder.writer:
                _finish(folder, run, result, session, scores)
    distributed.barrier()  # the other ranks leave once the run folder is complete
    return run


def _fit_and_test(cfg: RunConfig, session: Session, folder: RunFolder, state: Checkpoint | None, data_check: Any,
                  progress: bool, should_stop: Callable[[], bool] | None = None,
                  ) -> tuple[Any, EvalResult | None, tuple[str, Scores] | None, Confidence]:  # fmt: skip
    """Fit (every phase), reload the best weights, fit their temperature, score the test split
    with the run's TTA.

    Returns the fit result, the test evaluation, the scores the report can reuse with
    their split's name (None: the report scores its split itself) and the fitted confidence.
    """
    spec, model, loaders, device = session.spec, session.model, session.loaders, session.device
    if cfg.train.lr_find and state is None:  # --lr auto: sweep first, then train at the suggestion
        from cnnkit.commands.lr_find import sweep_and_adopt

        sweep_and_adopt(model, loaders, cfg, spec, device, folder, progress)
    describe = describe_checkpoint(cfg, spec, weights_source=_weights_source(session, state))
    for line in code_lines(describe):
        say(line)
    class_weights = balanced_class_weights(loaders.train, spec.num_classes) if cfg.data.balance == "weights" else None
    if class_weights is not None:
        say("note: class-balanced loss weights " + fmt_values([round(float(w), 3) for w in class_weights]))
    tracked = cfg if folder.writer else dataclasses.replace(cfg, tensorboard=False, loggers=None)
    first_epoch = state.training.epoch + 1 if state else 1
    with (skipped_files_log(folder.file(RunFolder.SKIP_LOG), loaders) as skip_log,  # bad files met by its loaders
          open_loggers(folder.path, tracked, first_epoch=first_epoch, say=say) as trackers):
        trackers.start(model, (spec.channels, *spec.input_size), cfg)  # TensorBoard, MLflow, W&B
        saver = RunSaver(folder, describe, save_every=cfg.train.save_every)  # one saver: it keeps best.pt to add to
        result = fit_phases(model, loaders, cfg, spec, saver=saver, resume=state,
                            hooks=PhaseHooks(say, progress, should_stop=should_stop, trackers=trackers),
                            class_weights=class_weights)  # fmt: skip
        result.run_dir = folder.path
        if folder.writer:  # the best epoch's weights, read once: the test, the report and Run.model use them
            model.load_state_dict(Checkpoint.load(folder.best).state_dict)
        distributed.broadcast_module(model)  # rank 0's best weights on every rank (no shared disk needed)
        confidence = fit_confidence(model, cfg, session, say) if folder.writer else Confidence()
        saver.save_confidence(confidence.temperature, confidence.open_set)
        test, scores = None, None
        if loaders.test is not None:  # the run's TTA and precision, as `cnnkit eval` scores
            scores = score(model, loaders.test, ScoringSettings.for_run(cfg, device))  # as validated
            test = metrics(scores, spec.num_classes, reduce=distributed.all_reduce_sum)
            trackers.log_test(test, step=len(result.history))
            if distributed.current().world > 1:
                scores = None  # each rank scored its shard: the report scores the whole split on rank 0
            report_scores = ("test", scores) if scores is not None else None
        else:  # no test split: the report shows val, from a frozen backbone's cached features if any
            report_scores = _val_scores(model, cfg, spec, device) if cfg.report else None
    if folder.writer:
        list_skipped_files(folder, skip_log, data_check, loaders)
    model.eval()
    return result, test, report_scores, confidence


def _val_scores(model: nn.Module, cfg: RunConfig, spec: DataSpec, device: Any) -> tuple[str, Scores] | None:
    """The val split's scores from its cached backbone features (see
    :func:`~cnnkit.engine.phases.cached_head_scores`), or None."""
    scores = cached_head_scores(model, cfg, spec, device, "val")
    if scores is None:
        return None
    say(f"report: val scores from the cached features through the head ({scores.count:,} images, no backbone pass)")
    return "val", scores


def _weights_source(session: Session, state: Checkpoint | None) -> str | None:
    if session.weights is not None:
        return session.weights.source
    return state.model.source if state is not None and state.model is not None else None


def _log_start(cfg: RunConfig, session: Session, folder: RunFolder, state: Checkpoint | None, data_check: Any,
               ranks: distributed.DistEnv) -> None:  # fmt: skip
    """The run's first lines: folder (or resumption), data, notes, model, device, precision."""
    spec, device = session.spec, session.device
    if state is None:
        say(f"run folder: {folder.path}")
        if ranks.active:
            say(f"distributed: {ranks.world} processes (torchrun), global batch {cfg.data.batch_size} = "
                f"{ranks.world} x {cfg.data.batch_size // ranks.world}; rank 0 writes this folder")  # fmt: skip
    else:
        say(f"resuming {folder.path} after epoch {state.training.epoch}"
            + position(state, len(session.loaders.train))
            + (f" on {ranks.world} processes" if ranks.active else ""))  # fmt: skip
    sizes = " / ".join(f"{name} {count:,}" for name, count in spec.sizes.items())
    say(f"data: {spec.name}  {spec.num_classes} classes  {sizes}  "
        f"input {spec.channels}x{spec.input_size[0]}x{spec.input_size[1]}")  # fmt: skip
    for note in spec.notes:
        say(f"note: {note}")
    for line in session.notes:
        say(line)
    if folder.writer:
        log_data_check(folder, data_check)
    params = sum(p.numel() for p in session.model.parameters())
    precision = amp_dtype(cfg.train.amp, device, training=True, deterministic=cfg.train.deterministic)
    say(f"model: {cfg.model.name} ({params:,} parameters)  device: {device}  epochs: {total_epochs(cfg.train)}  "
        f"precision: {'float32' if precision is None else str(precision).removeprefix('torch.') + ' autocast'}")


# ----------------------------------------------------------------------------- the end of the run


def _finish(folder: RunFolder, run: Run, result: Any, session: Session, scores: tuple[str, Scores] | None) -> None:
    """Write ``summary.json`` and, unless ``--no-report``, ``report/``; log the final line and
    what the recipe's expectation says of it (rank 0 only).

    ``scores``: ``(split, Scores)`` the run already has (the final test evaluation's, or a
    frozen backbone's val scores from its cached features), which the report reuses
    instead of running the model over that split again (None: the report scores its split).
    """
    folder.write_summary({**run.metrics, "epochs_run": len(result.history), "stopped_early": result.stopped_early})
    if run.config.report:
        _write_report(folder, run, session, scores)
    say(_final_line(run))
    for line in expectation_line(run.config, run):
        say(line)


def _write_report(folder: RunFolder, run: Run, session: Session, scores: tuple[str, Scores] | None) -> None:
    """The report from what is in memory: the best weights (already in ``run.model``), the
    loaders and the final evaluation's scores; nothing is loaded again. The run itself is
    already saved, so a problem here only warns."""
    from cnnkit.evaluation import report as rep

    cfg, loaders = run.config, session.loaders
    split, split_scores = scores if scores is not None else ("test" if loaders.test is not None else "val", None)
    loader = loaders.test if split == "test" else loaders.val
    inputs = rep.ReportInputs(
        model=run.model, loader=loader, split=split, class_names=list(run.spec.class_names),
        preprocess=run.spec.preprocess, config=cfg, device=session.device, history=run.history,
        title=f"{folder.name}: {cfg.model.name} on {cfg.data.name}", config_text=to_yaml(cfg),  # = config.yaml
        train_loader=loaders.train, scores=split_scores, temperature=run.temperature,
        open_set=run.confidence.open_set, known=run.confidence.val_known if split == "val" else None,
    )  # fmt: skip
    try:
        with _whole_split(loader):
            path = rep.write_report(inputs, folder.report_dir)
    except CnnkitError as err:
        logger.warning(f"warning: no report written: {err}")
        return
    say(f"report: {path}")


@contextmanager
def _whole_split(loader: Any) -> Iterator[None]:
    """Under torchrun each rank's loaders give its shard; the report (rank 0) scores the whole split."""
    part = getattr(loader, "part", WHOLE)
    loader.part = WHOLE
    try:
        yield
    finally:
        loader.part = part


def parse_bar(expected: str | None) -> tuple[str, float] | None:
    """A recipe's bar: ``">= 97% ..."`` -> ``(">=", 0.97)``; None when the text states none."""
    match = _BAR.match(expected or "")
    if match is None:
        return None
    op = ">=" if match.group(1) in (">=", "≥") else ">"
    return op, float(match.group(2)) / 100


def expectation_line(cfg: RunConfig, run: Any) -> list[str]:
    """The lines to log about the recipe's stated expectation (none when there is nothing to say).

    The bar applies to a run of the recipe as shipped: same data, same epochs, the whole
    training set. A run that changed any of these is told the expectation does not apply;
    a run that ends below the bar says so.
    """
    bar = parse_bar(cfg.expected)
    if bar is None or cfg.recipe is None:
        return []
    changed = _changed_from_recipe(cfg)
    if changed:
        return [f"note: the {cfg.recipe} recipe's expectation ({cfg.expected}) is for the recipe as shipped; "
                f"this run changed {', '.join(changed)}"]  # fmt: skip
    reached = run.test.acc if run.test is not None else run.metrics["val_acc"]
    op, value = bar
    if reached > value or (op == ">=" and reached >= value):
        return [f"expected {op} {value:.1%}: reached {reached:.2%}"]
    return [f"warning: below the {cfg.recipe} recipe's expectation: {reached:.2%} "
            f"{'test' if run.test is not None else 'validation'} accuracy, expected {op} {value:.1%} "
            f"({cfg.expected})"]  # fmt: skip


def _changed_from_recipe(cfg: RunConfig) -> list[str]:
    """What this run changed that the recipe's bar depends on."""
    from cnnkit.recipes import load_recipe

    raw = load_recipe(cfg.recipe)
    changed = []
    data_name = raw.get("data", {}).get("name")
    if data_name is not None and cfg.data.name != data_name:
        changed.append(f"the data ({cfg.data.name})")
    epochs = raw.get("train", {}).get("epochs")
    if epochs is not None and cfg.train.epochs != epochs and not cfg.train.fine_tune:
        changed.append(f"the epochs ({cfg.train.epochs} instead of {epochs})")
    if cfg.data.limit_train is not None:
        changed.append(f"the training set (--limit-train {cfg.data.limit_train})")
    return changed


# ----------------------------------------------------------------------------- how the run ended


@contextmanager
def _recording_status(folder: RunFolder, writer: bool) -> Iterator[None]:
    """``status.json`` says running, then completed, failed (with why) or interrupted."""
    if writer:
        folder.set_status("running")
    try:
        yield
    except TrainingStopped as stopped:
        if writer:
            folder.set_status("interrupted", f"stopped on request ({stopped.where})")
            logger.warning(f"stopped; continue with: cnnkit train --resume {_quoted(folder.path)}")
        raise
    except KeyboardInterrupt as stopped:
        if writer:
            # a Ctrl-C in the --lr auto sweep (SweepInterrupted) has nothing to resume: its advice says what works
            advice = getattr(stopped, "advice", None)
            folder.set_status("interrupted", "stopped by Ctrl-C" + (" during the lr sweep" if advice else ""))
            logger.warning(advice or f"interrupted; continue with: cnnkit train --resume {_quoted(folder.path)}")
        raise
    except BaseException as exc:
        if writer:
            _record_failure(folder, exc)
        raise
    if writer:
        folder.set_status("completed")


def _record_failure(folder: RunFolder, exc: BaseException) -> None:
    """``status.json``: failed, and why (``disk full while writing FILE`` for a full disk).

    The failed write's temporary file is gone by now, which usually leaves room for this
    small one; when even that does not fit, the run's one-line error still says why.
    """
    if isinstance(exc, OSError) and is_disk_full(exc):
        reason = f"disk full while writing {folder.disk_full(exc).file}"
    else:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = f"{type(exc).__name__}: {first}"
    try:
        folder.set_status("failed", reason[:500])
    except OSError as status_error:
        if not is_disk_full(status_error):
            raise


def _quoted(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def _final_line(run: Run) -> str:
    m = run.metrics
    parts = [f"done in {m['seconds']:.0f}s", f"best epoch {m['best_epoch']}: val acc {m['val_acc']:.2%}"]
    if run.test is not None:
        top5 = f" top5 {run.test.top5:.2%}" if run.test.top5 is not None else ""
        parts.append(f"test acc {run.test.acc:.2%}{top5}")
    return "  ".join(parts) + f"\nrun folder: {run.dir}"


def main(args: Any) -> None:
    """``cnnkit train`` (argparse namespace from :mod:`cnnkit.cli`)."""
    from cnnkit.config import overrides_from_args
    from cnnkit.errors import UsageError

    progress = not args.no_progress
    if args.resume:
        if args.recipe or args.config:
            raise UsageError("--resume continues a run with its own config; drop --recipe/--config")
        train(resume=args.resume, progress=progress, check=not args.no_check, **overrides_from_args(args))
        return
    cfg = resolve_config(args.recipe, args.config, overrides_from_args(args))
    train(config=cfg, progress=progress, check=not args.no_check)


"""Training engine: the loop, optimizers, devices and the checkpoint contract."""

from cnnkit.checkpoint import Checkpoint, TrainingState, read_checkpoint, save_checkpoint, unwrap
from cnnkit.device import resolve_device, seed_everything
from cnnkit.engine.loop import EvalResult, FitHooks, FitResult, FitStart, evaluate, fit, train_one_epoch
from cnnkit.engine.run_state import RunSaver, TrainState
from cnnkit.scoring import Scores, score, validation_loss

__all__ = [
    "Checkpoint",
    "EvalResult",
    "FitHooks",
    "FitResult",
    "FitStart",
    "RunSaver",
    "Scores",
    "TrainState",
    "evaluate",
    "fit",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "score",
    "seed_everything",
    "train_one_epoch",
    "TrainingState",
    "unwrap",
    "validation_loss",
]

"""The ``cnnkit`` command line: one subcommand per workflow.

This module only parses arguments and turns errors into exit codes; each command's work
is in :mod:`cnnkit.commands` (imported when that command runs, so ``--help`` and
``--version`` stay fast). The train and lr-find flags are generated from the config
schema (:func:`cnnkit.config.add_config_flags`).

Exit codes: 0 ok, 1 failure (missing data, unreadable files, permissions, a full disk),
2 usage error (bad option values, unknown names). Errors a user can fix print one line;
tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import math
import os
import sys
from collections.abc import Sequence

from cnnkit._version import __version__
from cnnkit.config import AMP_MODES, TTA_MODES
from cnnkit.errors import CnnkitError, nearest


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the nearest flag or command."""

    def error(self, message: str) -> None:  # noqa: D401 (argparse's own name)
        hint = _suggestion(self, message)
        self.exit(2, f"{self.prog}: error: {message}{hint}\n(see `{self.prog} --help`)\n")


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """``; did you mean --epochs?`` for ``unrecognized arguments: --epocs``."""
    if message.startswith("unrecognized arguments:"):
        flags = [opt for action in parser._actions for opt in action.option_strings]
        for word in message.split(":", 1)[1].split():
            if word.startswith("--"):
                guess = nearest(word.split("=")[0], flags)
                if guess:
                    return f"; did you mean {guess}?"
    if "invalid choice:" in message and "(choose from" in message:
        bad = message.split("invalid choice:", 1)[1].split("(choose from")[0].strip(" '\"")
        choices = [c.strip(" '\",") for c in message.split("(choose from", 1)[1].rstrip(")").split(",")]
        guess = nearest(bad, choices)
        if guess:
            return f"; did you mean {guess!r}?"
    return ""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (no torch import)."""
    parser = Parser(prog="cnnkit", description="Convolutional image classifiers, one command per workflow.")
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in (_train, _lr_find, _eval, _predict, _report, _summary, _explain, _export, _serve, _studio, _check,
                _runs, _listings):  # fmt: skip
        add(sub)
    return parser


def _command(sub, name: str, target: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose handler is ``target`` (``module:function`` in cnnkit.commands)."""
    command = sub.add_parser(name, help=text, description=text)
    command.set_defaults(target=target)
    return command


def _bounded(action: argparse.Action, *, gt: float | None = None, ge: float | None = None,
             le: float | None = None) -> argparse.Action:
    """Declare the range of a numeric flag (checked by :func:`_check_numbers` before the command
    runs, so the refusal is one ``cnnkit: error:`` line with exit code 2)."""
    action.bounds = (gt, ge, le)  # type: ignore[attr-defined]
    return action


def _trust_code(command: argparse.ArgumentParser) -> None:
    command.add_argument("--trust-code", action="append", metavar="FILE_OR_MODULE",
                         help="import this file or module if the checkpoint's model or dataset is your own "
                              "code (checkpoints only record it; repeatable)")  # fmt: skip


def _train(sub) -> None:
    from cnnkit.config import add_config_flags

    train = _command(sub, "train", "train:main", "train a model (no arguments: LeNet on the embedded MNIST subset)")
    add_config_flags(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--no-check", action="store_true",
                       help="skip the quick dataset check of a folder/CSV before training "
                            "(see `cnnkit check`)")  # fmt: skip
    train.add_argument("--resume", metavar="RUN", help="continue a killed or stopped run from its last.pt "
                       "(with its own config; --epochs N trains it longer)")  # fmt: skip
    _trust_code(train)


def _lr_find(sub) -> None:
    from cnnkit.config import add_config_flags

    lf = _command(sub, "lr-find", "lr_find:main",
                  "learning-rate range test: loss vs lr plot and a suggested lr (same options as train)")  # fmt: skip
    add_config_flags(lf)
    _bounded(lf.add_argument("--start-lr", type=float, default=1e-7,
                             help="first learning rate of the sweep (default 1e-7)"), gt=0)  # fmt: skip
    _bounded(lf.add_argument("--end-lr", type=float, default=10.0, help="last learning rate of the sweep (default 10)"),
             gt=0)  # fmt: skip
    _bounded(lf.add_argument("--steps", type=int,
                             help="batches in the sweep (default 100, more for small batches: 3,000 images)"),
             ge=1)  # fmt: skip


def _eval(sub) -> None:
    ev = _command(sub, "eval", "evaluate:main", "evaluate a run folder or checkpoint")
    ev.add_argument("checkpoint", help="run folder or .pt checkpoint")
    ev.add_argument("--data", help="evaluate on this dataset instead of the run's (same classes)")
    ev.add_argument("--data-dir", help="folder holding torchvision datasets")
    ev.add_argument("--split", choices=("test", "val", "train"), help="default: test when the run has one, else val")
    ev.add_argument("--device", default="auto")
    _bounded(ev.add_argument("--batch-size", type=int, help="images per forward pass (default: the run's)"), ge=1)
    ev.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the run's own)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _trust_code(ev)


def _predict(sub) -> None:
    pr = _command(sub, "predict", "predict:main",
                  "predict image files, folders or globs with a checkpoint or ONNX file")  # fmt: skip
    pr.add_argument("model", metavar="MODEL", help="run folder, .pt checkpoint, or .onnx file from `cnnkit export`")
    pr.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    pr.add_argument("--topk", type=int, default=5, help="classes to list per image (default 5)")
    pr.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    pr.add_argument("--workers", type=int,
                    help="decoding threads (default: one per core, at most 8; 0: in the main thread)")
    pr.add_argument("--tta", nargs="?", const=True, default=None, choices=(True, *TTA_MODES), metavar="MODE",
                    help="test-time augmentation: none, flip, shift, flip-shift; --tta alone: the run's own, else "
                         "mirror (or small shifts for digits); default: the run's own, as eval")  # fmt: skip
    pr.add_argument("--threshold", type=float, help="label predictions below this probability 'unknown'")
    pr.add_argument("--out", help="write results to a .csv, .json or .jsonl file (default: print them)")
    pr.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                    help="auto (default): ONNX Runtime when the export extra is installed (a checkpoint runs "
                         "through an ONNX file built once, checked and cached), else torch")  # fmt: skip
    pr.add_argument("--device", default="cpu", help="torch backend: cpu (default), cuda, mps or auto")
    pr.add_argument("--amp", choices=AMP_MODES, default="off",
                    help="torch backend precision: off (float32, default), bf16, fp16, "
                         "auto (bf16 on CUDA)")  # fmt: skip
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    _trust_code(pr)


def _report(sub) -> None:
    rp = _command(sub, "report", "report:main",
                  "write report/report.html (curves, confusion, per-class, calibration...)")  # fmt: skip
    rp.add_argument("run", help="run folder or .pt checkpoint")
    rp.add_argument("--split", choices=("test", "val", "train"), help="default: test when the run has one, else val")
    rp.add_argument("--robustness", action="store_true", help="also measure FGSM and corruption accuracy")
    rp.add_argument("--data-dir", help="folder holding torchvision datasets")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--out", help="output folder (default: RUN/report)")
    _trust_code(rp)


def _summary(sub) -> None:
    sm = _command(sub, "summary", "summary:main", "layer table of a model: output shapes, parameters, MACs")
    sm.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                    help="model name (or timm:NAME, tv:NAME), run folder or .pt file")  # fmt: skip
    _bounded(sm.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                             help="input image (default: the model's, or the checkpoint's)"), ge=1)  # fmt: skip
    _bounded(sm.add_argument("--num-classes", type=int, metavar="N",
                             help="logits of a model built by name (default 10)"), ge=1)  # fmt: skip
    sm.add_argument("--depth", type=int, default=4, metavar="D",
                    help="rows down to this nesting level, deeper ones folded in (default 4)")  # fmt: skip
    sm.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _trust_code(sm)


def _explain(sub) -> None:
    ex = _command(sub, "explain", "explain:main", "first-layer kernels, feature maps and Grad-CAM of images")
    ex.add_argument("checkpoint", help="run folder or .pt checkpoint")
    ex.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    ex.add_argument("--layer", help="Grad-CAM layer (default: the last conv); a typo lists them")
    ex.add_argument("--class", dest="target_class", metavar="NAME_OR_INDEX",
                    help="class to explain (default: each image's prediction)")  # fmt: skip
    ex.add_argument("--out", help="output folder (default: RUN/explain for a run, else ./explain)")
    _trust_code(ex)


def _export(sub) -> None:
    xp = _command(sub, "export", "export:main",
                  "write ONNX or TorchScript (classes and preprocessing inside), checked against PyTorch")  # fmt: skip
    xp.add_argument("checkpoint", help="run folder or .pt checkpoint")
    xp.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    xp.add_argument("--out", metavar="FILE",
                    help="default: RUN/export/model.onnx (or model.torchscript.pt), else beside the .pt")  # fmt: skip
    xp.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                    help="ONNX: fp32 (default), fp16 (half the size; for GPUs and phones) or int8 (static "
                         "quantisation calibrated on training images: a quarter the size, faster on CPUs)")  # fmt: skip
    xp.add_argument("--calibration", type=int, default=256, metavar="N",
                    help="int8: training images to calibrate on (default 256)")  # fmt: skip
    xp.add_argument("--allow-drop", type=float, default=1.0, metavar="POINTS",
                    help="fp16/int8: accuracy points the file may lose against PyTorch before it is "
                         "refused (default 1)")  # fmt: skip
    xp.add_argument("--dynamic-batch", action="store_true", help="ONNX: accept any batch size (default: batch 1)")
    xp.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)")
    xp.add_argument("--check-images", nargs="+", metavar="PATH",
                    help="images, folders or globs to check the file on (default: the run's validation "
                         "images)")  # fmt: skip
    _bounded(xp.add_argument("--check-count", type=int, default=1000, metavar="N",
                             help="validation images to score both models on (default: up to 1000)"),
             ge=1)  # fmt: skip
    xp.add_argument("--tolerance", type=float, default=1e-3, metavar="T",
                    help="largest |logit difference| from PyTorch that passes (default 1e-3)")  # fmt: skip
    xp.add_argument("--data-dir", help="folder holding the run's dataset (for the validation images)")
    _trust_code(xp)


def _serve(sub) -> None:
    sv = _command(sub, "serve", "serve:main", "web demo: draw or upload an image, see the ranked classes (Gradio)")
    sv.add_argument("checkpoint", help="run folder, .pt checkpoint or exported .onnx file")
    sv.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 lets everyone on the "
                         "network use the page, with no login: see the README's threat model)")  # fmt: skip
    sv.add_argument("--port", type=int, default=7860)
    sv.add_argument("--topk", type=int, default=5, help="classes shown")
    sv.add_argument("--examples", type=int, default=8, metavar="N", help="validation images offered as examples")
    sv.add_argument("--no-gradcam", action="store_true", help="no Grad-CAM overlay")
    sv.add_argument("--data-dir", help="folder holding torchvision datasets (for the examples)")
    sv.add_argument("--device", default="auto")
    sv.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                    help="auto (default): ONNX Runtime on a CPU when the export extra is installed (Grad-CAM "
                         "still uses PyTorch), else torch")  # fmt: skip
    sv.add_argument("--concurrency", type=int, default=1, metavar="N",
                    help="predictions handled at once; others wait in the queue (default 1: the model runs "
                         "one at a time anyway, see docs/benchmarks.md)")  # fmt: skip
    sv.add_argument("--queue-size", type=int, default=64, metavar="N",
                    help="requests that may wait; more are refused with 'queue is full' (default 64)")
    _trust_code(sv)


def _studio(sub) -> None:
    st = _command(sub, "studio", "studio:main",
                  "a web page to collect images, train, look at the results, try and take away a model")  # fmt: skip
    st.add_argument("project", nargs="?", default="cnnkit-studio", metavar="PROJECT_DIR",
                    help="the project folder (created if missing; default ./cnnkit-studio)")  # fmt: skip
    st.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 lets everyone on the "
                         "network use the page, with no login: see the README's threat model)")  # fmt: skip
    st.add_argument("--port", type=int, default=7860)
    st.add_argument("--allow-import", action="append", default=[], metavar="DIR",
                    help="the page may import folders and CSV files under DIR (repeatable); without it, folders "
                         "of the server can be imported only when --host is the loopback (127.0.0.1)")  # fmt: skip


def _check(sub) -> None:
    ck = _command(sub, "check", "check:main",
                  "the dataset doctor: unreadable files, modes, sizes, duplicates, leakage, balance; "
                  "with --labels, likely label errors")  # fmt: skip
    ck.add_argument("data", metavar="DATA",
                    help="class-per-folder tree (optionally train/ val/ test/) or CSV file (path,label)")  # fmt: skip
    ck.add_argument("--json", action="store_true", help="print the full report as JSON instead of the summary")
    ck.add_argument("--out", metavar="FILE", help="also write the full JSON report to FILE")
    ck.add_argument("--quick", action="store_true",
                    help="headers and byte hashes only, no decoding (what `cnnkit train` runs first)")  # fmt: skip
    ck.add_argument("--workers", type=int, help="checking processes (default: one per core, at most 8; 0: none)")
    ck.add_argument("--near-distance", type=int, metavar="BITS",
                    help="perceptual-hash bits (of 64) within which two images are near duplicates "
                         "(default 2)")  # fmt: skip
    ck.add_argument("--min-side", type=int, metavar="PX",
                    help="images with a shorter side under PX (or 1/8 of the median) are tiny "
                         "(default 16)")  # fmt: skip
    ck.add_argument("--no-progress", action="store_true", help="no progress bar")
    lb = ck.add_argument_group("label check (--labels; needs the labels extra: pip install \"cnnkit[labels]\")")
    lb.add_argument("--labels", action="store_true",
                    help="also find likely label errors, outliers and confused classes: out-of-sample predictions "
                         "by K-fold cross-validation ranked by cleanlab")  # fmt: skip
    lb.add_argument("--model", metavar="NAME",
                    help="timm:NAME/tv:NAME (frozen pretrained features + a linear head per fold) or one of "
                         "cnnkit's models (trained per fold); default: timm:efficientnet_lite0 features for photos, "
                         "mnist_fast for small grey images")  # fmt: skip
    _bounded(lb.add_argument("--folds", type=int, metavar="K", help="cross-validation folds (default 5)"), ge=2)
    _bounded(lb.add_argument("--epochs", type=int, metavar="N",
                             help="epochs per fold when a network trains from scratch (default 3)"),
             ge=1)  # fmt: skip
    lb.add_argument("--labels-out", metavar="DIR",
                    help="where label_issues.csv/.html/.json go (default: ./label-issues/<data folder name>/)")
    lb.add_argument("--fix-to", metavar="DIR",
                    help="write a copy of the dataset to DIR with the suspects moved to "
                         "DIR/_review/<given>__as__<suggested>/ (the originals are untouched)")  # fmt: skip
    lb.add_argument("--seed", type=int, default=0, help="seed of the folds and of any network (default 0)")
    lb.add_argument("--device", default="auto", help="where the model runs (default auto: CUDA when present)")


def _runs(sub) -> None:
    rn = _command(sub, "runs", "runs:main",
                  "compare run folders: recipe, model, data, epochs, best metric, test accuracy, time")  # fmt: skip
    rn.add_argument("dir", nargs="?", metavar="DIR",
                    help="folder of run folders (default: ./runs; a DIR that does not exist is an error)")
    rn.add_argument("--sort", default="date", metavar="KEY",
                    help="date (default), name, time, epochs, test_acc, or a metrics.csv column "
                         "(best epoch's value)")  # fmt: skip
    rn.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _listings(sub) -> None:
    for name, text in (("recipes", "list the shipped recipes and their expected results"),
                       ("models", "list the registered models with parameter counts"),
                       ("datasets", "list the dataset names")):  # fmt: skip
        _command(sub, name, f"listing:{name}", text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnnkit`` script; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand, which knows its own flags (for "did you mean")
        _subcommand(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    from cnnkit.log import console

    try:
        _check_numbers(_subcommand(parser, args.command), args)
        module, _, function = args.target.partition(":")
        handler = getattr(importlib.import_module(f"cnnkit.commands.{module}"), function)
        from cnnkit.usercode import trust_code

        with console(), trust_code(*(getattr(args, "trust_code", None) or ())), _model_numerics():
            handler(args)
    except CnnkitError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("cnnkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (silences the flush at exit)
        return 0
    except OSError as exc:  # permissions, a full disk, a missing folder: the user's to fix
        return _fail(_os_error(exc), 1)
    return 0


def _model_numerics() -> contextlib.AbstractContextManager:
    """Denormals as zero (:func:`cnnkit.engine.device.denormals_as_zero`) for the commands
    that run models, i.e. those whose module imported torch; nothing for the others, which
    then need not import it."""
    if "torch" not in sys.modules:
        return contextlib.nullcontext()
    from cnnkit.engine.device import denormals_as_zero

    return denormals_as_zero()


def _check_numbers(command: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every number a subcommand's own flags parsed: finite, and within the range its flag
    declares with :func:`_bounded` (the train/lr-find config flags are checked by the config
    schema instead).

    Raises:
        UsageError: ``--batch-size must be >= 1, got 0``; ``--threshold must be a finite number, got nan``.
    """
    from cnnkit.errors import UsageError

    for action in command._actions:
        value = getattr(args, action.dest, None)
        flag = action.option_strings[-1] if action.option_strings else action.dest
        gt, ge, le = getattr(action, "bounds", (None, None, None))
        for number in value if isinstance(value, list) else [value]:
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                continue
            if not math.isfinite(number):
                raise UsageError(f"{flag} must be a finite number, got {number}")
            for ok, words, bound in ((gt is None or number > gt, ">", gt), (ge is None or number >= ge, ">=", ge),
                                     (le is None or number <= le, "<=", le)):  # fmt: skip
                if not ok:
                    raise UsageError(f"{flag} must be {words} {bound:g}, got {number:g}")


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _fail(message: str, code: int) -> int:
    print(f"cnnkit: error: {message or 'failed'}", file=sys.stderr)
    return code


def _os_error(exc: OSError) -> str:
    """One line for an OS error: what failed on which file, and what to do."""
    where = f": {exc.filename}" if exc.filename else ""
    what = exc.strerror or str(exc)
    advice = {
        errno.EACCES: "check the folder's permissions or choose another with --output-dir / --out",
        errno.EPERM: "check the folder's permissions or choose another with --output-dir / --out",
        errno.EROFS: "the file system is read-only; choose another folder with --output-dir / --out",
        errno.ENOSPC: "the disk is full; free some space (the files written so far are intact)",
        errno.ENOENT: "check the path",
    }.get(exc.errno, "")
    return f"{what}{where}" + (f" ({advice})" if advice else "")


if __name__ == "__main__":
    sys.exit(main())

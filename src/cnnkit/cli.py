"""The ``cnnkit`` command line: one subcommand per workflow.

This module only parses arguments and turns errors into exit codes; each command's work
is in :mod:`cnnkit.commands` (imported when that command runs, so ``--help`` and
``--version`` stay fast). No flag is written here: every command's arguments are generated
from the config schema, the train and lr-find config keys by
:func:`cnnkit.config.add_config_flags`, each command's own options (and the options commands
share, declared once) from its class in :mod:`cnnkit.config.options` by
:func:`cnnkit.config.add_option_flags`; :func:`cnnkit.config.validate` checks them all.

Exit codes: 0 ok, 1 failure (missing data, unreadable files, permissions, a full disk),
2 usage error (bad option values, unknown names). Errors a user can fix print one line;
tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from cnnkit._version import __version__
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


# Every subcommand: (name, handler as module:function in cnnkit.commands, options class in
# cnnkit.config.options, one line of help). Its arguments are generated from the options class.
COMMANDS = (
    ("train", "train:main", "TrainCommandOptions", "train a model (no arguments: LeNet on the embedded MNIST subset)"),
    ("lr-find", "lr_find:main", "LrFindOptions",
     "learning-rate range test: loss vs lr plot and a suggested lr (same options as train)"),
    ("eval", "evaluate:main", "EvalOptions", "evaluate a run folder or checkpoint"),
    ("predict", "predict:main", "PredictOptions", "predict image files, folders or globs with a checkpoint or ONNX "
     "file"),
    ("report", "report:main", "ReportOptions",
     "write report/report.html (curves, confusion, per-class, calibration...)"),
    ("summary", "summary:main", "SummaryOptions", "layer table of a model: output shapes, parameters, MACs"),
    ("explain", "explain:main", "ExplainOptions", "first-layer kernels, feature maps and Grad-CAM of images"),
    ("export", "export:main", "ExportOptions",
     "write ONNX or TorchScript (classes and preprocessing inside), checked against PyTorch"),
    ("serve", "serve:main", "ServeOptions", "web demo: draw or upload an image, see the ranked classes (Gradio)"),
    ("studio", "studio:main", "StudioOptions",
     "a web page to collect images, train, look at the results, try and take away a model"),
    ("check", "check:main", "CheckOptions", "the dataset doctor: unreadable files, modes, sizes, duplicates, "
     "leakage, balance; with --labels, likely label errors"),
    ("runs", "runs:main", "RunsOptions",
     "compare run folders: recipe, model, data, epochs, best metric, test accuracy, time"),
    ("recipes", "listing:recipes", "NoOptions", "list the shipped recipes and their expected results"),
    ("models", "listing:models", "NoOptions", "list the registered models with parameter counts"),
    ("datasets", "listing:datasets", "NoOptions", "list the dataset names"),
)  # fmt: skip
CONFIG_COMMANDS = ("train", "lr-find")  # these also take every config key's flag


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (no torch import), generated from the config schema."""
    from cnnkit import config

    parser = Parser(prog="cnnkit", description="Convolutional image classifiers, one command per workflow.")
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, target, options, text in COMMANDS:
        command = sub.add_parser(name, help=text, description=text)
        command.set_defaults(target=target, options=getattr(config, options))
        if name in CONFIG_COMMANDS:
            config.add_config_flags(command)
        config.add_option_flags(command, getattr(config, options))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnnkit`` script; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand, which knows its own flags (for "did you mean")
        _subcommand(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    from cnnkit.log import console

    try:
        from cnnkit.config import options_from_args, validate

        validate(options_from_args(args.options, args))  # every value, before the command reads a file
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
    """Denormals as zero (:func:`cnnkit.device.denormals_as_zero`) for the commands
    that run models, i.e. those whose module imported torch; nothing for the others, which
    then need not import it."""
    if "torch" not in sys.modules:
        return contextlib.nullcontext()
    from cnnkit.device import denormals_as_zero

    return denormals_as_zero()


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

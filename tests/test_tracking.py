"""Run logging (TensorBoard in every run, MLflow and W&B when asked) and ``cnnkit runs``.

The runs are real but tiny: LeNet on 500 digits of the embedded MNIST subset, 2 epochs.
TensorBoard files are read back with TensorBoard's own ``EventAccumulator``; MLflow writes
to a file store in a temporary folder (never the network).
"""

from __future__ import annotations

import csv
import importlib.machinery
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cnnkit
from cli_helpers import one_line_error, run_cli

TINY = {"limit_train": 500, "epochs": 2, "report": False, "deterministic": True, "progress": False}


def _train(output_dir: Path, name: str, **options):
    lines: list[str] = []
    run = cnnkit.train(output_dir=str(output_dir), name=name, log=lines.append, **{**TINY, **options})
    return run, lines


def _metrics_csv(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _assert_scalars_equal_metrics_csv(run_dir: Path) -> None:
    """Every number of metrics.csv is a TensorBoard scalar of the same name, once per epoch."""
    rows = _metrics_csv(run_dir)
    events = _events(run_dir)
    columns = [c for c in rows[0] if c != "epoch" and rows[0][c] not in ("", "None")]
    assert set(columns) <= set(events.Tags()["scalars"])
    for column in columns:
        logged = [(e.step, e.value) for e in events.Scalars(column)]
        expected = [(int(row["epoch"]), float(np.float32(row[column]))) for row in rows]  # event files hold float32
        assert logged == expected, column


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    """One finished 2-epoch run with the default loggers (TensorBoard only)."""
    return _train(tmp_path_factory.mktemp("runs"), "finished")


def test_tensorboard_events_hold_the_metrics_csv_scalars_per_epoch(finished) -> None:
    run, _ = finished
    _assert_scalars_equal_metrics_csv(run.dir)
    events = _events(run.dir)
    tags = events.Tags()
    assert {"lr", "train_loss", "val_acc", "val_loss"} <= set(tags["scalars"])
    assert tags["graph"], "the model graph was not logged"
    (images,) = events.Images("train_images")  # the first batch, at the end of epoch 1
    assert images.step == 1 and images.width > 8 * 28 and images.height > 28
    (test_acc,) = events.Scalars("test_acc")  # the best weights on the test split, at the last epoch
    assert (test_acc.step, test_acc.value) == (2, pytest.approx(run.metrics["test_acc"], abs=1e-6))
    assert "config/text_summary" in tags["tensors"]


def test_a_large_model_gets_no_graph_and_a_note_saying_why(imagenette: Path, tmp_path: Path) -> None:
    """Tracing EfficientNet-Lite0 for its TensorBoard graph took 10 s at the start of every
    run, more than a frozen rerun on cached features trains: models over
    GRAPH_MAX_MODULES modules get their metrics and images, but no graph."""
    from cnnkit.tracking import GRAPH_MAX_MODULES

    run, lines = _train(tmp_path, "lite0", data=str(imagenette), model="timm:efficientnet_lite0", limit_train=40,
                        limit_eval=20, image_size=64, epochs=1, check=False)  # fmt: skip

    modules = sum(1 for _ in run.model.modules())
    assert modules > GRAPH_MAX_MODULES
    assert f"note: no model graph in TensorBoard: timm:efficientnet_lite0 has {modules:,} modules " \
           f"(tracing more than {GRAPH_MAX_MODULES} takes seconds at every start)" in lines  # fmt: skip
    tags = _events(run.dir).Tags()
    assert not tags["graph"]
    assert {"train_loss", "val_acc"} <= set(tags["scalars"]) and tags["images"] == ["train_images"]


def test_resumed_run_logs_each_epoch_once(tmp_path: Path) -> None:
    run, _ = _train(tmp_path, "resumed", save_every=1)
    checkpoints = run.dir / "checkpoints"
    # As if the process died after epoch 2 was logged but before its checkpoint was written:
    # the resumed run trains epoch 2 again, and TensorBoard must not show it twice.
    shutil.copy(checkpoints / "epoch_001.pt", checkpoints / "last.pt")
    lines: list[str] = []

    cnnkit.train(resume=run.dir, progress=False, log=lines.append)

    assert any(line.startswith(f"resuming {run.dir} after epoch 1") for line in lines)
    assert [row["epoch"] for row in _metrics_csv(run.dir)] == ["1", "2"]
    _assert_scalars_equal_metrics_csv(run.dir)
    assert [e.step for e in _events(run.dir).Images("train_images")] == [1]
    assert len(list((run.dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # appended, not replaced


def test_mlflow_logs_params_metrics_and_artifacts_without_changing_training(tmp_path: Path, monkeypatch,
                                                                           finished) -> None:  # fmt: skip
    pytest.importorskip("mlflow", reason="MLflow is optional: pip install 'cnnkit[mlflow]'")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "cnnkit-test")

    run, lines = _train(tmp_path, "mlflow", loggers="mlflow", tensorboard=False)

    assert not any("warning" in line for line in lines), lines
    assert not (run.dir / "tensorboard").exists()
    run_id = json.loads((run.dir / "tracking.json").read_text())["mlflow_run_id"]
    client = MlflowClient(store)
    logged = client.get_run(run_id)
    assert logged.info.run_name == "mlflow" and logged.info.status == "FINISHED"
    assert logged.data.params["train.lr"] == "0.002" and logged.data.params["data.limit_train"] == "500"
    rows = _metrics_csv(run.dir)
    for column in ("val_acc", "train_loss", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, column))
        assert history == [(int(row["epoch"]), float(row[column])) for row in rows]
    assert logged.data.metrics["test_acc"] == pytest.approx(run.metrics["test_acc"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.csv", "config.yaml", "train_images_epoch1.png"} <= artifacts
    # loggers only watch: the same seed trains the same model with or without them
    untimed = [{k: v for k, v in row.items() if "time" not in k and "per_s" not in k} for row in rows]
    assert untimed == [{k: v for k, v in row.items() if "time" not in k and "per_s" not in k}
                       for row in _metrics_csv(finished[0].dir)]  # fmt: skip


def test_wandb_logs_each_epoch_offline(tmp_path: Path, monkeypatch) -> None:
    """W&B's calls, recorded by a stand-in module (wandb itself is not a test dependency)."""
    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class FakeRun:
        id = "abc123"

        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self, exit_code=0):
            calls["finish"].append(exit_code)

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: calls["init"].append(kwargs) or FakeRun()
    fake.Image = lambda pixels: ("image", pixels.shape)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)

    run, _ = _train(tmp_path, "wandb", loggers="wandb", tensorboard=False)

    (init,) = calls["init"]
    assert init["mode"] == "offline"  # CNNKIT_OFFLINE=1 (set by conftest) keeps W&B off the network
    assert init["name"] == "wandb" and init["dir"] == str(run.dir) and init["config"]["train"]["epochs"] == 2
    epochs = [(step, values) for step, values in calls["log"] if "val_acc" in values]
    assert [(step, values["val_acc"]) for step, values in epochs] == [
        (int(row["epoch"]), float(row["val_acc"])) for row in _metrics_csv(run.dir)]  # fmt: skip
    assert any("train_images" in values for _, values in calls["log"])
    assert calls["finish"] == [0]
    assert json.loads((run.dir / "tracking.json").read_text())["wandb_run_id"] == "abc123"


def test_missing_or_unknown_logger_fails_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    code, _, err = run_cli(capsys, "train", "--log", "wandb", "--output-dir", str(tmp_path), "--no-progress")
    assert code == 1
    assert "pip install" in one_line_error(err) and "wandb" in err
    code, _, err = run_cli(capsys, "train", "--log", "comet", "--output-dir", str(tmp_path), "--no-progress")
    assert code == 2
    assert "mlflow, tensorboard, wandb" in one_line_error(err)
    assert list(tmp_path.iterdir()) == []  # no run folder was started


# ----------------------------------------------------------------------------- cnnkit runs


@pytest.fixture()
def runs_folder(tmp_path: Path, finished) -> Path:
    """A finished run, a run killed after epoch 1 (no summary.json), and three non-run folders."""
    shutil.copytree(finished[0].dir, tmp_path / "finished")
    killed = shutil.copytree(finished[0].dir, tmp_path / "killed")
    (killed / "summary.json").unlink()
    lines = (killed / "metrics.csv").read_text().splitlines()
    (killed / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")  # header and epoch 1
    env = json.loads((killed / "env.json").read_text())
    (killed / "env.json").write_text(json.dumps({**env, "started": "2099-01-01T00:00:00"}))  # the newest
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "lrfind").mkdir()  # `cnnkit lr-find` leaves a config.yaml but trains nothing
    shutil.copy(killed / "config.yaml", tmp_path / "lrfind")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("data: [unreadable")
    (tmp_path / "broken" / "env.json").write_text("{}")
    return tmp_path


def test_runs_compares_finished_and_killed_runs(runs_folder: Path, capsys, finished) -> None:
    code, out, _ = run_cli(capsys, "runs", str(runs_folder))

    assert code == 0
    header, first, second, *rest = out.splitlines()
    assert header.split()[:6] == ["run", "recipe", "model", "data", "epochs", "status"]
    assert "best val_acc" in header and "test acc" in header
    test_acc = f"{finished[0].metrics['test_acc']:.2%}"
    assert first.split()[:6] == ["finished", "default", "lenet", "embedded-mnist", "2/2", "done"]
    assert test_acc in first
    assert second.split()[:6] == ["killed", "default", "lenet", "embedded-mnist", "1/2", "incomplete"]
    assert test_acc not in second and "2099-01-01 00:00" in second  # sorted by date: oldest first
    assert rest == [f"2 runs in {runs_folder}, sorted by date",
                    "skipped 3 folders that are not runs: broken (unreadable config.yaml), lrfind (no training files), "
                    "mlruns (no config.yaml)"]  # fmt: skip


def test_runs_sorts_by_a_metric_and_prints_json(runs_folder: Path, capsys) -> None:
    code, out, _ = run_cli(capsys, "runs", str(runs_folder), "--sort", "val_loss", "--json")

    assert code == 0
    table = json.loads(out)
    rows = {row["name"]: row for row in table["runs"]}
    csv_rows = _metrics_csv(runs_folder / "finished")
    best = min(csv_rows, key=lambda row: float(row["val_loss"]))
    assert rows["finished"]["metric"] == "val_loss"
    assert (rows["finished"]["best"], rows["finished"]["best_epoch"]) == (float(best["val_loss"]), int(best["epoch"]))
    assert rows["killed"]["best"] == float(csv_rows[0]["val_loss"]) and rows["killed"]["test_acc"] is None
    assert [row["name"] for row in table["runs"]] == sorted(rows, key=lambda name: rows[name]["best"])
    assert len(table["skipped"]) == 3


def test_runs_usage_errors(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "runs", str(tmp_path), "--sort", "speed")
    assert code == 2 and "val_acc" in one_line_error(err)
    code, _, err = run_cli(capsys, "runs", str(tmp_path / "missing"))  # a DIR given that is not there: a failure
    assert code == 1
    assert one_line_error(err) == (f"cnnkit: error: runs folder not found: {tmp_path / 'missing'} "
                                   "(`cnnkit train --output-dir DIR` writes runs there)")  # fmt: skip
    code, out, _ = run_cli(capsys, "runs", str(tmp_path))
    assert code == 0 and out.strip() == f"no runs in {tmp_path}"


def test_runs_reads_a_hand_edited_metrics_cell_as_missing(runs_folder: Path, capsys) -> None:
    metrics = runs_folder / "killed" / "metrics.csv"
    header, row = metrics.read_text().splitlines()
    cells = dict(zip(header.split(","), row.split(","), strict=True)) | {"val_acc": "n/a", "epoch_time_s": "?"}
    metrics.write_text(f"{header}\n{','.join(cells.values())}\n")

    code, out, _ = run_cli(capsys, "runs", str(runs_folder), "--json")

    assert code == 0
    killed = next(row for row in json.loads(out)["runs"] if row["name"] == "killed")
    assert (killed["best"], killed["best_epoch"], killed["epochs_run"], killed["seconds"]) == (None, None, 1, 0.0)

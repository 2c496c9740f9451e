"""A run folder written by an earlier cnnkit still works with every command that reads runs.

``tests/fixtures/old_run/run`` was written by cnnkit at commit fb72263 and is never regenerated
(see its README): each test works on a copy of it, as a user's existing run would be.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import one_line_error, run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "old_run"
# what the old run's summary.json says its best.pt scored on its 128 held-out test digits
OLD_TEST_ACC = 0.1875


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the old run folder (commands may write into it)."""
    return Path(shutil.copytree(FIXTURE / "run", tmp_path / "old_run"))


def test_eval_scores_the_old_run_on_its_own_saved_split(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "eval", str(old_run), "--json", "--device", "cpu")

    assert code == 0, err
    result = json.loads(out)
    assert result["split"] == "test" and result["images"] == 128
    assert result["top1"] == pytest.approx(OLD_TEST_ACC)  # the same images and weights as when it was trained


def test_report_writes_the_old_runs_report(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "report", str(old_run), "--device", "cpu")

    assert code == 0, err
    html = (old_run / "report" / "report.html").read_text(encoding="utf-8")
    assert "convnet" in html and (old_run / "report" / "confusion.png").stat().st_size > 0


def test_export_writes_a_model_that_predicts_like_the_old_run(old_run: Path, capsys: pytest.CaptureFixture) -> None:
    fmt = "onnx" if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime") else "torchscript"
    exported = old_run.parent / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")

    code, _, err = run_cli(capsys, "export", str(old_run), "--format", fmt, "--out", str(exported))

    assert code == 0, err
    assert exported.stat().st_size > 0
    if fmt == "onnx":
        by_torch = _predicted(capsys, old_run, old_run.parent / "torch.json", "--backend", "torch")
        by_onnx = _predicted(capsys, exported, old_run.parent / "onnx.json")
        top = [row["topk"][0]["prob"] for row in by_torch]
        assert [row["topk"][0]["prob"] for row in by_onnx] == pytest.approx(top, abs=1e-4)


def test_predict_labels_images_with_the_old_run(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _predicted(capsys, old_run, old_run.parent / "predictions.json")

    assert sorted(Path(row["file"]).name for row in rows) == ["digit_2.png", "digit_5.png", "digit_7.png"]
    assert all(row["label"] in [str(d) for d in range(10)] for row in rows)


def test_the_old_run_is_served(old_run: Path) -> None:
    """What ``cnnkit serve RUN`` builds before it launches: the predictor, examples and page."""
    pytest.importorskip("gradio")
    from cnnkit.inference import Predictor
    from cnnkit.inference.loading import example_images
    from cnnkit.serve import build_demo

    predictor = Predictor.load(old_run, device="cpu")
    examples = example_images(old_run, 4)
    demo = build_demo(predictor, examples=examples)

    assert predictor.class_names == [str(d) for d in range(10)]
    assert len(examples) == 4 and all(image.size == (28, 28) for image, _ in examples)
    assert "predict_image" in {dep.get("api_name") for dep in demo.get_config_file()["dependencies"]}


def test_resume_trains_the_old_run_one_more_epoch(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "--resume", str(old_run), "--epochs", "2", "--no-progress")

    assert code == 0, err
    lines = (old_run / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]  # epoch 1 kept, epoch 2 added
    assert json.loads((old_run / "status.json").read_text(encoding="utf-8"))["status"] == "completed"


def test_runs_lists_the_old_run_with_its_figures(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "runs", str(old_run.parent))

    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith("old_run ")]
    assert "convnet" in row and "done" in row and "10.16%" in row and "18.75%" in row


def _predicted(capsys: pytest.CaptureFixture[str], model: Path, out: Path, *flags: str) -> list[dict]:
    """``cnnkit predict MODEL images/ --out OUT``: its three predictions."""
    code, _, err = run_cli(capsys, "predict", str(model), str(FIXTURE / "images"), "--out", str(out), "--no-progress",
                           *flags)  # fmt: skip
    assert code == 0, err
    rows = json.loads(out.read_text(encoding="utf-8"))["predictions"]
    assert len(rows) == 3
    return rows


def test_a_damaged_split_json_is_said_not_replaced_by_a_new_split(old_run: Path, capsys: pytest.CaptureFixture) -> None:
    (old_run / "split.json").write_text('{"kind": "indices", "indi', encoding="utf-8")  # cut short

    code, _, err = run_cli(capsys, "eval", str(old_run), "--device", "cpu")

    assert code == 1
    assert "split.json is not readable" in one_line_error(err)


def test_report_of_a_checkpoint_outside_a_run_goes_beside_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    alone = tmp_path / "mine" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(FIXTURE / "run" / "checkpoints" / "best.pt", alone)

    code, _, err = run_cli(capsys, "report", str(alone), "--device", "cpu")

    assert code == 0, err
    assert (tmp_path / "mine" / "report" / "report.html").is_file()
    assert not (tmp_path / "report").exists()  # not in the folder above (the run folder it would sit in)

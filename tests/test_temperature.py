"""Temperature scaling from training to every probability shown: fitted on the validation
split when a run ends, stored in ``best.pt`` and in exported files, applied by ``Predictor``,
``cnnkit eval`` and the report (which shows the ECE before and after).

The run is real: the embedded MNIST subset (1,000 validation and 2,000 test digits), one
epoch of LeNet, whose raw softmax is over-confident enough for a fitted temperature to
matter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import cnnkit
from cli_helpers import run_cli
from cnnkit.checkpoint import Checkpoint
from cnnkit.confidence import calibrated
from cnnkit.inference import Predictor
from cnnkit.inference.metadata import Metadata
from cnnkit.runfolder import RunFolder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> cnnkit.Run:
    lines: list[str] = []
    result = cnnkit.train(epochs=1, output_dir=str(tmp_path_factory.mktemp("runs")), progress=False,
                          log=lines.append, tensorboard=False)  # fmt: skip
    result.lines = lines  # type: ignore[attr-defined]
    return result


def test_training_fits_a_temperature_on_val_and_best_pt_records_it(run: cnnkit.Run) -> None:
    stored = Checkpoint.load(RunFolder(run.dir).best).temperature
    assert stored == pytest.approx(run.temperature)
    assert stored != 1.0 and 0.05 <= stored <= 20
    line = next(line for line in run.lines if line.startswith("calibration:"))
    assert f"temperature {stored:.3f} fitted on val (1,000 images)" in line
    before, after = (float(v) for v in line.split("val loss ")[1].split(";")[0].split(" -> "))
    assert after < before  # the fitted temperature lowers the val NLL it was fitted to


def test_eval_shows_the_calibrated_ece_lower_than_the_raw_softmax(run: cnnkit.Run,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "eval", str(run.dir), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["split"] == "test" and report["images"] == 2000
    assert report["temperature"] == pytest.approx(run.temperature)
    assert report["ece"] < report["ece_raw_softmax"]  # measured 0.015 vs 0.063 on this run
    code, out, _ = run_cli(capsys, "eval", str(run.dir))
    assert f"calibration: ECE {report['ece']:.4f} with temperature {run.temperature:.3f}" in out


def test_predictor_probabilities_are_the_calibrated_softmax(run: cnnkit.Run, mnist_png: tuple[Path, str]) -> None:
    predictor = Predictor.from_checkpoint(RunFolder(run.dir).best)
    assert predictor.metadata.temperature == pytest.approx(run.temperature)
    image = predictor.prepare(mnist_png[0]).unsqueeze(0)
    logits = predictor.logits(image)
    expected = (logits / run.temperature).softmax(-1)[0]
    prediction = predictor.predict([mnist_png[0]])[0]
    assert prediction.confidence == pytest.approx(float(expected.max()), abs=1e-5)
    assert prediction.confidence != pytest.approx(float(logits.softmax(-1).max()), abs=1e-4)


def test_the_report_shows_ece_before_and_after(run: cnnkit.Run, capsys: pytest.CaptureFixture[str]) -> None:
    report = RunFolder(run.dir).report_file()
    html = report.read_text()
    assert f"softmax(logits / {run.temperature:.3f})" in html
    assert (report.parent / "reliability_raw.png").is_file()
    ece = json.loads(run_cli(capsys, "eval", str(run.dir), "--json")[1])
    assert f"{ece['ece']:.4f}" in html and f"{ece['ece_raw_softmax']:.4f}" in html


def test_exported_files_carry_the_temperature(run: cnnkit.Run, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    code, _, err = run_cli(capsys, "export", str(run.dir), "--out", str(tmp_path / "model.onnx"))
    assert code == 0, err
    predictor = Predictor.from_onnx(tmp_path / "model.onnx")
    assert predictor.metadata.temperature == pytest.approx(run.temperature)


def test_a_checkpoint_without_a_temperature_is_the_raw_softmax(tmp_path: Path) -> None:
    ckpt = Checkpoint(model=None, state_dict={"w": torch.zeros(1)})
    payload = ckpt.to_payload()
    del payload["temperature"]  # written before it was recorded
    assert Checkpoint.from_payload(payload).temperature == 1.0
    saved = Checkpoint(model=None, state_dict={"w": torch.zeros(1)}, temperature=1.7).save(tmp_path / "t.pt")
    assert Checkpoint.load(saved).temperature == pytest.approx(1.7)


@pytest.mark.parametrize("bad", [0, -1.0, "hot", math.inf])
def test_a_damaged_temperature_is_one_line(bad: object) -> None:
    payload = Checkpoint(model=None, state_dict={"w": torch.zeros(1)}).to_payload()
    payload["temperature"] = bad
    with pytest.raises(cnnkit.CnnkitError, match="temperature .* is not a positive number"):
        Checkpoint.from_payload(payload, "best.pt")


def test_metadata_reads_files_exported_before_the_temperature(run: cnnkit.Run) -> None:
    metadata = Predictor.from_checkpoint(RunFolder(run.dir).best).metadata
    values = json.loads(metadata.to_json())
    assert values["temperature"] == pytest.approx(run.temperature)
    del values["temperature"]
    assert Metadata.from_json(json.dumps(values), "old.onnx").temperature == 1.0
    values["temperature"] = -2
    with pytest.raises(cnnkit.CnnkitError, match="old.onnx: its cnnkit metadata is unreadable"):
        Metadata.from_json(json.dumps(values), "old.onnx")


def test_calibrated_keeps_the_ranking() -> None:
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.1, 0.3, 0.2]])
    for temperature in (0.5, 1.0, 3.0):
        probs = calibrated(logits, temperature)
        assert torch.equal(probs.argmax(1), logits.argmax(1))
        assert torch.allclose(probs.sum(1), torch.ones(2))
    assert calibrated(logits, 3.0).max() < calibrated(logits, 1.0).max()

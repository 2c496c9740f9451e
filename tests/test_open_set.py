""""None of these" from training to every place a prediction is shown: a digits model trained
on 0-4 meets the digits 5-9 it never saw (and photos), through the Predictor, ``cnnkit
predict --reject``, the exported ONNX file and the demo page's model.

The data is real: the embedded MNIST subset written as PNG folders, digits 0-4 to train on
(``train/``, ``val/``), held-out 0-4 and unseen 5-9 from its test digits.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnkit
from cli_helpers import one_line_error, run_cli
from cnnkit.checkpoint import Checkpoint
from cnnkit.confidence import OpenSet, OpenSetModel, threshold_keeping
from cnnkit.inference import Predictor
from cnnkit.runfolder import RunFolder
from digit_folders import write_digits

KNOWN, UNSEEN = range(5), range(5, 10)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("open-set")
    write_digits(root / "known" / "train", KNOWN, 600)  # per digit: the first 600 train, the next 100 val
    write_digits(root / "known" / "val", KNOWN, 100, skip=600)
    write_digits(root / "held_out", KNOWN, 100, split="test")
    write_digits(root / "unseen", UNSEEN, 100, split="test")
    return {"known": root / "known", "held_out": root / "held_out", "unseen": root / "unseen", "root": root}


@pytest.fixture(scope="module")
def run(digits: dict[str, Path]) -> cnnkit.Run:
    lines: list[str] = []
    result = cnnkit.train(data=str(digits["known"]), model="lenet", epochs=3, output_dir=str(digits["root"] / "runs"),
                          progress=False, log=lines.append, tensorboard=False, report=False)  # fmt: skip
    result.lines = lines  # type: ignore[attr-defined]
    return result


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.png"))


def _accepted(predictor: Predictor, files: list[str]) -> float:
    results = list(predictor.predict_files(files, workers=0))
    return sum(bool(r.looks_known) for r in results) / len(results)


def test_training_fits_a_knn_open_set_that_keeps_95_percent_of_val(run: cnnkit.Run) -> None:
    ckpt = Checkpoint.load(RunFolder(run.dir).best)
    open_set = ckpt.open_set
    assert open_set is not None and open_set.score == "knn" and open_set.known_rate == 0.95
    assert open_set.bank is not None and open_set.bank.shape == (3000, 84)  # 5 x 600 images, LeNet's 84 features
    assert open_set.fitted_on == "val: 500 images"
    line = next(line for line in run.lines if line.startswith("none of these:"))
    assert "keeps 95.0% of val" in line


def test_unseen_digits_look_unknown_and_held_out_known_digits_do_not(run: cnnkit.Run, digits: dict[str, Path]) -> None:
    predictor = Predictor.from_checkpoint(RunFolder(run.dir).best)
    kept = _accepted(predictor, _files(digits["held_out"]))
    let_in = _accepted(predictor, _files(digits["unseen"]))
    assert kept >= 0.88  # the threshold keeps 95 % of val; held-out test digits of the same classes about as many
    assert let_in <= 0.6  # digits 5-9 (measured: see the closing note of issue 30); the raw softmax accepts all


def test_predict_reject_writes_unknown_and_the_csv_has_the_score(
    run: cnnkit.Run, digits: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "unseen.csv"
    code, _, err = run_cli(capsys, "predict", str(run.dir), str(digits["unseen"]), "--reject", "--backend", "torch",
                           "--out", str(out))  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 500 and {"known_score", "looks_known"} <= set(rows[0])
    rejected = [r for r in rows if r["looks_known"] == "false"]
    assert rejected and all(r["label"] == "unknown" for r in rejected)
    assert all(r["label"] != "unknown" for r in rows if r["looks_known"] == "true")
    assert f"{len(rejected):,} look like none of the classes" in err


def test_the_onnx_file_gives_the_same_decisions(run: cnnkit.Run, digits: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    pytest.importorskip("onnxruntime")
    target = tmp_path / "model.onnx"
    code, out, err = run_cli(capsys, "export", str(run.dir), "--out", str(target), "--dynamic-batch")
    assert code == 0, err
    assert "known/unknown decisions changed: 0" in out
    files = _files(digits["unseen"])[::5] + _files(digits["held_out"])[::5]
    torch_results = list(Predictor.from_checkpoint(RunFolder(run.dir).best).predict_files(files, workers=0))
    onnx = Predictor.from_onnx(target)
    stored = Checkpoint.load(RunFolder(run.dir).best).open_set
    assert onnx.open_set is not None and stored is not None and onnx.open_set.params() == stored.params()
    onnx_results = list(onnx.predict_files(files, workers=0))
    assert [r.looks_known for r in onnx_results] == [r.looks_known for r in torch_results]
    assert np.allclose([r.known_score for r in onnx_results], [r.known_score for r in torch_results], atol=1e-4)


def test_the_demo_says_none_of_these_for_an_unseen_digit(run: cnnkit.Run, digits: dict[str, Path]) -> None:
    pytest.importorskip("gradio")
    from cnnkit.serve.app import NONE_OF_THESE, DemoModel

    predictor = Predictor.from_checkpoint(RunFolder(run.dir).best)
    results = list(predictor.predict_files(_files(digits["unseen"]), workers=0))
    rejected = next(r.source for r in results if r.looks_known is False)
    accepted = next(r.source for r in results if r.looks_known)
    model = DemoModel(predictor, gradcam=False)
    assert NONE_OF_THESE in model.upload(rejected)[3]
    assert model.upload(accepted)[3] == ""


def test_reject_without_an_open_set_is_one_line(digits: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    plain = cnnkit.train(data=str(digits["known"]), model="lenet", epochs=1, output_dir=str(tmp_path), progress=False,
                         log=lambda _: None, tensorboard=False, report=False, open_set="off")  # fmt: skip
    assert Checkpoint.load(RunFolder(plain.dir).best).open_set is None
    code, _, err = run_cli(capsys, "predict", str(plain.dir), str(digits["unseen"] / "5"), "--reject")
    assert code == 1
    assert "--reject needs a model with an open set" in one_line_error(err)


def test_an_open_set_survives_the_checkpoint_and_a_damaged_one_is_one_line(tmp_path: Path) -> None:
    bank = torch.nn.functional.normalize(torch.randn(7, 3), dim=1).half()
    open_set = OpenSet("knn", 0.5, 0.9, 3, bank, "val: 10 images")
    saved = Checkpoint(model=None, state_dict={"w": torch.zeros(1)}, open_set=open_set).save(tmp_path / "o.pt")
    back = Checkpoint.load(saved).open_set
    assert back is not None and back.params() == open_set.params() and torch.equal(back.bank, bank)
    payload = Checkpoint(model=None, state_dict={"w": torch.zeros(1)}, open_set=open_set).to_payload()
    payload["open_set"]["score"] = "vibes"
    with pytest.raises(cnnkit.CnnkitError, match="best.pt: its open-set part is unreadable"):
        Checkpoint.from_payload(payload, "best.pt")
    assert json.loads(json.dumps(open_set.params()))["threshold"] == 0.5


def test_the_graph_scores_like_the_parts() -> None:
    """OpenSetModel's in-graph knn equals the score computed from the hooked features."""
    from cnnkit.confidence import feature_bank, known_score, penultimate_features
    from cnnkit.models import create_model

    torch.manual_seed(0)
    model = create_model("lenet", num_classes=5, in_chans=1, input_size=(28, 28)).eval()
    images = torch.randn(6, 1, 28, 28)
    with torch.no_grad(), penultimate_features(model) as collected:
        logits = model(images)
    bank = feature_bank(torch.randn(20, 84), torch.arange(20) % 5)
    graph = OpenSetModel(model, OpenSet("knn", 0.0, k=3, bank=bank)).eval()
    with torch.no_grad():
        graph_logits, known = graph(images)
    assert torch.allclose(graph_logits, logits, atol=1e-6)
    expected = known_score("knn", logits, features=collected[0], bank=bank, k=3)
    assert torch.allclose(known, expected, atol=1e-3)  # the bank is float16
    threshold = threshold_keeping(known, 0.5)
    assert (known >= threshold).sum() == 3 and (known > threshold).sum() == 2  # the largest that keeps half

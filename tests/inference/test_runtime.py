"""Which runtime `cnnkit predict` picks (cnnkit.inference.runtime), on a briefly trained LeNet
and real MNIST test digits written as PNG files.

A checkpoint on the CPU runs in ONNX Runtime through an fp32 ONNX file built once, checked
against PyTorch on real images and cached under ``$CNNKIT_CACHE_DIR/onnx``; without the
export extra, or when the build fails its check, PyTorch runs and the note says why. Every
test that builds gets a cache folder of its own (the session-wide one of conftest is shared
with other test files, and the cache is keyed by the checkpoint alone).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import cnnkit
from cli_helpers import one_line_error, run_cli
from cnnkit import export_checkpoint
from cnnkit.commands.predict import PredictSummary
from cnnkit.data.datasets import load_source
from cnnkit.inference import Predictor, runtime
from cnnkit.inference import export as export_module
from cnnkit.inference.backends import onnx_session
from cnnkit.inference.export import ParityResult
from cnnkit.inference.metadata import file_sha256

pytest.importorskip("onnx", reason="the export extra is not installed")
pytest.importorskip("onnxruntime", reason="the export extra is not installed")
DIGITS = 100  # PNG files predicted: more than runtime.CHECK_IMAGES, so a check on them takes 64


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the first :data:`DIGITS` embedded MNIST test digits as PNG files."""
    folder = tmp_path_factory.mktemp("digits")
    images, _ = load_source("embedded-mnist", None, False).test
    for i in range(DIGITS):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def onnx_file(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run exported by `cnnkit export` as a dynamic-batch fp32 ONNX file."""
    result = export_checkpoint(run_dir, out=tmp_path_factory.mktemp("exported") / "model.onnx", dynamic_batch=True)
    assert result.passed
    return result.path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder for this test alone."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def no_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The export extra looks uninstalled: ``find_spec("onnxruntime")`` finds nothing."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, package=None: None if name == "onnxruntime" else real(name, package))  # fmt: skip


def _predict(model: Path, digits: Path, out: Path, **options) -> tuple[PredictSummary, dict[str, str]]:
    """`cnnkit.predict` on every digit; the summary and ``{file name: label}`` from its JSON output."""
    summary = cnnkit.predict(model, [str(digits)], out=out, progress=False, **options)
    rows = json.loads(out.read_text())["predictions"]
    labels = {Path(row["file"]).name: row["label"] for row in rows}
    assert len(labels) == DIGITS and summary.predicted == DIGITS
    return summary, labels


def _cached(run_dir: Path, cache: Path) -> Path:
    return cache / "onnx" / f"{file_sha256(run_dir / 'checkpoints' / 'best.pt')[:32]}.onnx"


def _no_export(*args, **kwargs):
    raise AssertionError("the ONNX file was exported again")


# ----------------------------------------------------------------------------- the fast path


def test_predict_on_a_checkpoint_runs_a_checked_cached_onnx_build(run_dir, digits, cache, tmp_path, monkeypatch,
                                                                   capsys) -> None:  # fmt: skip
    out = tmp_path / "auto.json"
    code, _, err = run_cli(capsys, "predict", str(run_dir), str(digits), "--out", str(out))
    slow, torch_labels = _predict(run_dir, digits, tmp_path / "torch.json", backend="torch")

    assert code == 0, err
    assert "backend: onnxruntime (ONNX file built in " in err and "--backend torch for PyTorch)" in err
    assert f"{runtime.CHECK_IMAGES} validation images" in err and f"predicted {DIGITS} images" in err
    written = json.loads(out.read_text())
    assert written["summary"]["backend"] == "onnxruntime" and slow.backend == "torch"
    assert {Path(row["file"]).name: row["label"] for row in written["predictions"]} == torch_labels  # every file
    assert len(set(torch_labels.values())) >= 5  # a trained model, not a constant one
    cached = _cached(run_dir, cache)
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]  # no .partial, no .failed.json
    session, metadata = onnx_session(cached)
    assert metadata.precision == "fp32" and isinstance(session.get_inputs()[0].shape[0], str)  # any batch size

    monkeypatch.setattr(export_module, "export_onnx", _no_export)
    again, again_labels = _predict(run_dir, digits, tmp_path / "again.json")
    assert again.backend == "onnxruntime" and "cached" in again.backend_note and str(cached) in again.backend_note
    assert again_labels == torch_labels


def test_the_first_build_is_announced_before_it_starts_and_never_again(run_dir, digits, cache, monkeypatch,
                                                                        capsys) -> None:  # fmt: skip
    said: list[str] = []
    build = runtime._build

    def announced_first(*args, **kwargs):
        assert said, "the build started before it was announced"
        return build(*args, **kwargs)

    monkeypatch.setattr(runtime, "_build", announced_first)
    runtime.load_predictor(run_dir, announce=said.append)
    (line,) = said
    assert line.startswith("building a faster ONNX copy of the model for predict (once per checkpoint, about ")
    assert "--backend torch skips it" in line
    assert 5 <= runtime.build_seconds(Predictor.from_checkpoint(run_dir).model) <= 15  # a LeNet: seconds

    code, _, err = run_cli(capsys, "predict", str(run_dir), str(digits), "--no-progress")
    assert code == 0 and "building a faster ONNX copy" not in err, err  # cached: nothing to build, nothing said


def test_predict_says_it_builds_on_stderr_before_the_backend_line(run_dir, digits, cache, capsys) -> None:
    code, out, err = run_cli(capsys, "predict", str(run_dir), str(digits))
    assert code == 0, err
    lines = err.splitlines()
    building = next(i for i, line in enumerate(lines) if line.startswith("building a faster ONNX copy"))
    backend = next(i for i, line in enumerate(lines) if line.startswith("backend: onnxruntime (ONNX file built"))
    assert building < backend
    assert "building" not in out  # stdout holds the predictions only


def test_two_builds_of_one_checkpoint_at_once_both_succeed(run_dir, digits, cache, tmp_path, monkeypatch) -> None:
    """Another process finishes the same build while this one checks its file (simulated by
    predicting again from inside the check): neither removes the other's staging file."""
    real = export_module.check_parity
    racing: list = []

    def check_while_another_builds(reference, exported, tolerance=export_module.DEFAULT_TOLERANCE):
        if not racing:
            racing.append(None)  # the other build's own check runs the real one
            racing[0] = _predict(run_dir, digits, tmp_path / "other.json")
        return real(reference, exported, tolerance)

    monkeypatch.setattr(export_module, "check_parity", check_while_another_builds)
    this, labels = _predict(run_dir, digits, tmp_path / "this.json")
    other, other_labels = racing[0]

    assert this.backend == other.backend == "onnxruntime", (this.backend_note, other.backend_note)
    assert "built" in this.backend_note and "built" in other.backend_note and labels == other_labels
    cached = _cached(run_dir, cache)
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]


@pytest.fixture
def moved(run_dir: Path, tmp_path: Path) -> Path:
    """The run's checkpoint alone in a folder, as if trained on MNIST from a folder that is gone."""
    payload = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    payload["config"]["data"]["name"] = "mnist"
    payload["config"]["data"]["data_dir"] = str(tmp_path / "gone")
    path = tmp_path / "elsewhere" / "moved.pt"
    path.parent.mkdir()
    torch.save(payload, path)
    return path


def test_the_build_is_checked_on_the_files_to_predict_when_the_runs_data_is_gone(run_dir, moved, digits, cache,
                                                                                  tmp_path) -> None:  # fmt: skip
    fast, fast_labels = _predict(moved, digits, tmp_path / "auto.json")
    _, torch_labels = _predict(run_dir, digits, tmp_path / "torch.json", backend="torch")

    assert fast.backend == "onnxruntime"
    assert f"{runtime.CHECK_IMAGES} of the images to predict" in fast.backend_note
    assert fast_labels == torch_labels
    assert (cache / "onnx" / f"{file_sha256(moved)[:32]}.onnx").is_file()


def test_no_check_images_now_does_not_block_the_build_later(moved, digits, cache, tmp_path) -> None:
    """Predictor.load has no files to check on: PyTorch this time, and nothing remembered."""
    loaded = Predictor.load(moved)
    assert loaded.backend.name == "torch" and "no images to check it against PyTorch" in loaded.note
    assert not list((cache / "onnx").glob("*.failed.json"))

    summary, _ = _predict(moved, digits, tmp_path / "p.json")
    assert summary.backend == "onnxruntime" and "of the images to predict" in summary.backend_note


def test_the_check_never_downloads_the_runs_dataset(moved, digits, cache, tmp_path, monkeypatch) -> None:
    from torchvision.datasets import MNIST

    asked: list[str] = []

    def download(self) -> None:  # stands in for the network: records the attempt, fetches nothing
        asked.append(self.root)
        raise RuntimeError("no network in tests")

    monkeypatch.delenv("CNNKIT_OFFLINE", raising=False)  # downloads allowed, as on a user's machine
    monkeypatch.setattr(MNIST, "download", download)
    summary, _ = _predict(moved, digits, tmp_path / "p.json")

    assert asked == []
    assert summary.backend == "onnxruntime" and "of the images to predict" in summary.backend_note


def test_an_unwritable_cache_folder_falls_back_to_torch(run_dir, digits, tmp_path, monkeypatch) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(not_a_folder))
    summary, labels = _predict(run_dir, digits, tmp_path / "p.json")
    _, torch_labels = _predict(run_dir, digits, tmp_path / "torch.json", backend="torch")

    assert summary.backend == "torch" and labels == torch_labels
    assert f"cannot write the ONNX build to {not_a_folder / 'onnx'}" in summary.backend_note
    assert "CNNKIT_CACHE_DIR" in summary.backend_note


# ----------------------------------------------------------------------------- falling back to PyTorch


def test_without_the_export_extra_predict_runs_torch_and_says_how_to_install_it(run_dir, digits, cache, tmp_path,
                                                                                 no_onnxruntime) -> None:  # fmt: skip
    summary, _ = _predict(run_dir, digits, tmp_path / "p.json")

    assert summary.backend == "torch"
    assert "onnxruntime not installed" in summary.backend_note
    assert "pip install 'cnnkit[export]'" in summary.backend_note
    assert not (cache / "onnx").exists()  # nothing was built


def test_a_forced_onnxruntime_backend_without_the_extra_is_an_error(run_dir, digits, cache, no_onnxruntime,
                                                                     capsys) -> None:  # fmt: skip
    code, out, err = run_cli(capsys, "predict", str(run_dir), str(digits), "--backend", "onnxruntime",
                             "--no-progress")  # fmt: skip
    assert code == 1 and out == ""
    line = one_line_error(err)
    assert "--backend onnxruntime" in line and "pip install 'cnnkit[export]'" in line


def test_a_build_that_fails_its_check_falls_back_to_torch_and_is_not_retried(run_dir, digits, cache, tmp_path,
                                                                              monkeypatch) -> None:  # fmt: skip
    def failing(reference, exported, tolerance=export_module.DEFAULT_TOLERANCE):
        return ParityResult(len(reference), 0.5, 0.9, False, tolerance)

    monkeypatch.setattr(export_module, "check_parity", failing)
    first, first_labels = _predict(run_dir, digits, tmp_path / "first.json")

    cached = _cached(run_dir, cache)
    marker = cached.with_suffix(".failed.json")
    assert first.backend == "torch" and "differs from PyTorch" in first.backend_note
    assert sorted(p.name for p in cached.parent.iterdir()) == [marker.name]  # no .onnx, no .partial
    assert "top-1 agreement 90.00%" in json.loads(marker.read_text())["reason"]

    monkeypatch.setattr(export_module, "export_onnx", _no_export)
    second, second_labels = _predict(run_dir, digits, tmp_path / "second.json")
    assert second.backend == "torch" and "an earlier ONNX build failed" in second.backend_note
    assert str(marker) in second.backend_note and second_labels == first_labels


def test_amp_auto_on_a_cpu_is_float32_and_keeps_the_fast_path(run_dir, digits, cache, tmp_path) -> None:
    auto, auto_labels = _predict(run_dir, digits, tmp_path / "auto.json", amp="auto")
    bf16, _ = _predict(run_dir, digits, tmp_path / "bf16.json", amp="bf16")
    _, torch_labels = _predict(run_dir, digits, tmp_path / "torch.json", backend="torch")

    assert auto.backend == "onnxruntime" and auto_labels == torch_labels
    assert bf16.backend == "torch" and "--amp bf16 runs PyTorch autocast" in bf16.backend_note


# ----------------------------------------------------------------------------- options


def test_backend_torch_on_an_onnx_file_is_a_usage_error(onnx_file, digits, capsys) -> None:
    code, out, err = run_cli(capsys, "predict", str(onnx_file), str(digits), "--backend", "torch")
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert "is an ONNX file" in line and "--backend torch" in line


def test_an_exported_onnx_file_runs_in_onnx_runtime(onnx_file, digits, cache, tmp_path) -> None:
    summary, _ = _predict(onnx_file, digits, tmp_path / "p.json")
    assert summary.backend == "onnxruntime" and "fp32 file from cnnkit export" in summary.backend_note
    assert not (cache / "onnx").exists()  # an exported file needs no build


# ----------------------------------------------------------------------------- OpenVINO


def test_openvino_predicts_like_onnx_runtime_on_an_exported_file(onnx_file, digits, cache, tmp_path) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    vino, vino_labels = _predict(onnx_file, digits, tmp_path / "ov.json", backend="openvino")
    ort, ort_labels = _predict(onnx_file, digits, tmp_path / "ort.json", backend="onnxruntime")

    assert vino.backend == "openvino" and ort.backend == "onnxruntime"
    assert vino_labels == ort_labels
    images = Predictor.from_onnx(onnx_file).preprocess.normalize(load_source("embedded-mnist", None, False).test[0])
    logits = Predictor.from_openvino(onnx_file).logits(images), Predictor.from_onnx(onnx_file).logits(images)
    assert float((logits[0] - logits[1]).abs().max()) < 1e-3  # float32 in OpenVINO too, not bf16


def test_openvino_on_a_checkpoint_builds_and_uses_the_cached_file(run_dir, digits, cache, tmp_path) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    vino, vino_labels = _predict(run_dir, digits, tmp_path / "ov.json", backend="openvino")
    _, torch_labels = _predict(run_dir, digits, tmp_path / "torch.json", backend="torch")

    assert vino.backend == "openvino" and "built" in vino.backend_note
    assert _cached(run_dir, cache).is_file()
    assert vino_labels == torch_labels
    again, _ = _predict(run_dir, digits, tmp_path / "again.json", backend="openvino")
    assert again.backend == "openvino" and "cached" in again.backend_note


def test_a_forced_openvino_backend_without_openvino_says_how_to_install_it(run_dir, digits, cache, monkeypatch,
                                                                            capsys) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, package=None: None if name == "openvino" else real(name, package))  # fmt: skip
    code, _, err = run_cli(capsys, "predict", str(run_dir), str(digits), "--backend", "openvino", "--no-progress")
    assert code == 1 and "pip install 'cnnkit[openvino]'" in one_line_error(err)

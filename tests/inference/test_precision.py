"""`cnnkit export --precision fp16|int8` on a briefly trained LeNet, judged on real MNIST digits.

The command scores the reduced-precision file against PyTorch on the run's 1,000 labelled
validation images and refuses it (exit 1, nothing written) when it loses more than
``--allow-drop`` points. Here the files must keep top-1 within a point, predict PNG files
like the checkpoint, and be what their metadata says (precision, source checkpoint, graph).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import one_line_error, run_cli
from cnnkit import export_checkpoint
from cnnkit.commands.export import ExportResult
from cnnkit.data.datasets import load_source
from cnnkit.inference import Predictor
from cnnkit.inference import export as export_module
from cnnkit.inference.backends import onnx_session

onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
pytest.importorskip("onnxruntime", reason="the export extra is not installed")
from onnx import TensorProto, numpy_helper  # noqa: E402  (after the skip: onnx may be missing)

PNGS = 500  # embedded MNIST test digits written as PNG files


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("digit-pngs")
    images, _ = load_source("embedded-mnist", None, False).test
    paths = [folder / f"{i:03d}.png" for i in range(PNGS)]
    for path, image in zip(paths, images, strict=False):
        Image.fromarray(image[0].numpy()).save(path)
    return paths


@pytest.fixture(scope="module")
def test_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 2,000 embedded MNIST test digits (uint8) and their labels."""
    return load_source("embedded-mnist", None, False).test


@pytest.fixture(scope="module")
def exports(run_dir: Path) -> dict[str, ExportResult]:
    """``export_checkpoint`` of the run at each precision, with the default options."""
    return {precision: export_checkpoint(run_dir, precision=precision) for precision in ("fp32", "fp16", "int8")}


def _agreement(files: list[Path], first: Predictor, second: Predictor) -> float:
    """Fraction of ``files`` both predictors give the same top-1 class."""
    same = [a.index == b.index for a, b in zip(first.predict(files), second.predict(files), strict=True)]
    assert len(same) == len(files)
    return float(np.mean(same))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_bytes(path: Path) -> int:
    """The file's size without the open set's training-feature bank (float16 in every
    precision: the known/unknown decisions stay the fp32 file's)."""
    bank = next(init for init in onnx.load(str(path)).graph.initializer if init.name == "bank")
    return path.stat().st_size - len(bank.raw_data)


def _initializer_types(path: Path) -> Counter:
    return Counter(TensorProto.DataType.Name(init.data_type) for init in onnx.load(str(path)).graph.initializer)


# ----------------------------------------------------------------------------- int8


def test_int8_export_keeps_top1_within_a_point_on_the_validation_images(exports, run_dir) -> None:
    result = exports["int8"]

    assert result.passed and result.precision == "int8" and result.calibrated == 256
    assert result.path == run_dir / "export" / "model.int8.onnx" and result.path.is_file()
    assert result.checked == "validation images" and result.accuracy.images == 1000
    assert result.accuracy.reference_top1 is not None and result.accuracy.exported_top1 is not None  # labels used
    assert result.accuracy.reference_top1 > 0.8  # a trained model: the bound means something
    assert result.accuracy.drop_points <= 1, result.accuracy.summary()
    assert result.accuracy.agreement >= 0.98
    assert _model_bytes(result.path) < 0.4 * _model_bytes(exports["fp32"].path)
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["model.fp16.onnx", "model.int8.onnx",
                                                                    "model.onnx"]  # no .partial  # fmt: skip


def test_int8_file_is_per_channel_qdq_and_names_its_checkpoint(exports, run_dir) -> None:
    path = exports["int8"].path
    proto = onnx.load(str(path))
    ops = Counter(node.op_type for node in proto.graph.node)
    initializers = {init.name: init for init in proto.graph.initializer}

    assert ops["QuantizeLinear"] >= 5 and ops["DequantizeLinear"] >= 5
    weights = [node for node in proto.graph.node if node.op_type == "DequantizeLinear"
               and initializers.get(node.input[0]) is not None
               and initializers[node.input[0]].data_type == TensorProto.INT8]  # fmt: skip
    assert len(weights) == 5  # LeNet's 2 convolutions and 3 linear layers
    for node in weights:  # one scale per output channel
        scale = numpy_helper.to_array(initializers[node.input[1]])
        assert scale.shape == (initializers[node.input[0]].dims[0],) and scale.size > 1
    assert {t.type.tensor_type.elem_type for t in [*proto.graph.input, *proto.graph.output]} == {TensorProto.FLOAT}
    session, metadata = onnx_session(path)
    assert metadata.precision == "int8"
    assert metadata.source_sha256 == _sha256(run_dir / "checkpoints" / "best.pt")
    assert metadata.class_names == [str(d) for d in range(10)]


def test_int8_logits_are_float_not_rounded_to_256_levels(exports, run_dir, test_digits) -> None:
    """The graph output comes from the last layer, not from a DequantizeLinear: quantised
    logits tie exactly between two classes on some digits, and the tie goes to the lower index."""
    path = exports["int8"].path
    proto = onnx.load(str(path))
    last = next(node for node in proto.graph.node if proto.graph.output[0].name in node.output)
    assert last.op_type == "Gemm"
    images = Predictor.from_checkpoint(run_dir).preprocess.normalize(test_digits[0])
    logits = Predictor.from_onnx(path).logits(images)
    top2 = logits.topk(2, dim=1).values
    assert int((top2[:, 0] == top2[:, 1]).sum()) == 0
    assert logits.unique().numel() > 1000


def test_int8_file_alone_predicts_png_digits_like_the_checkpoint(exports, run_dir, digit_pngs) -> None:
    int8 = Predictor.from_onnx(exports["int8"].path)
    checkpoint = Predictor.from_checkpoint(run_dir)
    assert int8.class_names == checkpoint.class_names and int8.metadata.precision == "int8"
    assert _agreement(digit_pngs, int8, checkpoint) >= 0.98


# ----------------------------------------------------------------------------- fp16


def test_fp16_export_halves_the_file_and_predicts_like_the_checkpoint(exports, run_dir, digit_pngs) -> None:
    result = exports["fp16"]
    assert result.passed and result.path == run_dir / "export" / "model.fp16.onnx"
    assert result.accuracy.images == 1000 and result.accuracy.drop_points <= 1
    assert _model_bytes(result.path) < 0.6 * _model_bytes(exports["fp32"].path)

    types = _initializer_types(result.path)
    assert types["FLOAT16"] == 12 and types["FLOAT"] == 0  # every weight and bias, the open set's bank, its eps
    session, metadata = onnx_session(result.path)
    assert [i.type for i in session.get_inputs()] == ["tensor(float)"]  # callers still feed float32
    assert [o.type for o in session.get_outputs()] == ["tensor(float)"] * 2  # logits, known
    assert metadata.precision == "fp16" and metadata.source_sha256 == _sha256(run_dir / "checkpoints" / "best.pt")
    assert _agreement(digit_pngs, Predictor.from_onnx(result.path), Predictor.from_checkpoint(run_dir)) >= 0.99


def test_fp16_file_in_openvino_gives_onnx_runtimes_logits(exports, test_digits) -> None:
    """OpenVINO would run an fp16 file's arithmetic in bf16 on CPUs with bf16 units (this one:
    AVX-512 bf16), rounding more than the file itself does; it is asked for f32."""
    pytest.importorskip("openvino", reason="openvino is not installed")
    path = exports["fp16"].path
    ort = Predictor.from_onnx(path)
    images = ort.preprocess.normalize(test_digits[0][:500])
    difference = (Predictor.from_openvino(path).logits(images) - ort.logits(images)).abs().max()
    assert float(difference) < 1e-3


def test_fp32_export_records_its_precision_and_source(exports, run_dir) -> None:
    result = exports["fp32"]
    assert result.passed and result.path == run_dir / "export" / "model.onnx" and result.calibrated == 0
    _, metadata = onnx_session(result.path)
    assert metadata.precision == "fp32" and metadata.source_sha256 == _sha256(run_dir / "checkpoints" / "best.pt")
    assert _initializer_types(result.path)["FLOAT16"] == 1  # the open set's bank, float16 as the checkpoint holds it


# ----------------------------------------------------------------------------- refusal


@pytest.fixture
def own_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run without its export folder (the module's exports live in the original)."""
    return Path(shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("export")))


def _damaged_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 quantisation whose last layer's int8 weights come out negated: a real accuracy loss."""
    real = export_module.quantize_int8

    def damaged(proto, calibration, notes):
        quantized = real(proto, calibration, notes)
        graph = quantized.graph
        last = next(node for node in graph.node if graph.output[0].name in node.output)
        producer = {name: node for node in graph.node for name in node.output}
        weight_name = producer[last.input[1]].input[0]  # the DequantizeLinear of its weights
        weight = next(init for init in graph.initializer if init.name == weight_name)
        flipped = np.clip(-numpy_helper.to_array(weight).astype(np.int16), -127, 127).astype(np.int8)
        weight.CopyFrom(numpy_helper.from_array(flipped, weight_name))
        return quantized

    monkeypatch.setattr(export_module, "quantize_int8", damaged)


def test_a_refused_int8_export_is_not_written_and_says_how_to_accept_it(own_run, monkeypatch, capsys) -> None:
    _damaged_int8(monkeypatch)
    code, out, err = run_cli(capsys, "export", str(own_run), "--precision", "int8")

    assert code == 1
    line = one_line_error(err)
    lost = re.search(r"the int8 file loses (\d+\.\d\d) accuracy points against PyTorch on 1000 validation images, "
                     r"more than --allow-drop 1; it was not written\. Pass --allow-drop (\d+\.\d\d) to accept",
                     line)  # fmt: skip
    assert lost, line
    assert float(lost[1]) > 20  # the damage is real: the score fell, as printed
    assert float(lost[1]) <= float(lost[2]) <= min(100, float(lost[1]) + 0.01)  # just enough, and a valid value
    assert re.search(r"check on 1000 validation images: top-1 PyTorch \d+\.\d\d%, exported \d+\.\d\d% \(-", out), out
    assert "wrote" not in out
    export_dir = own_run / "export"
    assert not export_dir.exists() or list(export_dir.iterdir()) == []  # no model.int8.onnx, no .partial

    code, out, err = run_cli(capsys, "export", str(own_run), "--precision", "int8", "--allow-drop", lost[2])
    assert code == 0, err
    assert out.startswith(f"wrote {export_dir / 'model.int8.onnx'} ("), out
    assert sorted(p.name for p in export_dir.iterdir()) == ["model.int8.onnx"]
    assert onnx_session(export_dir / "model.int8.onnx")[1].precision == "int8"


def test_a_refused_export_without_labels_counts_changed_labels(own_run, digit_pngs, monkeypatch, capsys) -> None:
    """--check-images has no labels: the top-1 changes against PyTorch stand for the loss."""
    _damaged_int8(monkeypatch)
    code, _, err = run_cli(capsys, "export", str(own_run), "--precision", "int8", "--check-images",
                           *map(str, digit_pngs[:100]))  # fmt: skip
    assert code == 1
    line = one_line_error(err)
    assert re.search(r"changes \d+\.\d\d% of top-1 labels against PyTorch on 100 given images", line), line
    assert "--allow-drop" in line and not (own_run / "export" / "model.int8.onnx").exists()


# ----------------------------------------------------------------------------- option errors


@pytest.mark.parametrize(("options", "named"), [
    (["--precision", "int8", "--format", "torchscript"], "--precision int8 applies to --format onnx"),
    (["--precision", "fp16", "--format", "torchscript"], "--precision fp16 applies to --format onnx"),
    (["--precision", "int8", "--calibration", "0"], "--calibration must be >= 1, got 0"),
    (["--precision", "int8", "--allow-drop", "-1"], "--allow-drop must be in [0, 100], got -1"),
    (["--precision", "fp16", "--allow-drop", "101"], "--allow-drop must be in [0, 100], got 101"),
])  # fmt: skip
def test_bad_precision_options_are_usage_errors(own_run, options, named, capsys) -> None:
    code, out, err = run_cli(capsys, "export", str(own_run), *options)
    assert code == 2 and out == ""
    assert named in one_line_error(err)
    assert not (own_run / "export").exists()  # refused before anything was loaded or written

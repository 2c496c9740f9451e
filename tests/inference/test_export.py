"""`cnnkit export` (ONNX, TorchScript) and its parity check, on real images only.

Parity subjects: seeded random-init ``lenet`` (real MNIST test digits), ``cifar_cnn`` and
``vgg16_bn`` (real CIFAR-10 test PNGs) and ``timm:resnet10t`` (real Imagenette photos at
64 px), each in both formats, held to 1e-4 (ten times stricter than the command's
default). Then a briefly trained MNIST run goes through the command line, and the ONNX
file alone must pick the same class as the checkpoint for every one of the 2,000 embedded
and the 10,000 official MNIST test digits.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import one_line_error, run_cli
from cnnkit import export_checkpoint
from cnnkit.cli import main
from cnnkit.config import ExportOptions
from cnnkit.data.datasets import load_source
from cnnkit.data.spec import Preprocess
from cnnkit.errors import CnnkitError
from cnnkit.inference import Predictor
from cnnkit.inference import export as export_module
from cnnkit.inference.backends import onnx_session
from cnnkit.inference.export import (
    check_parity,
    export_model,
    exported_outputs,
    load_torchscript,
    reference_outputs,
)
from cnnkit.inference.metadata import METADATA_KEY, Metadata
from cnnkit.models import create_model

STRICT = 1e-4  # what the tests hold every subject to (the command's default is 1e-3)
PER_CLASS = 4  # real images per class for the parity subjects: 40 images each
PARITY_LINE = re.compile(  # the accuracy of both models on the run's validation images, then the logits
    r"check on 1000 validation images: top-1 PyTorch (\d+\.\d\d)%, exported \1% \(\+0\.00 points\), "
    r"top-1 agreement 100\.00%\n"
    r"logits: max \|Δlogit\| \d\.\de[-+]\d\d, top-1 agreement 100\.00%"
    r"(, known/unknown decisions changed: 0)? \(tolerance 1e-03\): OK"
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
pytest.importorskip("onnxruntime", reason="the export extra is not installed")


# ----------------------------------------------------------------------------- real images


def _pngs_per_class(root: Path, size: int, per_class: int = PER_CLASS) -> torch.Tensor:
    """The first ``per_class`` files (sorted) of each class folder as uint8 ``[N, 3, size, size]``."""
    arrays = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.iterdir())[:per_class]:
            image = Image.open(file).convert("RGB").resize((size, size), Image.BILINEAR)
            arrays.append(np.asarray(image))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def mnist_images() -> tuple[torch.Tensor, Preprocess]:
    """Real MNIST test digits (the embedded subset), normalised, and their preprocessing."""
    pre = Preprocess(1, (28, 28), (0.1307,), (0.3081,))
    images, _ = load_source("embedded-mnist", None, False).test
    return pre.normalize(images[: 10 * PER_CLASS]), pre


@pytest.fixture(scope="module")
def cifar_images(shared_data: Path) -> tuple[torch.Tensor, Preprocess]:
    """Real CIFAR-10 test PNGs, normalised. Read straight from the files: load_source("cifar10")
    decodes all 60,000 PNGs first (~13 s), and 40 images are what this needs."""
    root = shared_data / "cifar10" / "test"
    if not root.is_dir():
        pytest.skip(f"CIFAR-10 PNGs not found at {root}")
    pre = Preprocess(3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    return pre.normalize(_pngs_per_class(root, 32)), pre


@pytest.fixture(scope="module")
def imagenette_images(imagenette: Path) -> tuple[torch.Tensor, Preprocess]:
    """Real Imagenette val photos (224 px JPEGs, some greyscale) at 64 px, normalised."""
    pre = Preprocess(3, (64, 64), IMAGENET_MEAN, IMAGENET_STD)
    return pre.normalize(_pngs_per_class(imagenette / "val", 64)), pre


SUBJECTS = {"lenet": "mnist_images", "cifar_cnn": "cifar_images", "vgg16_bn": "cifar_images",
            "timm:resnet10t": "imagenette_images"}  # fmt: skip


@pytest.fixture(scope="module")
def subjects(request: pytest.FixtureRequest) -> Callable[[str], tuple]:
    """``name -> (model, images, preprocessing, PyTorch logits)``, built once per model for both formats.

    The model is seeded random init with BatchNorm statistics taken from the real images
    (so the BatchNorm the exporters fold into the convolutions does real work), and its last
    layer scaled so the logits spread like a trained model's (std 5, not random init's
    ~0.05): the 1e-4 bound and the top-1 margins are then as demanding as on a trained model.
    """
    built: dict[str, tuple] = {}

    def subject(name: str) -> tuple:
        if name not in built:
            images, pre = request.getfixturevalue(SUBJECTS[name])
            torch.manual_seed(0)
            model = create_model(name, num_classes=10, in_chans=images.shape[1], input_size=tuple(images.shape[2:]))
            last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
            with torch.no_grad():
                model.train()(images)
                scale = 5 / model.eval()(images).std()
                last.weight.mul_(scale)
                last.bias.mul_(scale)
            reference = reference_outputs(model, images)[0]
            assert reference.std() == pytest.approx(5, rel=1e-3)
            built[name] = (model, images, pre, reference)
        return built[name]

    return subject


# ----------------------------------------------------------------------------- parity of each model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_exported_model_matches_pytorch_on_real_images(name, fmt, subjects, tmp_path) -> None:
    model, images, pre, reference = subjects(name)
    metadata = Metadata([f"class{i}" for i in range(10)], pre, {"name": name})
    target = tmp_path / f"model.{fmt}"

    made = export_model(model, images[:1], target, metadata, ExportOptions(fmt=fmt, dynamic_batch=fmt == "onnx"))
    parity = check_parity(reference, exported_outputs(target, fmt, images)[0], STRICT)

    assert len(images) >= 32 and parity.images == len(images)
    assert parity.top1_agreement == 1.0 and parity.near_ties == 0
    assert parity.max_abs_diff < STRICT and parity.ok, parity.summary()
    assert model.training is False and all(p.requires_grad for p in model.parameters())  # caller's model untouched
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # one self-contained file, no sidecar
    assert made.notes == [] and made.exporter == ("torch.export" if fmt == "onnx" else "torch.jit.trace")
    if fmt == "onnx":
        session, stored = onnx_session(target)
        assert session.get_inputs()[0].name == "input" and session.get_outputs()[0].name == "logits"
        assert isinstance(session.get_inputs()[0].shape[0], str)  # --dynamic-batch: a named batch dimension
        props = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
        assert Metadata.from_json(props[METADATA_KEY], str(target)) == metadata
        assert json.loads(props["class_names"]) == metadata.class_names
        assert Preprocess.from_dict(json.loads(props["preprocess"])) == pre
    else:
        _, stored = load_torchscript(target)
    assert stored == metadata


# ----------------------------------------------------------------------------- a trained run, end to end


def _cli(*argv: str) -> tuple[int, str, str]:
    """``cnnkit ARGV`` in-process, for module-scoped fixtures (capsys is per test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def onnx_export(run_dir: Path) -> tuple[int, str, str]:
    return _cli("export", str(run_dir), "--format", "onnx")


def test_export_command_writes_onnx_and_prints_the_parity_line(onnx_export, run_dir) -> None:
    code, out, err = onnx_export
    assert code == 0, err
    path = run_dir / "export" / "model.onnx"
    assert out.splitlines()[0].startswith(f"wrote {path} (")
    assert PARITY_LINE.search(out), out
    session, metadata = onnx_session(path)
    assert session.get_inputs()[0].shape == [1, 1, 28, 28]  # no --dynamic-batch: a fixed batch of 1
    assert metadata.class_names == [str(d) for d in range(10)]


def test_export_command_writes_torchscript(run_dir, capsys) -> None:
    code, out, err = run_cli(capsys, "export", str(run_dir), "--format", "torchscript")
    assert code == 0, err
    assert PARITY_LINE.search(out), out
    module, metadata = load_torchscript(run_dir / "export" / "model.torchscript.pt")
    predictor = Predictor.from_checkpoint(run_dir)
    assert metadata == predictor.metadata
    images = predictor.preprocess.normalize(load_source("embedded-mnist", None, False).test[0][:256])
    with torch.no_grad():
        logits, known = module(images)  # a model with an open set: its score is the second output
        assert torch.equal(logits.argmax(1), predictor.logits(images).argmax(1))
        assert known.shape == (256,)


def test_onnx_file_alone_predicts_like_the_checkpoint_on_image_files(onnx_export, run_dir, tmp_path) -> None:
    images, _ = load_source("embedded-mnist", None, False).test
    paths = []
    for i in range(50):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(images[i, 0].numpy()).save(paths[-1])
    from_onnx = Predictor.from_onnx(run_dir / "export" / "model.onnx")
    from_checkpoint = Predictor.from_checkpoint(run_dir)

    assert from_onnx.class_names == from_checkpoint.class_names
    assert from_onnx.preprocess == from_checkpoint.preprocess
    got, want = from_onnx.predict(paths), from_checkpoint.predict(paths)
    assert [p.index for p in got] == [p.index for p in want]
    assert np.allclose([p.confidence for p in got], [p.confidence for p in want], atol=1e-5)


def _top1(predictor: Predictor, images: torch.Tensor) -> np.ndarray:
    logits = [predictor.logits(predictor.preprocess.normalize(chunk)) for chunk in images.split(2000)]
    return torch.cat(logits).argmax(1).numpy()


@pytest.mark.parametrize("dataset", ["embedded-mnist", "mnist"])
def test_onnx_top1_equals_pytorch_top1_on_every_test_digit(onnx_export, run_dir, dataset, request) -> None:
    """All 2,000 embedded test digits, then all 10,000 of the official MNIST test set."""
    data_dir = request.getfixturevalue("mnist_root") if dataset == "mnist" else None
    images, labels = load_source(dataset, data_dir, False).test
    from_onnx = Predictor.from_onnx(run_dir / "export" / "model.onnx")
    from_checkpoint = Predictor.from_checkpoint(run_dir)

    onnx_top1, torch_top1 = _top1(from_onnx, images), _top1(from_checkpoint, images)

    assert len(onnx_top1) == {"embedded-mnist": 2000, "mnist": 10000}[dataset]
    np.testing.assert_array_equal(onnx_top1, torch_top1)
    assert (torch_top1 == labels.numpy()).mean() > 0.8  # a trained model, not a constant one


# ----------------------------------------------------------------------------- divergence and faults


def test_check_parity_flags_differences_and_excuses_only_near_ties() -> None:
    torch.manual_seed(0)
    reference = torch.randn(40, 10) * 5
    same = check_parity(reference, reference.clone())
    assert same.ok and same.max_abs_diff == 0 and same.top1_agreement == 1.0

    shifted = reference.clone()
    shifted[3, 2] += 0.01
    off = check_parity(reference, shifted)
    assert not off.ok and off.max_abs_diff == pytest.approx(0.01, rel=1e-6) and off.summary().endswith("FAILED")

    def pair(first: float, second: float) -> torch.Tensor:  # reference with row 5 = two close classes
        rows = reference.clone()
        rows[5] = torch.tensor([first, second] + [0.0] * 8, dtype=torch.float64).float()
        return rows

    # PyTorch: class 1 by 1.5e-3; the file: class 0 by 3e-4, every logit within 1e-3: a real change
    flipped = check_parity(pair(5.0, 5.0015), pair(5.0009, 5.0006), tolerance=1e-3)
    assert flipped.max_abs_diff <= 1e-3 and not flipped.ok
    assert flipped.top1_agreement == pytest.approx(39 / 40) and flipped.near_ties == 0
    # PyTorch: class 1 by 5e-4 (a tie at this tolerance); the file: class 0 by 3e-4: excused
    tie = check_parity(pair(5.0, 5.0005), pair(5.0008, 5.0005), tolerance=1e-3)
    assert tie.ok and tie.near_ties == 1 and tie.top1_agreement == pytest.approx(39 / 40)

    broken = reference.clone()
    broken[7, 4] = float("nan")
    assert not check_parity(reference, broken).ok
    with pytest.raises(CnnkitError, match="shape"):
        check_parity(reference, reference[:, :9])


def test_export_command_exits_1_when_parity_fails_and_keeps_the_file(run_dir, tmp_path, monkeypatch, capsys) -> None:
    real = export_module.exported_outputs

    def drifted(*args):  # a broken runtime
        logits, known = real(*args)
        return logits + 0.01, known

    monkeypatch.setattr(export_module, "exported_outputs", drifted)
    target = tmp_path / "drifted.pt"
    code, out, err = run_cli(capsys, "export", str(run_dir), "--format", "torchscript", "--out", str(target))

    assert code == 1
    line = one_line_error(err)
    assert "differ from PyTorch" in line and str(target) in line and "written anyway" in line
    assert "FAILED" in out and target.is_file()


def test_dynamo_failure_falls_back_to_the_legacy_exporter_and_says_so(run_dir, tmp_path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("unsupported operator (simulated)")

    monkeypatch.setattr(export_module, "_onnx_dynamo", fail)
    result = export_checkpoint(run_dir, "onnx", out=tmp_path / "legacy.onnx", dynamic_batch=True)

    assert "legacy" in result.exported.exporter
    assert any("simulated" in note and "legacy" in note for note in result.notes)
    assert result.parity.ok and result.parity.max_abs_diff < STRICT
    assert onnx_session(result.path)[1].class_names == [str(d) for d in range(10)]


def test_check_images_are_used_and_bad_ones_skipped(run_dir, tmp_path) -> None:
    images, _ = load_source("embedded-mnist", None, False).test
    for i in range(8):
        Image.fromarray(images[i, 0].numpy()).save(tmp_path / f"d{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    result = export_checkpoint(run_dir, "torchscript", out=tmp_path / "out" / "m.pt", check_images=[str(tmp_path)])

    assert result.parity.images == 8 and result.parity.ok and result.checked == "given images"
    assert any("broken.png" in note for note in result.notes)


def test_missing_onnx_packages_say_how_to_install_them(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    model = create_model("lenet")
    metadata = Metadata([str(d) for d in range(10)], Preprocess(1, (28, 28), (0.5,), (0.5,)))
    with pytest.raises(CnnkitError, match=re.escape("pip install 'cnnkit[export]'")):
        export_model(model, torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx", metadata)  # ONNX by default
    assert not list(tmp_path.iterdir())


def test_export_bad_input(run_dir, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", str(run_dir), "--format", "tflite"])
    assert exc.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err

    code, _, err = run_cli(capsys, "export", str(tmp_path / "no-such-run"), "--format", "onnx")
    assert code == 1 and "not found" in one_line_error(err)

    code, _, err = run_cli(capsys, "export", str(run_dir), "--format", "torchscript", "--opset", "17")
    assert code == 2 and "--opset" in one_line_error(err)


def test_missing_run_data_asks_for_check_images(run_dir, tmp_path, capsys) -> None:
    """A run trained on MNIST from a folder that is gone: say how to give parity images."""
    payload = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    payload["config"]["data"]["name"] = "mnist"
    payload["config"]["data"]["data_dir"] = str(tmp_path / "gone")
    torch.save(payload, tmp_path / "moved.pt")
    code, _, err = run_cli(capsys, "export", str(tmp_path / "moved.pt"))

    assert code == 1
    line = one_line_error(err)
    assert "--check-images" in line and "--data-dir" in line
    assert not (tmp_path / "moved.onnx").exists()


def test_the_python_call_checks_its_options_as_the_command_line_does(run_dir, tmp_path) -> None:
    from cnnkit.errors import UsageError

    with pytest.raises(UsageError, match="--precision int8 applies to --format onnx"):
        export_checkpoint(run_dir, "torchscript", precision="int8")
    with pytest.raises(UsageError, match="--check-count must be >= 1, got 0"):
        export_checkpoint(run_dir, count=0)  # the keyword of earlier versions still works
    with pytest.raises(UsageError, match="unknown option 'tolerence'; did you mean 'tolerance'"):
        export_checkpoint(run_dir, tolerence=1e-3)
    options = ExportOptions(dynamic_batch=True, tolerance=1e-4, out=str(tmp_path / "m.onnx"))
    result = export_checkpoint(run_dir, options=options)
    assert result.parity.ok and result.path == tmp_path / "m.onnx" and not any(tmp_path.glob("*.partial"))

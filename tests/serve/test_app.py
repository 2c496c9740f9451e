"""The demo's handlers, page layout and command line, without a server (see test_demo.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import cnnkit.cli
import cnnkit.serve.app
import cnnkit.serve.drawing
from cli_helpers import one_line_error, run_cli
from cnnkit import example_images
from cnnkit.data.datasets import load_source
from cnnkit.data.spec import Preprocess
from cnnkit.errors import UsageError
from cnnkit.inference import Predictor
from cnnkit.inference.backends import TorchBackend
from cnnkit.inference.metadata import Metadata
from cnnkit.models import create_model
from cnnkit.serve.app import DemoModel, build_demo, editor_image, is_digit_model


@pytest.fixture(scope="module")
def predictor(digits_run: Path) -> Predictor:
    return Predictor.from_checkpoint(digits_run)


def drawn_seven() -> np.ndarray:
    """A "7" as Gradio's sketchpad hands it over: RGBA, black strokes, transparent elsewhere."""
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).line(
        [(60, 50), (220, 50), (120, 240)], fill=(0, 0, 0, 255), width=20, joint="curve"
    )
    return np.asarray(canvas)


def test_a_drawing_is_predicted_with_its_input_and_grad_cam(predictor: Predictor) -> None:
    model = DemoModel(predictor, topk=3)
    value = {"background": None, "layers": [drawn_seven()], "composite": drawn_seven()}

    top, seen, cam, _said = model.drawing(value)

    assert list(top)[0] == "7" and len(top) == 3 and top["7"] > 0.5
    assert seen.size == (224, 224) and seen.mode == "L"  # 28x28 enlarged 8x, nearest
    small = np.asarray(seen)[::8, ::8]
    assert small[0, 0] == 0 and small.max() == 255  # white digit on black, as MNIST's
    assert cam.size == (224, 224) and cam.mode == "RGB"
    assert np.asarray(cam).std() > 10  # a heatmap, not a blank


def test_the_editor_value_without_a_composite_is_its_layers(predictor: Predictor) -> None:
    layers_only = {"background": None, "layers": [drawn_seven()], "composite": None}

    assert np.array_equal(np.asarray(editor_image(layers_only))[..., 3], drawn_seven()[..., 3])
    assert editor_image({"background": None, "layers": [], "composite": None}) is None
    with pytest.raises(UsageError, match="draw a digit first"):
        DemoModel(predictor).drawing({"background": None, "layers": [], "composite": None})


def test_uploads_are_prepared_like_files_and_big_ones_refused(predictor: Predictor) -> None:
    images, labels = load_source("embedded-mnist", None, False).test
    digit = Image.fromarray(images[0, 0].numpy())

    top, _, _, _ = DemoModel(predictor, gradcam=False).image(digit)
    assert list(top)[0] == str(int(labels[0]))
    assert DemoModel(predictor, gradcam=False).image(digit)[2] is None
    with pytest.raises(UsageError, match="at most 0 MP"):
        DemoModel(predictor, max_pixels=28 * 27).image(digit)
    with pytest.raises(UsageError, match="upload an image first"):
        DemoModel(predictor).image(None)


def test_the_page_has_a_sketchpad_and_stable_api_names(
    predictor: Predictor, digits_run: Path
) -> None:
    examples = example_images(digits_run, count=12)
    demo = build_demo(predictor, examples=examples)
    config = demo.get_config_file()
    types = {block["type"] for block in config["components"]}
    api_names = {dep.get("api_name") for dep in config["dependencies"]}

    assert is_digit_model(predictor)
    assert {"imageeditor", "image", "label", "dataset"} <= types
    assert {"predict_drawing", "predict_image"} <= api_names
    assert [name for _, name in examples[:10]] == [str(d) for d in range(10)]  # one per class first
    assert len(examples) == 12 and all(
        image.size == (28, 28) and image.mode == "L" for image, _ in examples
    )


def test_photo_models_get_an_image_input_and_onnx_models_no_grad_cam(predictor: Predictor) -> None:
    rgb = Metadata(["cat", "dog"], Preprocess(3, (32, 32), (0.5,) * 3, (0.25,) * 3))
    model = create_model("cifar_cnn", num_classes=2, in_chans=3, input_size=(32, 32)).eval()
    photos = Predictor(TorchBackend(model, torch.device("cpu")), rgb, model)
    config = build_demo(photos).get_config_file()
    images = [block for block in config["components"] if block["type"] == "image"]
    onnx_like = Predictor(predictor.backend, predictor.metadata)  # a backend, no torch module

    assert not is_digit_model(photos)
    assert "imageeditor" not in {block["type"] for block in config["components"]}
    assert {"predict_image"} == {dep.get("api_name") for dep in config["dependencies"]} - {None}
    assert images[0]["props"]["sources"] == ["upload", "clipboard", "webcam"]
    assert DemoModel(photos).image(np.zeros((40, 60, 3), np.uint8))[2].size == (224, 224)
    assert DemoModel(onnx_like).image(np.zeros((28, 28), np.uint8))[2] is None


def test_examples_are_empty_without_a_run() -> None:
    assert example_images("no/such/run") == []


def test_serve_a_missing_checkpoint_is_a_one_line_error(capsys) -> None:
    code, _, err = run_cli(capsys, "serve", "missing_dir")

    assert code == 1
    assert "missing_dir" in one_line_error(err)


@pytest.mark.parametrize("module", [cnnkit.serve.app, cnnkit.serve.drawing, cnnkit.cli])
def test_gradio_and_the_engine_are_not_imported_at_module_level(module) -> None:
    """Importing cnnkit (or its command line) must not pay for gradio; serve reaches the
    model only through cnnkit.inference."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [
        alias.name for node in top_level for alias in node.names if isinstance(node, ast.Import)
    ]
    names += [node.module for node in top_level if isinstance(node, ast.ImportFrom)]

    assert not [name for name in names if name.split(".")[0] in ("gradio", "gradio_client")]
    if module is not cnnkit.cli:
        all_imports = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in all_imports if name and name.startswith("cnnkit.engine")]

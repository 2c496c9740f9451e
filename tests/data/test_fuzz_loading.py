"""Property tests: damaged files, random bytes and odd arrays never crash the image path.

Every input either gives a result or raises a cnnkit error (a ``CnnkitError`` subclass)
with a message; training's dataset never raises at all, it skips. The damaged files start
as a real CIFAR-10 photo saved in each format cnnkit reads, then get bytes overwritten,
cut off or both, which reaches deeper into the decoders than random bytes alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from cnnkit.data.audit import examine_file
from cnnkit.data.folder import LOAD_ERROR_KINDS, ImageFileDataset, ImageLoadError, load_image
from cnnkit.data.spec import Preprocess
from cnnkit.data.transforms import get_augment, train_transform
from cnnkit.errors import CnnkitError
from cnnkit.inference import Prediction, Predictor
from cnnkit.inference.backends import TorchBackend
from cnnkit.inference.metadata import Metadata
from cnnkit.models import create_model

FORMATS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "PPM": ".ppm",
}
PIXEL_BUDGET = 4_000_000  # a damaged header may claim any size; refuse big ones fast
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def seeds(shared_data: Path) -> dict[str, bytes]:
    """One real 32x32 CIFAR-10 photo encoded in each format (format -> file bytes)."""
    photo = Image.open(
        sorted((shared_data / "cifar10" / "test" / "ship").glob("*.png"))[0]
    ).convert("RGB")
    encoded = {}
    for fmt in FORMATS:
        buffer = io.BytesIO()
        (photo.convert("P") if fmt == "GIF" else photo).save(buffer, format=fmt)
        encoded[fmt] = buffer.getvalue()
    return encoded


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")  # module-scoped: hypothesis reruns the test body


@contextmanager
def pixel_budget(limit: int = PIXEL_BUDGET) -> Iterator[None]:
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_load(path: Path, mode: str) -> bool:
    """load_image gives an image of ``mode`` or an ImageLoadError that explains itself."""
    try:
        image = load_image(path, mode)
    except ImageLoadError as error:
        assert error.kind in LOAD_ERROR_KINDS
        assert error.reason and str(path) in str(error)
        return False
    assert image.mode == mode and image.width >= 1 and image.height >= 1
    return True


def _check_training_item(path: Path, mode: str) -> None:
    """Training's dataset (with augmentation) never raises: a sample or None (skipped)."""
    channels = 1 if mode == "L" else 3
    pre = Preprocess(channels, (16, 16), (0.5,) * channels, (0.25,) * channels, resize=18)
    dataset = ImageFileDataset([str(path)], [0], train_transform(pre, get_augment("animals")), mode)
    with pytest.warns(RuntimeWarning) if not _check_load(path, mode) else _nothing():
        item = dataset[0]
    if item is not None:
        tensor, label = item
        assert (
            tuple(tensor.shape) == (channels, 16, 16)
            and torch.isfinite(tensor).all()
            and label == 0
        )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@FUZZ
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
    keep=st.one_of(st.none(), st.integers(0, 10**6)),
    mode=st.sampled_from(["L", "RGB"]),
)
def test_damaged_files_load_or_raise_image_load_error(
    seeds, scratch, fmt, edits, keep, mode
) -> None:
    data = bytearray(seeds[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    if keep is not None:
        data = data[: keep % (len(data) + 1)]
    path = scratch / f"damaged{FORMATS[fmt]}"
    path.write_bytes(bytes(data))

    with pixel_budget():
        loaded = _check_load(path, mode)
        facts = examine_file(str(path), decode=True)
        _check_training_item(path, mode)

    assert facts.problem is None or facts.problem in LOAD_ERROR_KINDS
    if not loaded:  # what training will skip, the doctor reports
        assert facts.problem is not None, f"check passed a file load_image rejects: {facts}"


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=4096), suffix=st.sampled_from(sorted(FORMATS.values())))
def test_random_bytes_load_or_raise_image_load_error(scratch, data, suffix) -> None:
    path = scratch / f"random{suffix}"
    path.write_bytes(data)

    with pixel_budget():
        _check_load(path, "RGB")
        facts = examine_file(str(path), decode=False)

    assert facts.problem in LOAD_ERROR_KINDS or facts.problem is None
    if not data:
        assert facts.problem == "zero-bytes"


# ----------------------------------------------------------------------------- Predictor


@pytest.fixture(scope="module", params=[(1, 28), (3, 32)], ids=["grey28", "rgb32"])
def predictor(request) -> Predictor:
    """An untrained LeNet and its preprocessing: the input path is under test, not accuracy."""
    channels, side = request.param
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=4, in_chans=channels, input_size=(side, side))
    pre = Preprocess(channels, (side, side), (0.5,) * channels, (0.25,) * channels)
    return Predictor(
        TorchBackend(model, torch.device("cpu")), Metadata(["a", "b", "c", "d"], pre), model
    )


def _check_predictions(result: Prediction | list[Prediction], count: int | None) -> None:
    results = result if isinstance(result, list) else [result]
    if count is not None:
        assert len(results) == count
    for prediction in results:
        assert prediction.label in {"a", "b", "c", "d"}
        assert math.isfinite(prediction.confidence) and 0.0 <= prediction.confidence <= 1.0
        assert len(prediction.topk) == 4


def _predict_or_error(predictor: Predictor, image, count: int | None = None) -> None:
    try:
        result = predictor.predict(image)
    except CnnkitError as error:
        assert str(error).strip(), "a cnnkit error needs a message"
        return
    _check_predictions(result, count)


ARRAY_DTYPES = [
    np.uint8,
    np.float32,
    np.float64,
    np.float16,
    np.bool_,
    np.int16,
    np.int64,
    np.uint16,
    np.complex64,
]


@FUZZ
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(ARRAY_DTYPES),
        shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9),
    ),
    as_tensor=st.booleans(),
)
def test_predict_on_random_arrays_and_tensors(predictor, array, as_tensor) -> None:
    image = torch.from_numpy(np.ascontiguousarray(array)) if as_tensor else array
    _predict_or_error(predictor, image, count=len(array) if array.ndim == 4 else None)


# bfloat16, float8 and complex32 have no NumPy twin
TENSOR_DTYPES = [torch.bfloat16, torch.float8_e4m3fn, torch.complex32, torch.float16, torch.int8,
                 torch.int32, torch.uint8, torch.float64]  # fmt: skip


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@FUZZ
@given(
    dtype=st.sampled_from(TENSOR_DTYPES),
    shape=st.lists(st.integers(0, 7), min_size=2, max_size=4),
    fill=st.floats(allow_nan=True, allow_infinity=True, width=16),
)
def test_predict_on_tensors_numpy_cannot_hold(predictor, dtype, shape, fill) -> None:
    """Tensor dtypes without a NumPy twin (bfloat16) and odd fills: a result or an error."""
    values = torch.full(shape, fill if dtype.is_floating_point else 0.0).to(dtype)
    _predict_or_error(predictor, values, count=shape[0] if len(shape) == 4 else None)


PIL_MODES = [
    "1",
    "L",
    "LA",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "I;16",
    "F",
]


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(PIL_MODES),
    width=st.integers(1, 12),
    height=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_predict_on_pil_images_of_every_mode(predictor, mode, width, height, seed) -> None:
    size = len(Image.new(mode, (width, height)).tobytes())
    noise = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    _predict_or_error(predictor, Image.frombytes(mode, (width, height), noise))


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(sorted(FORMATS.values())))
def test_predict_on_random_files(predictor, scratch, data, suffix) -> None:
    path = scratch / f"predict{suffix}"
    path.write_bytes(data)
    with pixel_budget():
        _predict_or_error(predictor, str(path))

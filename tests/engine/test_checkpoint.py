"""The checkpoint type: one writer, one reader, a format version.

Format-1 files (cnnkit before the type) still load and resume; ``best.pt`` holds the
deployed weights and metadata only; every file that is no checkpoint gets one line.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from cnnkit.checkpoint import FORMAT_VERSION, EpochProgress, ModelDesc, TrainingState
from cnnkit.config import DataConfig, RunConfig, TrainConfig, config_from_dict
from cnnkit.data import build
from cnnkit.engine import Checkpoint, FitHooks, FitStart, RunSaver, fit, read_checkpoint, save_checkpoint
from cnnkit.errors import CnnkitError
from cnnkit.models import create_model
from cnnkit.preprocess import Preprocess
from cnnkit.runfolder import RunFolder


@pytest.fixture(scope="module")
def digits():
    """512 train / 256 val embedded digits: 8 steps per epoch at batch 64."""
    return build(DataConfig(limit_train=512, limit_eval=256, batch_size=64), seed=0)


def _meta(spec) -> Checkpoint:
    model = ModelDesc("lenet", {}, spec.num_classes, spec.channels, list(spec.input_size))
    return Checkpoint(model, {}, list(spec.class_names), spec.preprocess, RunConfig(),
                      data_fingerprint=spec.fingerprint, cnnkit_version="test")  # fmt: skip


def _fit(digits, run_dir: Path, epochs: int, resume=None, **train):
    loaders, spec = digits
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=spec.num_classes)
    cfg = TrainConfig(**{"epochs": epochs, "device": "cpu", "deterministic": True, "threads": 1, **train})
    fit(model, loaders, cfg, num_classes=spec.num_classes, saver=RunSaver(RunFolder(run_dir), _meta(spec)),
        hooks=FitHooks(log=lambda _: None, progress=False), start=FitStart(resume=resume))  # fmt: skip
    return model


def _format_1(ckpt: Checkpoint) -> dict:
    """The payload as cnnkit wrote it before the type: training keys at the top level, in every file."""
    payload = ckpt.to_payload()
    training = payload.pop("training")
    return {**payload, **training, "format": 1}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _equal(a, b) -> bool:
    """Deep equality of payloads (tensors compared by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_round_trip_through_a_file_keeps_every_field(digits, tmp_path: Path) -> None:
    _fit(digits, tmp_path / "run", epochs=1)
    last = Checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")

    again = Checkpoint.load(last.save(tmp_path / "copy.pt"))

    assert _equal(again.to_payload(), last.to_payload())
    assert again.model.name == "lenet" and again.model.num_classes == 10 and again.training.epoch == 1
    assert again.resumable and not again.weights_only().resumable
    assert _equal(Checkpoint.from_payload(last.to_payload()).to_payload(), last.to_payload())


def test_a_format_1_checkpoint_loads_and_resumes_bit_identical(digits, tmp_path: Path) -> None:
    straight = _fit(digits, tmp_path / "straight", epochs=2)
    _fit(digits, tmp_path / "old", epochs=1)
    last = tmp_path / "old" / "checkpoints" / "last.pt"
    torch.save(_format_1(Checkpoint.load(last)), last)  # the same run, as the old cnnkit wrote it

    old = Checkpoint.load(last)
    assert old.training.epoch == 1 and old.resumable and old.model.name == "lenet"
    assert read_checkpoint(last)["epoch"] == 1  # the compatibility reader's flat view
    resumed = _fit(digits, tmp_path / "old", epochs=2, resume=old)

    assert _same(resumed.state_dict(), straight.state_dict())


def test_preprocessing_config_and_progress_are_typed_whatever_the_format(digits, tmp_path: Path) -> None:
    """In memory a Preprocess, a RunConfig and an EpochProgress; in the file their plain dicts."""
    _, spec = digits
    cfg = config_from_dict({"train": {"tta": "flip", "epochs": 3}, "data": {"augment": "flip"}})
    progress = EpochProgress(batches=2, loss_sum=3.5, correct=70, seen=128, seconds=0.25)
    ckpt = dataclasses.replace(_meta(spec), state_dict={"w": torch.ones(2)}, config=cfg,
                               training=TrainingState(epoch=1, step=10, in_epoch=progress))  # fmt: skip
    for layout, payload in (("format 2", ckpt.to_payload()), ("format 1", _format_1(ckpt))):
        path = tmp_path / f"{layout}.pt"
        torch.save(payload, path)

        back = Checkpoint.load(path)

        assert back.preprocess == spec.preprocess and back.preprocess.mean == tuple(spec.preprocess.mean), layout
        assert isinstance(back.config, RunConfig) and back.config.train.tta == "flip" and back.config.train.epochs == 3
        assert back.training.in_epoch == progress and back.training.step == 10
        written = torch.load(back.save(tmp_path / "again.pt"), weights_only=True)  # plain types only
        assert written["preprocess"] == spec.preprocess.to_dict() and written["config"] == cfg.to_dict()
        assert written["training"]["in_epoch"] == progress.to_dict()


def test_a_checkpoint_without_metadata_has_no_preprocessing_and_the_default_config(tmp_path: Path) -> None:
    save_checkpoint({"format": 2, "model": None, "state_dict": {"w": torch.ones(1)}}, tmp_path / "bare.pt")
    bare = Checkpoint.load(tmp_path / "bare.pt")
    assert bare.preprocess is None and bare.config == RunConfig()


def test_unreadable_preprocessing_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"format": 2, "model": {"name": "lenet"}, "state_dict": {}, "preprocess": {"mean": [0.5]}}, path)
    with pytest.raises(CnnkitError, match="its preprocessing is unreadable") as caught:
        Checkpoint.load(path)
    assert "\n" not in str(caught.value)


def test_best_pt_holds_weights_and_metadata_only_and_is_small(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images, labels = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=64)
    model = create_model("cifar_cnn", num_classes=10)
    meta = Checkpoint(ModelDesc("cifar_cnn", {}, 10, 3, [32, 32]), {}, [str(i) for i in range(10)],
                      Preprocess(3, (32, 32), (0.5,) * 3, (0.5,) * 3), RunConfig())  # fmt: skip
    fit(model, (loader, loader), TrainConfig(epochs=1, device="cpu", optimizer="adam"), num_classes=10,
        saver=RunSaver(RunFolder(tmp_path), meta), hooks=FitHooks(log=lambda _: None, progress=False))  # fmt: skip

    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())  # parameters + buffers
    best, last = tmp_path / "checkpoints" / "best.pt", tmp_path / "checkpoints" / "last.pt"
    assert best.stat().st_size <= 1.2 * tensors
    assert last.stat().st_size > 2.5 * tensors  # Adam's two moments per parameter: what resuming needs
    loaded = Checkpoint.load(tmp_path)  # a run folder: its best.pt
    assert loaded.training is None and loaded.metrics["epoch"] == 1
    assert _same(loaded.state_dict, {k: v.cpu() for k, v in model.state_dict().items()})


def test_resuming_from_weights_only_is_refused(digits, tmp_path: Path) -> None:
    _fit(digits, tmp_path / "run", epochs=1)
    best = Checkpoint.load(tmp_path / "run" / "checkpoints" / "best.pt")
    with pytest.raises(CnnkitError, match=r"holds weights only, not the training state; resume from .*last\.pt"):
        _fit(digits, tmp_path / "run", epochs=2, resume=best)


def test_state_dict_prefixes_of_wrappers_are_stripped(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.pt"
    save_checkpoint({"model": {"name": "lenet"}, "state_dict": {"_orig_mod.module.conv.weight": torch.ones(2)}}, path)
    assert list(Checkpoint.load(path).state_dict) == ["conv.weight"]
    assert torch.load(path, weights_only=True)["format"] == FORMAT_VERSION


# ----------------------------------------------------------------------------- one line per bad file


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def _write(kind: str, path: Path) -> None:
    if kind == "text":
        path.write_text("hi\n")
    elif kind in ("JPEG", "PNG"):
        Image.new("RGB", (8, 8)).save(path, format=kind)
    elif kind == "truncated":
        save_checkpoint({"model": {"name": "lenet"}, "state_dict": {"w": torch.ones(1000)}}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "state dict":
        torch.save({"w": torch.ones(2)}, path)
    elif kind == "code":
        torch.save({"model": {"name": "lenet"}, "state_dict": {}, "x": _RunsCode()}, path)
    elif kind == "newer":
        torch.save({"format": FORMAT_VERSION + 1, "model": {"name": "lenet"}, "state_dict": {}}, path)


BAD_FILES = {
    "missing": "checkpoint not found: {p}; give a run folder or a .pt file",
    "text": "{p} is a text file, not a PyTorch checkpoint; give a .pt file written by cnnkit or torch.save",
    "JPEG": "{p} is a JPEG image, not a PyTorch checkpoint; give a .pt file written by cnnkit or torch.save",
    "PNG": "{p} is a PNG image, not a PyTorch checkpoint; give a .pt file written by cnnkit or torch.save",
    "empty": "{p} is empty (0 bytes), not a PyTorch checkpoint; give a .pt file written by cnnkit or torch.save",
    "truncated": "{p} is truncated or corrupt (its zip archive is incomplete); copy it again or use another checkpoint",
    "list": "{p} is a PyTorch file but not a cnnkit checkpoint (it holds a list); give a run folder or a .pt file "
            "written by cnnkit",
    "state dict": "{p} is not a cnnkit checkpoint (it holds a plain state dict); give a run folder or a .pt file "
                  "written by cnnkit (train from a plain state dict with --weights)",
    "code": "refused to load {p}: it contains a pickled Python object (posix.system) and loading it would run code; "
            "cnnkit only loads plain-tensor checkpoints, never pickled code",
    "newer": f"{{p}} was written by a newer cnnkit (checkpoint format {FORMAT_VERSION + 1}; this cnnkit reads "
             f"formats 1 to {FORMAT_VERSION}); upgrade cnnkit",
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_each_unusable_file_is_one_clear_line(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    _write(kind, path)
    if os.name != "posix" and kind == "code":
        pytest.skip("os.system pickles as nt.system here")

    with pytest.raises(CnnkitError) as caught:
        Checkpoint.load(path)

    message = str(caught.value)
    assert message == BAD_FILES[kind].format(p=path)
    assert "\n" not in message and "weights_only" not in message  # none of PyTorch's advice


def test_a_plain_state_dict_is_fine_where_weights_are_expected(tmp_path: Path) -> None:
    from cnnkit.models.pretrained import read_weights_file

    torch.save({"w": torch.ones(2)}, tmp_path / "x.pt")
    assert torch.equal(read_weights_file(tmp_path / "x.pt").state_dict["w"], torch.ones(2))


def test_weights_only_shares_the_tensors_and_drops_the_training_state(digits, tmp_path: Path) -> None:
    _fit(digits, tmp_path / "run", epochs=1)
    last = Checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    slim = last.weights_only()
    assert slim.training is None and last.training is not None
    assert slim.state_dict is last.state_dict
    assert _equal(dataclasses.replace(slim, training=last.training).to_payload(), last.to_payload())

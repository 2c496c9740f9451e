"""Predictor and `cnnkit predict` on real digits, with the faults users hit (bad files, odd inputs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnkit
from cli_helpers import one_line_error, run_cli
from cnnkit import evaluate_checkpoint
from cnnkit.data.datasets import load_source
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.inference import Prediction, Predictor, Skipped, expand_inputs


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded MNIST test digits: uint8 ``[2000, 1, 28, 28]`` and labels."""
    return load_source("embedded-mnist", None, False).test


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return cnnkit.train(epochs=1, output_dir=str(out), report=False, progress=False, log=lambda line: None).dir


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.from_checkpoint(run_dir)


@pytest.fixture(scope="module")
def test_pngs(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    """All 2,000 test digits as PNG files named ``NNNN_label.png``."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = digits
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:04d}_{label}.png")
    return folder


def _direct_top1(predictor: Predictor, images: torch.Tensor) -> list[int]:
    return predictor.backend(predictor.preprocess.normalize(images)).argmax(1).tolist()


def test_predict_command_matches_eval_on_the_whole_test_split(run_dir, test_pngs, digits, tmp_path, capsys) -> None:
    """Decoding PNG files and predicting gives exactly the confusion matrix `cnnkit eval` reports."""
    out = tmp_path / "preds.csv"
    code, _, err = run_cli(capsys, "predict", str(run_dir), str(test_pngs), "--out", str(out), "--no-progress")
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2000 and "predicted 2,000 images" in err
    class_names = json.loads((run_dir / "classes.json").read_text())
    matrix = torch.zeros(10, 10, dtype=torch.long)
    for row in rows:
        truth = int(Path(row["file"]).stem.split("_")[1])
        matrix[truth, class_names.index(row["label"])] += 1
    report = evaluate_checkpoint(run_dir, split="test")
    assert report.result.count == 2000
    assert torch.equal(matrix, report.result.confusion)


def test_folder_with_broken_files_predicts_the_good_ones_and_lists_the_rest(
    predictor, run_dir, digits, tmp_path, capsys
) -> None:
    images, labels = digits
    folder = tmp_path / "mixed"
    (folder / "nested" / "deeper").mkdir(parents=True)
    good = {}
    for i in range(6):
        target = folder / ("nested/deeper" if i % 2 else ".") / f"digit{i}.jpg"
        Image.fromarray(images[i, 0].numpy()).convert("RGB").save(target, quality=95)
        good[str(target.resolve())] = i
    whole = (folder / "digit0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"ignored: hidden files are not inputs")
    out = tmp_path / "preds.json"
    code, _, err = run_cli(capsys, "predict", str(run_dir), str(folder), "--out", str(out), "--no-progress",
                           "--workers", "2", "--batch-size", "4")  # fmt: skip
    assert code == 0, err
    result = json.loads(out.read_text())
    predicted = {str(Path(p["file"]).resolve()): p for p in result["predictions"]}
    assert set(predicted) == set(good)
    expected = _direct_top1(predictor, torch.stack([torch.from_numpy(np.array(Image.open(p).convert("L")))[None]
                                                    for p in good]))  # fmt: skip
    for (path, _), top1 in zip(good.items(), expected, strict=True):
        entry = predicted[path]
        assert entry["label"] == predictor.class_names[top1]
        assert len(entry["topk"]) == 5 and entry["topk"][0]["label"] == entry["label"]
        assert abs(sum(t["prob"] for t in entry["topk"]) - 1) < 0.05
    reasons = {Path(s["file"]).name: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"truncated.jpg", "empty.png", "notes.txt"}
    assert "truncated" in reasons["truncated.jpg"] and reasons["empty.png"] == "zero bytes"
    assert "not an image" in reasons["notes.txt"]
    assert result["summary"]["predicted"] == 6 and result["summary"]["skipped"] == 3
    assert "skipped 3 files" in err and "truncated.jpg" in err


def test_linked_folders_and_files_read_the_same_in_every_command(run_dir, digits, tmp_path, capsys) -> None:
    # class folders that are links (to a folder, or a folder of links to files), a link loop
    # and a broken link: train's listing, check and predict all see the same six images
    from cnnkit.data.folder import scan_folder

    images, _ = digits
    for i in range(6):
        (tmp_path / "store" / f"c{i // 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0].numpy()).save(tmp_path / "store" / f"c{i // 3}" / f"{i}.png")
    linked = tmp_path / "linked"
    (linked / "c1").mkdir(parents=True)
    (linked / "c0").symlink_to(tmp_path / "store" / "c0", target_is_directory=True)
    for i in range(3, 6):
        (linked / "c1" / f"{i}.png").symlink_to(tmp_path / "store" / "c1" / f"{i}.png")
    (linked / "c1" / "again").symlink_to(linked / "c1", target_is_directory=True)  # a loop
    (linked / "c1" / "gone.png").symlink_to(tmp_path / "nowhere.png")

    listing = scan_folder(linked, val_fraction=0, test_fraction=0, seed=0)
    files, skipped = expand_inputs([str(linked)])
    assert listing.class_names == ["c0", "c1"] and len(listing.splits["train"]) == 6
    assert files == listing.splits["train"].paths
    reasons = {Path(s.source).name: s.reason for s in skipped}
    assert set(reasons) == {"again", "gone.png"} and "listed already" in reasons["again"]
    assert dict((Path(p).name, r) for p, r in listing.ignored) == reasons
    code, out, err = run_cli(capsys, "predict", str(run_dir), str(linked), "--no-progress", "--backend", "torch")
    assert code == 0 and "predicted 6 images" in err and len(out.splitlines()) == 6, err
    code, out, err = run_cli(capsys, "check", str(linked))
    assert code == 0 and "images: 6 files, 6 readable" in out and "c1/gone.png: a broken symbolic link" in out, err


def test_predictor_accepts_every_image_kind_alike(predictor, test_pngs, digits) -> None:
    images, _ = digits
    path = sorted(test_pngs.iterdir())[0]
    pixels = images[0, 0].numpy()  # uint8 [28, 28]
    kinds = {
        "path": str(path),
        "pathlib": path,
        "pil": Image.open(path),
        "pil-rgba": Image.fromarray(pixels).convert("RGBA"),
        "numpy-hw": pixels,
        "numpy-hwc": np.repeat(pixels[:, :, None], 3, axis=2),
        "numpy-float": pixels.astype(np.float32) / 255,
        "tensor-chw": images[0],
        "tensor-float": images[0].float() / 255,
    }
    reference = predictor.predict(str(path))
    assert isinstance(reference, Prediction)
    for name, image in kinds.items():
        found = predictor.predict(image)
        assert found.index == reference.index, name
        assert found.confidence == pytest.approx(reference.confidence, abs=1e-5), name
    batch = predictor.predict(images[:8])  # a 4-D tensor is 8 images
    assert [p.index for p in batch] == _direct_top1(predictor, images[:8])
    assert [p.source for p in batch] == [f"image[{i}]" for i in range(8)]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((2, 3, 4, 5), dtype=np.uint8)[0, 0], None),  # [4, 5] greyscale: fine
        (np.zeros((28, 28, 2), dtype=np.uint8), "C in 1, 3, 4"),
        (np.full((28, 28), 2.0, dtype=np.float32), "in [0, 1]"),
        (np.full((28, 28), np.nan, dtype=np.float32), "in [0, 1]"),
        (np.zeros((28, 28), dtype=np.int64), "uint8 or floats"),
        (np.zeros((0, 28), dtype=np.uint8), "empty or too large"),
        ({"not": "an image"}, "cannot predict on a dict"),
    ],
)
def test_bad_in_memory_images_get_a_clear_error(predictor, image, message) -> None:
    if message is None:
        assert predictor.predict(image).label in predictor.class_names
        return
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        predictor.predict(image)


def test_missing_file_in_the_api_raises_a_data_error(predictor, tmp_path) -> None:
    with pytest.raises(CnnkitError, match="file not found"):
        predictor.predict(str(tmp_path / "nope.png"))


def test_threshold_topk_and_tta(predictor, digits) -> None:
    images, labels = digits
    plain = predictor.predict(images[:64])
    strict = predictor.predict(images[:64], threshold=0.999999)
    assert any(p.label == "unknown" for p in strict)
    for a, b in zip(plain, strict, strict=True):
        assert b.label in (a.label, "unknown") and b.index == a.index
        assert (b.label == "unknown") == (a.confidence < 0.999999)
    assert len(predictor.predict(images[0], topk=50).topk) == 10  # clipped to the classes
    # The run has no TTA of its own, so by default none; asked for (True), and the digits
    # not trained with flips, it uses four one-pixel shifts, never a mirror.
    assert len(predictor.tta_views(predictor.preprocess.normalize(images[:2]))) == 1
    views = predictor.tta_views(predictor.preprocess.normalize(images[:2]), True)
    assert len(views) == 5 and not any(torch.equal(v, views[0].flip(-1)) for v in views[1:])
    tta = predictor.predict(images[:200], tta=True)
    truth = labels[:200].tolist()
    accuracy = np.mean([p.index == y for p, y in zip(tta, truth, strict=True)])
    plain_acc = np.mean([p.index == y for p, y in zip(predictor.predict(images[:200]), truth, strict=True)])
    assert accuracy >= plain_acc - 0.02  # shifts by a pixel do not hurt a digit model
    ranked = predictor.predict(images[:5], tta=True, topk=10)
    assert all(abs(sum(prob for _, prob in p.topk[:10]) - 1) < 0.05 for p in ranked)


def test_predict_files_keeps_the_input_order_across_workers(predictor, test_pngs, tmp_path) -> None:
    files = sorted(str(p) for p in test_pngs.iterdir())[:37]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    files.insert(5, str(bad))
    results = list(predictor.predict_files(files, batch_size=4, workers=2))
    assert [r.source for r in results] == files
    assert isinstance(results[5], Skipped)
    single = list(predictor.predict_files(files, batch_size=64, workers=0))
    assert [getattr(r, "index", None) for r in results] == [getattr(r, "index", None) for r in single]


def test_predict_files_decodes_in_threads_and_leaves_none_behind(predictor, test_pngs) -> None:
    """Decoding 500 photos in worker processes cost more start-up than it saved: threads
    decode now, in this process, and a consumer that stops early leaves no decoding behind."""
    import multiprocessing
    import threading

    files = sorted(str(p) for p in test_pngs.iterdir())[:40]
    stream = predictor.predict_files(files, batch_size=8, workers=2)
    first = [next(stream) for _ in range(10)]
    assert multiprocessing.active_children() == []  # no worker process was started
    assert any(t.name.startswith("cnnkit-decode") for t in threading.enumerate())
    stream.close()
    assert not any(t.name.startswith("cnnkit-decode") for t in threading.enumerate())
    whole = list(predictor.predict_files(files, batch_size=8, workers=0))
    assert [(r.source, r.index) for r in first] == [(r.source, r.index) for r in whole[:10]]


def test_expand_inputs_takes_files_folders_and_globs(test_pngs, tmp_path) -> None:
    eleventh = sorted(test_pngs.iterdir())[10]
    files, missing = expand_inputs([str(test_pngs / "000*.png"), str(eleventh), str(tmp_path / "none")])
    assert len(files) == 11 and files[-1] == str(eleventh)
    assert [m.reason for m in missing] == ["no such file or folder"]
    files, missing = expand_inputs([str(tmp_path / "*.webp")])
    assert files == [] and missing[0].reason == "the pattern matches no file"


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--topk", "0"], 2, "--topk must be >= 1, got 0"),
        (["--threshold", "1.5"], 2, "--threshold must be in [0, 1], got 1.5"),
        (["--out", "preds.txt"], 2, "unknown format '.txt'"),
    ],
)
def test_bad_predict_options_fail_before_any_work(run_dir, test_pngs, capsys, extra, code, message) -> None:
    got, _, err = run_cli(capsys, "predict", str(run_dir), str(test_pngs), *extra)
    assert got == code
    assert message in one_line_error(err)


def test_predict_errors_for_missing_model_or_no_files(run_dir, tmp_path, capsys) -> None:
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "nope"), str(tmp_path))
    assert code == 1 and "not found" in one_line_error(err)
    code, _, err = run_cli(capsys, "predict", str(run_dir), str(tmp_path / "*.png"))
    assert code == 1 and "no files to predict" in one_line_error(err)
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "model.onnx"), str(run_dir))
    assert code == 1 and "not a loadable ONNX model" in one_line_error(err)


def test_console_output_has_one_line_per_image(run_dir, test_pngs, capsys) -> None:
    code, out, err = run_cli(capsys, "predict", str(run_dir), str(test_pngs / "000[0-4]_*.png"), "--threshold", "0.5")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5
    for line in lines:
        path, label, confidence = line.split("\t")[:3]
        assert Path(path).is_file() and confidence.split()[0].endswith("%")


def test_bf16_autocast_predicts_like_float32(run_dir, digits, capsys) -> None:
    """--amp bf16 rounds the logits (faster on GPUs and AMX CPUs) but keeps the ranking."""
    images, _ = digits
    exact = Predictor.from_checkpoint(run_dir)
    rounded = Predictor.from_checkpoint(run_dir, amp="bf16")
    batch = exact.preprocess.normalize(images[:500])
    reference, fast = exact.logits(batch), rounded.logits(batch)
    assert fast.dtype == torch.float32 and not torch.equal(fast, reference)  # it did run in bf16
    assert (fast.argmax(1) == reference.argmax(1)).float().mean() >= 0.99
    assert (fast - reference).abs().max() < 0.25  # bf16 keeps ~3 significant digits

    code, _, err = run_cli(capsys, "predict", str(run_dir.parent / "nope.onnx"), "x.png", "--amp", "bf16")
    assert code == 2 and "--amp applies to the torch backend" in one_line_error(err)


def test_a_format_1_checkpoint_predicts_as_its_format_2_twin(run_dir, predictor, digits, tmp_path) -> None:
    """A best.pt as cnnkit wrote it before the checkpoint type (training keys at the top level,
    preprocessing and config as plain dicts) loads into a Predictor with the same logits."""
    from cnnkit.checkpoint import Checkpoint

    payload = Checkpoint.load(run_dir).to_flat_dict()
    payload.pop("flat_of")  # a real format-1 file: its config goes through upgrade_legacy
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    images = digits[0][:64]

    again = Predictor.from_checkpoint(old)

    assert again.preprocess == predictor.preprocess and again.class_names == predictor.class_names
    assert again.metadata.tta == predictor.metadata.tta
    torch.testing.assert_close(again.logits(again.preprocess.normalize(images)),
                               predictor.logits(predictor.preprocess.normalize(images)), rtol=0, atol=0)

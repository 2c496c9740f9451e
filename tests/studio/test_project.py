"""The studio project folder: format, classes, uploads (images, zips, webcam, sketches), imports,
the data check, and reopening a project after a restart."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnkit.data.folder import load_image
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.studio import files as studio_files
from cnnkit.studio import project as studio_project
from cnnkit.studio.kinds import default_kind
from cnnkit.studio.project import MANIFEST, STUDIO_FORMAT, Project
from studio_data import photos


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project.open(tmp_path / "project")


@pytest.fixture(scope="module")
def jpegs(imagenette: Path) -> list[Path]:
    """Six real photos of one class."""
    return photos(imagenette, "train", "tench", 6)


def stored(project: Project, name: str) -> list[str]:
    return [p.name for p in project.images(name)]


def kept(photo: Path) -> str:
    """The name an uploaded photo is stored under (a lower-case suffix)."""
    return photo.stem + photo.suffix.lower()


# ----------------------------------------------------------------------------- the folder


def test_a_new_project_is_a_folder_with_its_format_data_and_runs(tmp_path: Path) -> None:
    project = Project.open(tmp_path / "new")

    manifest = json.loads((tmp_path / "new" / MANIFEST).read_text())
    assert manifest["format"] == STUDIO_FORMAT and manifest["cnnkit"]
    assert project.data_dir == tmp_path / "new" / "data" and project.data_dir.is_dir()
    assert project.runs_dir == tmp_path / "new" / "runs" and project.runs_dir.is_dir()
    assert project.classes() == [] and project.runs() == []


def test_reopening_a_project_finds_its_classes_and_images(project: Project, jpegs: list[Path]) -> None:
    project.add_class("fish")
    project.add_class("empty")
    project.add_files("fish", jpegs[:3])

    again = Project.open(project.root, create=False)

    assert [(c.name, c.count) for c in again.classes()] == [("empty", 0), ("fish", 3)]
    assert stored(again, "fish") == sorted(kept(p) for p in jpegs[:3])
    assert [t.parent.name for t in again.classes()[1].thumbnails] == ["fish"] * 3


def test_a_project_written_by_a_newer_cnnkit_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "future"
    root.mkdir()
    (root / MANIFEST).write_text(json.dumps({"format": STUDIO_FORMAT + 1, "cnnkit": "9.4.0"}))

    with pytest.raises(CnnkitError, match=r"written by cnnkit 9\.4\.0 .*format 2.*upgrade cnnkit"):
        Project.open(root)
    assert sorted(p.name for p in root.iterdir()) == [MANIFEST]  # nothing was added to it


def test_a_folder_that_is_no_project_is_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")

    with pytest.raises(CnnkitError, match="not empty .*holiday.jpg.* not a studio project"):
        Project.open(tmp_path / "photos")
    with pytest.raises(CnnkitError, match="not a cnnkit studio project"):
        Project.open(tmp_path / "elsewhere", create=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MANIFEST).write_text("{not json")
    with pytest.raises(CnnkitError, match="not a readable studio project file"):
        Project.open(tmp_path / "broken")


# ----------------------------------------------------------------------------- classes


@pytest.mark.parametrize(("name", "why"), [
    ("", "needs a name"), ("a/b", "cannot contain /"), ("..", "cannot contain"), ("a\\b", "cannot contain"),
    (".hidden", "cannot start with a dot"), ("_review", "reserved"), ("Train", "reserved"), ("test", "reserved"),
    ("x" * 65, "at most 64"), ("tab\there", "control characters"),
])  # fmt: skip
def test_class_names_that_cannot_be_folders_are_refused(project: Project, name: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        project.add_class(name)
    assert project.classes() == []


def test_class_names_are_unique_whatever_their_case(project: Project) -> None:
    assert project.add_class("  Cat ") == "Cat"

    with pytest.raises(UsageError, match="class 'Cat' exists already"):
        project.add_class("cat")


def test_deleting_a_class_removes_it_and_its_images(project: Project, jpegs: list[Path]) -> None:
    project.add_class("fish")
    project.add_class("dog")
    project.add_files("fish", jpegs[:2])

    project.delete_class("fish")

    assert project.class_names() == ["dog"]
    assert sorted(p.name for p in project.data_dir.iterdir()) == ["dog"]  # no trash left behind
    with pytest.raises(UsageError, match="no class 'fish' in this project"):
        project.delete_class("fish")


# ----------------------------------------------------------------------------- uploads


def test_a_bad_image_in_an_upload_is_rejected_by_name_and_never_stored(project: Project, jpegs: list[Path],
                                                                        tmp_path: Path) -> None:  # fmt: skip
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpegs[0].read_bytes()[:3000])
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    project.add_class("fish")

    result = project.add_files("fish", [jpegs[1], truncated, text, empty, jpegs[2]])

    assert result.added == [f"fish/{kept(jpegs[1])}", f"fish/{kept(jpegs[2])}"]
    reasons = {r.name: r.reason for r in result.rejected}
    assert set(reasons) == {"cut.jpg", "notes.jpg", "empty.png"}
    assert "truncated" in reasons["cut.jpg"] and "not an image" in reasons["notes.jpg"]
    assert reasons["empty.png"] == "zero bytes"
    assert "rejected 3: " in result.message and "cut.jpg: truncated" in result.message
    assert stored(project, "fish") == sorted([kept(jpegs[1]), kept(jpegs[2])])
    assert not any(p.name.startswith(".") for p in (project.data_dir / "fish").iterdir())
    for path in project.images("fish"):  # what is stored decodes, bytes unchanged
        assert load_image(path, "RGB").size == Image.open(path).size


def test_uploaded_names_become_safe_unique_file_names(project: Project, jpegs: list[Path], tmp_path: Path) -> None:
    weird = tmp_path / "my photo (1)!.JPEG"
    weird.write_bytes(jpegs[0].read_bytes())
    png_named_jpg = tmp_path / "other.jpg"  # a PNG under a .jpg name
    Image.open(jpegs[1]).save(png_named_jpg, format="PNG")
    project.add_class("fish")

    result = project.add_files("fish", [weird, png_named_jpg], names=["../../my photo (1)!.JPEG", "other.jpg"])

    assert result.added == ["fish/my_photo_1.jpeg", "fish/other.png"]
    again = project.add_files("fish", [jpegs[2]], names=["my photo (1)!.JPEG"])
    assert again.added == ["fish/my_photo_1-2.jpeg"]


def test_a_copy_of_an_image_already_in_the_class_is_not_stored_twice(project: Project, jpegs: list[Path]) -> None:
    project.add_class("fish")
    project.add_files("fish", jpegs[:1])

    result = project.add_files("fish", jpegs[:2])

    assert result.added == [f"fish/{kept(jpegs[1])}"]
    assert [str(r) for r in result.rejected] == [f"{jpegs[0].name}: a copy of {kept(jpegs[0])}, already in fish"]


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_zip_adds_its_images_and_skips_folders_hidden_files_and_macos_extras(project: Project, jpegs: list[Path],
                                                                               tmp_path: Path) -> None:  # fmt: skip
    upload = zip_of(tmp_path / "fish.zip", {
        "fish/a.jpg": jpegs[0].read_bytes(), "fish/deeper/b.JPEG": jpegs[1].read_bytes(),
        "fish/.DS_Store": b"junk", "__MACOSX/fish/._a.jpg": b"junk", "fish/readme.txt": b"hello",
    })  # fmt: skip
    project.add_class("fish")

    result = project.add_files("fish", [upload])

    assert result.added == ["fish/a.jpg", "fish/b.jpeg"]
    assert [r.name for r in result.rejected] == ["fish.zip/fish/readme.txt"]


@pytest.mark.parametrize("evil", ["../escape.jpg", "fish/../../escape.jpg", "/tmp/escape.jpg", "C:/escape.jpg"])
def test_a_zip_with_paths_outside_it_is_refused_whole(project: Project, jpegs: list[Path], tmp_path: Path,
                                                      evil: str) -> None:  # fmt: skip
    upload = zip_of(tmp_path / "evil.zip", {"good.jpg": jpegs[0].read_bytes(), evil: jpegs[1].read_bytes()})
    project.add_class("fish")

    result = project.add_files("fish", [upload])

    assert result.added == []
    assert len(result.rejected) == 1 and result.rejected[0].name == "evil.zip"
    assert f"refused: it holds {evil!r}, a path outside the zip" in result.rejected[0].reason
    assert stored(project, "fish") == []
    assert not list(tmp_path.rglob("escape.jpg"))


def test_upload_limits_say_what_the_limit_is(project: Project, jpegs: list[Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    project.add_class("fish")
    monkeypatch.setattr(studio_project, "MAX_FILES_PER_REQUEST", 3)
    with pytest.raises(UsageError, match="4 images in one upload; at most 3 at a time"):
        project.add_files("fish", jpegs[:4])
    assert stored(project, "fish") == []

    monkeypatch.setattr(studio_files, "MAX_FILE_BYTES", jpegs[0].stat().st_size - 1)
    result = project.add_files("fish", jpegs[:1])
    assert result.added == [] and "MB per image" in result.rejected[0].reason

    monkeypatch.setattr(studio_files, "MAX_FILE_BYTES", 20 * 2**20)
    monkeypatch.setattr(studio_project, "MAX_IMAGES", 2)
    result = project.add_files("fish", jpegs[:3])
    assert len(result.added) == 2 and result.rejected[0].reason == "the project is full (2 images)"
    with pytest.raises(UsageError, match="holds 2 images; at most 2"):
        project.add_image("fish", np.zeros((8, 8, 3), np.uint8))

    monkeypatch.setattr(studio_project, "MAX_IMAGES", 100)
    monkeypatch.setattr(studio_files, "MAX_PIXELS", 1000)
    result = project.add_files("fish", jpegs[3:4])
    assert "pixels; at most 0 MP: scale it down first" in result.rejected[0].reason


def test_webcam_snapshots_and_sketches_are_stored_as_pngs(project: Project) -> None:
    project.add_class("me")
    project.add_class("7")
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    canvas = np.full((280, 280, 4), 255, np.uint8)
    canvas[60:220, 130:150, :3] = 0  # a black stroke: the digit one

    first = project.add_image("me", frame)
    second = project.add_image("me", Image.fromarray(frame), source="webcam")
    sketch = project.add_image("7", canvas, source="sketch")

    assert first != second and first.startswith("webcam-") and first.endswith(".png")
    saved = Image.open(project.data_dir / "me" / first)
    assert saved.mode == "RGB" and np.array_equal(np.asarray(saved), frame)
    digit = np.asarray(Image.open(project.data_dir / "7" / sketch))
    assert digit.shape == (28, 28) and digit.max() == 255 and digit[0, 0] == 0  # MNIST style: white on black
    with pytest.raises(UsageError, match="draw a digit first"):
        project.add_image("7", np.full((280, 280), 255, np.uint8), source="sketch")
    with pytest.raises(UsageError, match="unknown image source"):
        project.add_image("7", canvas, source="scanner")


def test_deleting_an_image(project: Project, jpegs: list[Path]) -> None:
    project.add_class("fish")
    project.add_files("fish", jpegs[:2])

    project.delete_image("fish", kept(jpegs[0]))

    assert stored(project, "fish") == [kept(jpegs[1])]
    with pytest.raises(UsageError, match="has no image"):
        project.delete_image("fish", kept(jpegs[0]))
    with pytest.raises(UsageError, match="not an image file name"):
        project.delete_image("fish", f"../fish/{kept(jpegs[1])}")


# ----------------------------------------------------------------------------- imports


def test_importing_a_class_per_folder_tree_takes_every_split(project: Project, imagenette: Path, jpegs: list[Path],
                                                             tmp_path: Path) -> None:  # fmt: skip
    tree = tmp_path / "tree"
    for index, (split, name) in enumerate([("train", "a"), ("train", "b"), ("val", "a"), ("test", "b")]):
        (tree / split / name).mkdir(parents=True, exist_ok=True)
        (tree / split / name / f"{index}.jpg").write_bytes(jpegs[index].read_bytes())

    result = project.import_from(tree)
    limited = Project.open(tmp_path / "limited").import_from(imagenette, limit_per_class=2)

    assert not result.rejected and [(c.name, c.count) for c in project.classes()] == [("a", 2), ("b", 2)]
    assert len(limited.added) == 20 and {path.split("/")[0] for path in limited.added} == set(
        p.name for p in (imagenette / "train").iterdir())
    assert default_kind(project) == "photos"


def test_importing_a_csv_merges_its_labels_into_existing_classes(project: Project, jpegs: list[Path],
                                                                tmp_path: Path) -> None:  # fmt: skip
    project.add_class("Tench")
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([(str(jpegs[0]), "tench"), (str(jpegs[1]), "tench"), (str(jpegs[2]), "fish/other")])

    result = project.import_from(listing)

    assert len(result.added) == 3
    assert [(c.name, c.count) for c in project.classes()] == [("Tench", 2), ("fish_other", 1)]


def test_importing_a_registered_dataset_writes_its_images(project: Project) -> None:
    result = project.import_from("embedded-mnist", limit_per_class=6)

    assert project.class_names() == [str(d) for d in range(10)]
    assert len(result.added) == 60 and all(c.count == 6 for c in project.classes())
    digit = Image.open(project.images("3")[0])
    assert digit.mode == "L" and digit.size == (28, 28)
    assert default_kind(project) == "digits"
    with pytest.raises(UsageError, match="cannot import 'no-such-data'.*registered dataset"):
        project.import_from("no-such-data")


# ----------------------------------------------------------------------------- the data check


def test_the_data_check_says_what_stops_training_and_what_to_look_at(project: Project, jpegs: list[Path]) -> None:
    assert project.check() == ["add at least 2 classes to train a classifier (the project has 0)"]
    project.add_class("fish")
    project.add_class("dog")
    project.add_files("fish", jpegs[:5])
    project.add_files("dog", jpegs[4:6])  # jpegs[4] in both classes: a conflicting label

    lines = project.check()

    assert lines[0] == "class dog has only 2 images (need at least 5 to train)"
    assert any("under different classes (conflicting labels)" in line for line in lines)
    assert any(line.startswith("identical images: ") and "dog/" in line and "fish/" in line for line in lines)


def test_the_data_check_finds_files_put_in_the_folder_by_hand(project: Project, jpegs: list[Path]) -> None:
    project.add_class("fish")
    project.add_class("dog")
    project.add_files("fish", jpegs[:5])
    for index, photo in enumerate(jpegs[:5]):  # copied in by hand, one of them broken
        data = photo.read_bytes()
        (project.data_dir / "dog" / f"hand{index}.png").write_bytes(b"\x89PNG broken" if index == 0 else data)

    check = project.check_report()

    assert check.problems == []
    assert any("unreadable" in line and "dog/hand0.png" in line for line in check.warnings)


def test_thumbnails_are_the_newest_images(project: Project) -> None:
    project.add_class("me")
    names = [project.add_image("me", np.full((8, 8, 3), shade, np.uint8)) for shade in range(0, 80, 10)]

    info = project.classes()[0]

    assert info.count == 8 and len(info.thumbnails) == studio_project.THUMBNAILS
    assert {p.name for p in info.thumbnails} <= set(names)


def test_cnnkit_studio_refuses_a_newer_project_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import one_line_error, run_cli

    root = tmp_path / "future"
    root.mkdir()
    (root / MANIFEST).write_text(json.dumps({"format": STUDIO_FORMAT + 1, "cnnkit": "9.4.0"}))

    from local_server import free_port

    code, _, err = run_cli(capsys, "studio", str(root), "--port", str(free_port()))
    assert code == 1 and "upgrade cnnkit" in one_line_error(err)  # refused before anything is served

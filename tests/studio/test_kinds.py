"""The kinds of model: their overrides, the `cnnkit train` command that reproduces a studio run
(parsed by cnnkit's own command line, it gives the very config the job trains with), and the
kind a project's images suggest."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import numpy as np
import pytest

from cnnkit.cli import build_parser
from cnnkit.commands.train_run import absolute_paths
from cnnkit.config import RunConfig, keyword_overrides, overrides_from_args, resolve_config
from cnnkit.errors import UsageError
from cnnkit.studio.kinds import KINDS, Settings, default_kind, train_command, train_overrides
from cnnkit.studio.project import Project

SETTINGS = {
    "photos": Settings(),
    "small": Settings(epochs=4, image_size=48, seed=3),
    "digits": Settings(lr=0.01, batch_size=8),
    "advanced": Settings(model="tv:resnet18", pretrained=True, epochs=2),
}


def config_of_command(command: str) -> RunConfig:
    """What `cnnkit train` resolves for ``command`` (run in the current folder)."""
    argv = shlex.split(command)
    assert argv[:2] == ["cnnkit", "train"]
    args = build_parser().parse_args(argv[1:])
    return resolve_config(args.recipe, args.config, overrides_from_args(args))


def comparable(cfg: RunConfig, cwd: Path) -> dict:
    """The config as a run folder records it: data paths absolute, and the output folder too."""
    cfg = absolute_paths(copy.deepcopy(cfg))
    cfg.output_dir = str((cwd / cfg.output_dir).absolute())
    return cfg.to_dict()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_command_gives_the_config_the_job_trains_with(kind: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    project = Project.open(tmp_path / "project")
    command = train_command(project, kind, SETTINGS[kind])
    monkeypatch.chdir(project.root)  # the command is run in the project folder

    from_command = config_of_command(command)
    from_job = resolve_config(None, None, keyword_overrides(train_overrides(project, kind, SETTINGS[kind])))

    assert command.startswith("cnnkit train --data data --output-dir runs ")
    assert comparable(from_command, project.root) == comparable(from_job, project.root)
    assert from_command.data.name == "data" and from_job.data.name == str(project.data_dir)


def test_the_photo_kind_is_a_frozen_pretrained_lite0_on_cached_features(tmp_path: Path) -> None:
    cfg = resolve_config(None, None, keyword_overrides(train_overrides(Project.open(tmp_path / "p"), "photos")))

    assert cfg.model.name == "timm:efficientnet_lite0" and cfg.model.pretrained and cfg.train.freeze
    assert cfg.data.augment == "none" and cfg.train.cache_features == "auto"  # un-augmented: features cached
    assert cfg.data.image_size is None  # the weights' own 224 px preprocessing


def test_bad_settings_are_refused_before_anything_runs(tmp_path: Path) -> None:
    project = Project.open(tmp_path / "p")
    with pytest.raises(UsageError, match="unknown kind of model 'photo'; did you mean 'photos'"):
        train_overrides(project, "photo")
    with pytest.raises(UsageError, match="the advanced kind needs a model name"):
        train_overrides(project, "advanced")
    with pytest.raises(UsageError, match="the digits kind chooses its own model"):
        train_overrides(project, "digits", Settings(model="lenet"))
    with pytest.raises(UsageError, match="--epochs must be >= 1, got 0"):
        train_overrides(project, "small", Settings(epochs=0))


def test_the_default_kind_follows_the_images(tmp_path: Path) -> None:
    project = Project.open(tmp_path / "p")
    assert default_kind(project) == "photos"  # nothing yet
    project.add_class("a")
    for shade in (0, 80, 160):
        project.add_image("a", np.full((32, 32, 3), (shade, 10, 200), np.uint8))
    assert default_kind(project) == "small"
    project.delete_class("a")
    project.add_class("one")
    canvas = np.full((280, 280), 255, np.uint8)
    canvas[40:240, 130:150] = 0
    project.add_image("one", canvas, source="sketch")
    assert default_kind(project) == "digits"

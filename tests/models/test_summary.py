"""``summarize`` and ``cnnkit summary``: exact totals for every registered model, known
shapes and MACs, shared modules, backbones, checkpoints and the errors a user sees."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cli_helpers import one_line_error, run_cli
from cnnkit.engine import save_checkpoint
from cnnkit.errors import UsageError
from cnnkit.models import create_model, format_summary, list_models, model_info, summarize

NUM_CLASSES = 5
# LeNet at 1x28x28, by hand: conv MACs = output values x in_chans x kernel area,
# linear MACs = in x out.
LENET_MACS = {
    "features.0": 6 * 24 * 24 * 1 * 5 * 5,  # 86,400
    "features.3": 16 * 8 * 8 * 6 * 5 * 5,  # 153,600
    "head.1": 256 * 120,
    "head.3": 120 * 84,
    "head.5": 84 * 10,
}


@functools.cache
def _built(name: str) -> nn.Module:
    return create_model(name, num_classes=NUM_CLASSES)


def default_input(name: str) -> tuple[int, int, int]:
    info = model_info(name)
    return (info.default_in_chans, *info.default_input_size)


@pytest.mark.parametrize("name", list_models())
def test_totals_are_exact_for_every_model(name):
    model = copy.deepcopy(_built(name))
    for param in model.features.parameters():  # freeze the trunk: the split must follow
        param.requires_grad_(False)
    summary = summarize(model, default_input(name))

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.total_params == total
    assert summary.trainable_params == trainable
    assert summary.frozen_params == sum(p.numel() for p in model.features.parameters()) > 0
    assert sum(row.params for row in summary.rows) == total
    assert sum(row.trainable_params for row in summary.rows) == trainable
    assert sum(row.macs for row in summary.rows) == summary.total_macs > 0
    root = summary.rows[0]
    assert (root.name, root.depth, root.output_shape) == ("", 0, [1, NUM_CLASSES])
    assert [row.name for row in summary.rows] == [n for n, _ in model.named_modules()]


def test_lenet_shapes_and_macs():
    summary = summarize(create_model("lenet"), (1, 28, 28))
    rows = {row.name: row for row in summary.rows}

    assert rows["features.0"].output_shape == [1, 6, 24, 24]
    assert rows["features.2"].output_shape == [1, 6, 12, 12]
    assert rows["features"].output_shape == [1, 16, 4, 4]
    assert rows["head.0"].output_shape == [1, 256]
    assert (rows["features.0"].type, rows["features.0"].depth) == ("Conv2d", 2)
    assert rows["features.0"].params == 6 * 25 + 6
    assert {name: rows[name].macs for name in LENET_MACS} == LENET_MACS
    assert summary.total_macs == sum(LENET_MACS.values()) == 281_640
    assert summary.total_params == 44_426
    assert summary.size_mb == pytest.approx(44_426 * 4 / 1e6)
    text = format_summary(summary)
    assert "Total params: 44,426" in text and "MACs per image: 0.28 M" in text
    assert "    features.0  Conv2d" in text  # indented by depth


def test_depth_folds_deeper_rows_into_their_ancestor():
    model = create_model("lenet")
    full = summarize(model, (1, 28, 28))
    folded = summarize(model, (1, 28, 28), depth=1)

    assert [row.name for row in folded.rows] == ["", "features", "head"]
    features = folded.rows[1]
    assert features.params == 156 + 2_416
    assert features.macs == LENET_MACS["features.0"] + LENET_MACS["features.3"]
    assert sum(row.params for row in folded.rows) == full.total_params == folded.total_params
    assert sum(row.macs for row in folded.rows) == full.total_macs
    only_model = summarize(model, (1, 28, 28), depth=0).rows
    assert len(only_model) == 1 and only_model[0].params == 44_426
    with pytest.raises(UsageError, match="depth"):
        summarize(model, (1, 28, 28), depth=-1)


class Shared(nn.Module):
    """One Linear called twice under two names, a tied weight, and a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.again = self.block  # the same module under a second name
        self.tied = nn.Linear(4, 4, bias=False)
        self.tied.weight = self.block.weight  # a parameter shared by two modules

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)  # [1, 4]
        return self.again(self.block(x)), self.tied(x)


def test_shared_modules_and_parameters_count_once():
    model = Shared()
    summary = summarize(model, (1, 2, 2))

    assert summary.total_params == sum(p.numel() for p in model.parameters()) == 16 + 4
    assert [row.name for row in summary.rows] == ["", "block", "tied"]
    rows = {row.name: row for row in summary.rows}
    assert rows["block"].macs == 2 * 16  # called twice
    assert rows["tied"].params == 0  # its weight is counted at `block`
    assert summary.total_macs == 3 * 16
    assert rows[""].output_shape == [[1, 4], [1, 4]]
    assert "[1, 4], [1, 4]" in format_summary(summary)


def test_training_modes_are_restored():
    model = create_model("cifar_cnn").train()
    model.features.eval()  # mixed modes must survive, not be reset to the root's
    summarize(model, (3, 32, 32))
    assert model.training and model.head.training
    assert not any(m.training for m in model.features.modules())


def test_too_small_input_is_a_usage_error():
    with pytest.raises(UsageError, match="does not accept a 1x8x8 input"):
        summarize(create_model("lenet"), (1, 8, 8))


def test_timm_backbone_with_a_new_head():
    pytest.importorskip("timm")
    model = create_model("timm:efficientnet_lite0", num_classes=10)  # random weights
    model.freeze_backbone()
    summary = summarize(model, (3, 224, 224), depth=4)

    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.trainable_params == 1280 * 10 + 10
    assert summary.rows[0].output_shape == [1, 10]
    assert summary.total_macs == pytest.approx(0.385e9, rel=0.05)  # timm lists 0.4 GMACs
    assert max(row.depth for row in summary.rows) == 4
    assert not model.backbone.training  # frozen backbone stays in eval mode


# ----------------------------------------------------------------------------- CLI


def test_cli_prints_the_table(capsys):
    code, out, err = run_cli(capsys, "summary", "lenet")
    assert code == 0, err
    assert "Total params: 44,426" in out
    assert "Input: 1x28x28" in out
    assert "[1, 6, 24, 24]" in out


def test_cli_json_input_size_and_depth(capsys):
    code, out, err = run_cli(capsys, "summary", "vgg11_bn", "--input-size", "3", "64", "48",
                             "--num-classes", "7", "--depth", "1", "--json")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["input_size"] == [3, 64, 48]
    assert [row["name"] for row in data["rows"]] == ["", "features", "head"]
    assert data["rows"][0]["output_shape"] == [1, 7]
    assert data["rows"][1]["output_shape"] == [1, 512, 2, 1]
    assert data["total_params"] == sum(row["params"] for row in data["rows"])


def test_cli_timm_backbone(capsys):
    pytest.importorskip("timm")
    code, out, err = run_cli(capsys, "summary", "timm:efficientnet_lite0", "--num-classes", "10",
                             "--input-size", "3", "64", "64")  # fmt: skip
    assert code == 0, err
    assert "backbone.blocks.1.0" in out and "Trainable params: 3,383,818" in out


def test_cli_reads_a_checkpoint_and_its_input_size(capsys, tmp_path: Path):
    model = create_model("lenet", num_classes=4, in_chans=3, input_size=(32, 32))
    payload = {
        "model": {"name": "lenet", "kwargs": {}, "num_classes": 4, "in_chans": 3,
                  "input_size": [32, 32]},  # fmt: skip
        "state_dict": model.state_dict(),
        "class_names": ["a", "b", "c", "d"],
        "preprocess": {"channels": 3, "input_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3},
    }
    save_checkpoint(payload, tmp_path / "run" / "checkpoints" / "best.pt")
    total = f"Total params: {sum(p.numel() for p in model.parameters()):,}"

    for target in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "best.pt"):
        code, out, err = run_cli(capsys, "summary", str(target))
        assert code == 0, err
        assert "Input: 3x32x32" in out and total in out
        assert "LeNet" in out and "[1, 4]" in out
    code, _, err = run_cli(capsys, "summary", str(tmp_path / "run"), "--num-classes", "3")
    assert code == 2 and "--num-classes" in one_line_error(err)
    code, _, err = run_cli(capsys, "summary", str(tmp_path / "missing.pt"))
    assert code == 1 and "not found" in one_line_error(err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summary", "lenett"], "unknown model 'lenett'"),
        (["summary", "timm:no_such_net"], "unknown timm architecture"),
        (["summary", "vgg16", "--input-size", "3", "8", "8"], "needs inputs of at least 32x32"),
        (["summary", "lenet", "--depth", "-1"], "--depth must be >= 0, got -1"),
    ],
)
def test_cli_usage_errors_exit_2_on_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in one_line_error(err)
    assert out == ""

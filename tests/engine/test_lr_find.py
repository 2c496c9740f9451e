"""The learning-rate range test on real digits: its suggestion trains, 100x it does not."""

from __future__ import annotations

import json
from pathlib import Path

import cnnkit
from cli_helpers import run_cli
from cnnkit import lr_find
from cnnkit.engine.lr_find import read_sweep, steepest_descent

SUBSET = dict(limit_train=3000, limit_eval=500, device="cpu")


def test_lr_find_suggests_a_rate_that_trains_better_than_100x_it(tmp_path: Path) -> None:
    result, run_dir = lr_find(output_dir=str(tmp_path), name="sweep", log=lambda _: None, **SUBSET)

    assert (run_dir / "lr_find.png").stat().st_size > 10_000 and (run_dir / "config.yaml").is_file()
    saved = json.loads((run_dir / "lr_find.json").read_text())
    assert saved["suggestion"] == result.suggestion and len(saved["lrs"]) == len(result.losses)
    assert 1e-5 < result.suggestion < result.min_loss_lr  # on the way down, before the bottom
    accuracy = {}
    for name, lr in (("suggested", result.suggestion), ("100x", 100 * result.suggestion)):
        run = cnnkit.train(epochs=1, lr=lr, output_dir=str(tmp_path), name=name, report=False, progress=False,
                           log=lambda _: None, **SUBSET)  # fmt: skip
        accuracy[name] = run.history[-1]["val_acc"]
    # measured: 70 % after one 46-step epoch at the suggestion, chance (10 %) at 100x it
    assert accuracy["suggested"] > 0.5 and accuracy["suggested"] > accuracy["100x"] + 0.2, accuracy


def test_train_lr_auto_sweeps_first_and_trains_at_the_suggestion(tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(capsys, "train", "--lr", "auto", "--epochs", "1", "--limit-train", "1000",
                             "--limit-eval", "200", "--device", "cpu", "--output-dir", str(tmp_path), "--name", "auto",
                             "--no-report", "--no-progress")  # fmt: skip
    assert code == 0, err
    suggestion = json.loads((tmp_path / "auto" / "lr_find.json").read_text())["suggestion"]
    assert "lr-find: suggested lr" in out and (tmp_path / "auto" / "lr_find.png").is_file()
    config = (tmp_path / "auto" / "config.yaml").read_text()
    assert f"lr: {suggestion}" in config and "lr_find: true" in config


def test_steepest_descent_finds_the_fall() -> None:
    lrs = [10 ** (-6 + i * 0.1) for i in range(60)]  # 1e-6 .. ~1e-0.1
    losses = [2.3 if lr < 1e-3 else 2.3 - 2 * (lr / 1e-1) if lr < 1e-1 else 0.3 + (lr - 1e-1) * 10 for lr in lrs]
    assert 1e-3 <= steepest_descent(lrs, losses) <= 1e-1


def test_bad_sweep_range_is_a_usage_error(capsys) -> None:
    code, _, err = run_cli(capsys, "lr-find", "--start-lr", "1", "--end-lr", "0.1")
    assert code == 2 and "0 < start" in err


def test_an_early_dip_is_ignored_and_a_flat_sweep_is_flagged() -> None:
    lrs = [10 ** (-7 + i * 0.08) for i in range(100)]  # 1e-7 .. ~8
    # one lucky first batch, a long flat stretch, a small fall near 0.1, then divergence
    losses = [2.20] + [2.31 if lr < 1e-2 else 2.31 - 0.03 * (lr / 0.1) if lr < 0.15 else 2.3 + lr for lr in lrs[1:]]
    result = read_sweep(lrs, losses)
    assert 1e-3 < result.suggestion < 0.1  # not the first rate, where the dip was
    assert result.doubtful and result.fall < 0.02
    falling = [2.3 if lr < 1e-3 else max(0.3, 2.3 - (lr / 1e-3)) if lr < 1 else 0.3 + lr for lr in lrs]
    assert not read_sweep(lrs, falling).doubtful

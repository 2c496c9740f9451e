"""The one scoring path: eval, the report and Predictor give the same numbers from the same logits.

A LeNet trained for one epoch on real digits with ``--tta flip`` backs the agreement
tests (the defect: the report ignored the run's TTA and Predictor averaged probabilities
over views of its own choosing, so report.html said 94.30 % where eval said 77.00 %).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import cnnkit
from cnnkit import evaluate_checkpoint
from cnnkit.config import DataConfig, TrainConfig, config_from_dict
from cnnkit.data import build
from cnnkit.engine import FitHooks, RunSaver, Scores, evaluate, fit, score, validation_loss
from cnnkit.engine.loop import improves
from cnnkit.evaluation import report as rep
from cnnkit.inference import Predictor
from cnnkit.models import create_model
from cnnkit.runfolder import RunFolder
from cnnkit.scoring import ScoringSettings

FLIP = ScoringSettings(tta="flip")  # float32 on the CPU, flip views


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory: pytest.TempPathFactory) -> cnnkit.Run:
    """LeNet, 1 epoch on 2,000 embedded digits, validated and tested with flip TTA."""
    out = tmp_path_factory.mktemp("runs")
    return cnnkit.train(epochs=1, limit_train=2000, limit_eval=500, tta="flip", output_dir=str(out), report=False,
                        progress=False, log=lambda line: None)  # fmt: skip


@pytest.fixture(scope="module")
def val_loader(flip_run: cnnkit.Run):
    loaders, _ = build(flip_run.config.data, seed=flip_run.config.train.seed, split=flip_run.spec.split)
    return loaders.val


@pytest.fixture(scope="module")
def predictor(flip_run: cnnkit.Run) -> Predictor:
    return Predictor.from_checkpoint(flip_run.dir)


def test_eval_report_and_predictor_agree_under_the_runs_flip_tta(flip_run, val_loader, predictor) -> None:
    model = predictor.model
    ev = evaluate(model, val_loader, 10, FLIP)
    pre = predictor.preprocess
    data = rep.summarise(rep.collect_predictions(model, val_loader, mean=pre.mean, std=pre.std, settings=FLIP),
                         predictor.class_names, "val")  # fmt: skip
    images = val_loader.images.cpu()  # uint8 [500, 1, 28, 28], the loader's order
    predicted = [p.index for p in predictor.predict(images, batch_size=128)]  # default: the run's own TTA
    labels = val_loader.labels.cpu().tolist()
    predictor_top1 = sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)

    assert ev.count == data.count == len(labels) == 500
    assert ev.acc > 0.5  # a real model, far above chance
    assert data.top1 == ev.acc and data.loss == ev.loss and data.top5 == ev.top5
    assert predictor_top1 == ev.acc
    assert evaluate_checkpoint(flip_run.dir, split="val").result.acc == ev.acc  # eval uses train.tta
    assert predictor.resolve_tta(None) == "flip" and predictor.resolve_tta(False) == "none"


def test_flip_tta_combines_the_views_by_the_mean_of_probabilities(val_loader, predictor) -> None:
    model = predictor.model
    images, _ = next(iter(val_loader))
    with torch.no_grad():
        plain, mirrored = model(images), model(images.flip(-1))
    mean_probs = (plain.softmax(1) + mirrored.softmax(1)) / 2  # the rule

    batches = [(images, torch.zeros(len(images), dtype=torch.long))]
    scored = score(model, batches, FLIP)

    torch.testing.assert_close(scored.logits.softmax(1), mean_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(scored.logits.exp().sum(1), torch.ones(len(images)), rtol=0, atol=1e-5)  # log-probs
    torch.testing.assert_close(predictor.logits(images, "flip"), scored.logits, rtol=0, atol=1e-5)
    assert not torch.allclose(scored.logits.softmax(1), plain.softmax(1), atol=1e-3)  # the mirror did change them
    assert scored.tta == "flip" and scored.logits.dtype == torch.float32 and scored.logits.device.type == "cpu"
    # no TTA: the model's own logits, untouched
    torch.testing.assert_close(score(model, batches).logits, plain, rtol=0, atol=0)


def test_one_confidently_wrong_view_cannot_outvote_the_others() -> None:
    from cnnkit.tta import combine_views

    wrong, right = torch.tensor([[0.0, 10.0]]), torch.tensor([[3.0, 0.0]])
    combined = combine_views([wrong, right, right])

    assert int(combined.argmax()) == 0  # probabilities (0.03, 0.97), twice (0.95, 0.05): class 0
    assert int(((wrong + 2 * right) / 3).argmax()) == 1  # a mean of logits would pick class 1
    torch.testing.assert_close(combined.exp(), (wrong.softmax(1) + 2 * right.softmax(1)) / 3)
    assert torch.equal(combine_views([right]), right)


def test_report_reuses_precomputed_scores_and_decodes_only_its_images(val_loader, predictor) -> None:
    model, pre = predictor.model, predictor.preprocess
    scores = score(model, val_loader, FLIP)
    fresh = rep.collect_predictions(model, val_loader, mean=pre.mean, std=pre.std, settings=FLIP)
    reused = rep.collect_predictions(None, val_loader, mean=pre.mean, std=pre.std, scores=scores)

    assert torch.equal(reused.logits, fresh.logits) and torch.equal(reused.worst_index, fresh.worst_index)
    assert torch.equal(reused.worst_images, fresh.worst_images)
    assert len(reused.worst_index) == rep.GALLERY_SIZE
    # By index into the in-memory images = walking the loader's batches and de-normalising them.
    walked = rep.images_at(list(val_loader), reused.worst_index, scores.labels, pre.mean, pre.std)
    torch.testing.assert_close(reused.worst_images, walked, rtol=0, atol=1e-6)
    # the worst image really is the highest-loss one
    assert int(reused.worst_index[0]) == int(scores.losses().argmax())


def test_images_at_by_index_of_a_file_dataset_equals_the_walk() -> None:
    from cnnkit.data.builder import loader_from_dataset

    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(40, 3, 8, 8, generator=generator)
    dataset = torch.utils.data.TensorDataset(pixels, torch.arange(40) % 4)
    loader = loader_from_dataset(dataset, 16, shuffle=False)
    positions = torch.tensor([37, 3, 20])

    by_index = rep.images_at(loader, positions, torch.arange(40) % 4, mean=[0, 0, 0], std=[1, 1, 1])
    walked = rep.images_at(list(loader), positions, torch.arange(40) % 4, mean=[0, 0, 0], std=[1, 1, 1])

    assert torch.equal(by_index, pixels[positions]) and torch.equal(walked, pixels[positions])


def test_validation_loss_is_plain_cross_entropy_whatever_the_training_loss() -> None:
    """fit's val_loss ignores label smoothing and class weights (it used to be label-smoothed)."""
    loaders, spec = build(DataConfig(limit_train=2048, limit_eval=256, batch_size=64), seed=0)
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10)
    cfg = TrainConfig(epochs=2, device="cpu", optimizer="adam", lr=3e-3, label_smoothing=0.2)
    weights = torch.linspace(0.5, 2.0, 10)
    result = fit(model, loaders, cfg, num_classes=spec.num_classes, hooks=FitHooks(log=lambda _: None, progress=False),
                 class_weights=weights)  # fmt: skip
    scores = score(model, loaders.val)  # fit leaves the last epoch's weights

    plain = float(F.cross_entropy(scores.logits, scores.labels))
    smoothed = float(F.cross_entropy(scores.logits, scores.labels, label_smoothing=0.2))
    assert result.history[-1]["val_loss"] == pytest.approx(plain, abs=2e-6)
    assert result.history[-1]["val_acc"] > 0.5 and abs(plain - smoothed) > 0.1  # it learned; the meanings differ
    assert validation_loss(scores.logits, scores.labels) == pytest.approx(plain, abs=1e-7)
    assert evaluate(model, loaders.val, 10).loss == pytest.approx(plain, abs=1e-6)


def test_scores_of_an_empty_loader() -> None:
    scores = score(create_model("lenet", num_classes=10), [])
    assert scores.count == 0 and math.isnan(scores.loss)
    assert isinstance(scores, Scores)


def test_scoring_settings_come_from_the_run_once() -> None:
    from cnnkit.config import RunConfig

    cfg = config_from_dict({"train": {"tta": "flip", "channels_last": "on", "amp": "auto"}})
    settings = ScoringSettings.for_run(cfg, "cpu")
    assert settings == ScoringSettings(torch.device("cpu"), None, "flip", True)  # auto: float32 evaluation on CPUs
    assert ScoringSettings.for_run(cfg, "cpu", tta="none").tta == "none"  # `cnnkit eval --tta none`
    assert ScoringSettings.for_run(RunConfig(), "cpu").channels_last is False  # auto: channels-last on CUDA only
    with pytest.raises(cnnkit.UsageError, match="test-time augmentation mode .sideways"):
        ScoringSettings(tta="sideways")


@pytest.fixture(scope="module")
def channels_last_run(tmp_path_factory: pytest.TempPathFactory) -> cnnkit.Run:
    """LeNet, 1 epoch on 2,000 embedded digits, trained and validated in channels-last layout."""
    out = tmp_path_factory.mktemp("runs")
    return cnnkit.train(epochs=1, limit_train=2000, limit_eval=300, channels_last="on", output_dir=str(out),
                        report=False, progress=False, log=lambda line: None)  # fmt: skip


def test_eval_and_report_score_a_split_with_the_same_settings_and_logits(channels_last_run, monkeypatch,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    """The report used to score without the run's channels-last layout that eval used."""
    import cnnkit.commands.evaluate as evaluate_command
    from cnnkit.commands.report import report

    seen: dict[str, tuple[ScoringSettings, Scores]] = {}

    def spy(name, real):
        def scored(model, loader, settings=None):
            seen[name] = (settings, real(model, loader, settings))
            return seen[name][1]
        return scored

    monkeypatch.setattr(evaluate_command, "score", spy("eval", evaluate_command.score))
    monkeypatch.setattr(rep, "score", spy("report", rep.score))
    result = evaluate_checkpoint(channels_last_run.dir, split="test").result
    report(channels_last_run.dir, split="test", out_dir=tmp_path / "report")

    (eval_settings, eval_scores), (report_settings, report_scores) = seen["eval"], seen["report"]
    assert eval_settings == report_settings and eval_settings.channels_last  # the layout the run validated in
    assert torch.equal(eval_scores.logits, report_scores.logits) and eval_scores.count == 300
    assert result.acc == rep.summarise(rep.Predictions(report_scores.logits, report_scores.labels, torch.zeros(0),
                                                       torch.zeros(0, dtype=torch.long)), ["x"] * 10, "test").top1
    assert result.acc > 0.3  # a real model (chance: 0.1)


def test_robustness_clean_row_is_the_scoring_paths_accuracy(val_loader, predictor) -> None:
    from cnnkit.evaluation.robustness import Normalisation, robustness_table

    model, pre = predictor.model, predictor.preprocess
    rows, _ = robustness_table(model, val_loader, Normalisation.of(pre.mean, pre.std), FLIP, max_images=200)
    first = [batch for batch in val_loader][:4]  # the first 200 images (batches of 64 or more)
    images = torch.cat([x for x, _ in first])[:200]
    labels = torch.cat([y for _, y in first])[:200]
    expected = int((score(model, [(images, labels)], FLIP).logits.argmax(1) == labels).sum()) / 200

    table = dict(rows)
    assert table["clean"] == pytest.approx(expected, abs=1e-9)
    assert table["FGSM eps 8/255"] < table["clean"]  # the attack goes through the same (TTA) forward


# ----------------------------------------------------------------------------- best-epoch selection


def _row(epoch: int, acc: float, loss: float) -> dict:
    return {"epoch": epoch, "val_acc": acc, "val_loss": loss}


def _select(history: list[dict], metric: str) -> int:
    best = None
    for row in history:
        if improves(row, best, metric):
            best = row
    return best["epoch"]


def test_ties_in_accuracy_go_to_the_lower_validation_loss() -> None:
    # The default run's pattern: 98.10 % at epochs 6, 9, 12, 14 and 15; the earliest won.
    history = [_row(e, 0.975 + 0.001 * e, 0.2 - 0.01 * e) for e in range(1, 6)]
    history += [_row(6, 0.981, 0.070), _row(7, 0.979, 0.066), _row(8, 0.980, 0.064), _row(9, 0.981, 0.061),
                _row(10, 0.980, 0.060), _row(11, 0.979, 0.059), _row(12, 0.981, 0.057), _row(13, 0.980, 0.058),
                _row(14, 0.981, 0.058), _row(15, 0.981, 0.056)]  # fmt: skip

    assert _select(history, "val_acc") == 15  # equal accuracy, lowest loss
    assert _select(history[:14], "val_acc") == 12  # epoch 14 ties on accuracy but has the higher loss


def test_ties_in_loss_go_to_the_higher_accuracy_and_full_ties_keep_the_earlier_epoch() -> None:
    history = [_row(1, 0.90, 0.30), _row(2, 0.91, 0.25), _row(3, 0.93, 0.25), _row(4, 0.92, 0.25)]
    assert _select(history, "val_loss") == 3
    assert _select([_row(1, 0.9, 0.3), _row(2, 0.9, 0.3)], "val_acc") == 1
    assert _select([_row(1, 0.9, 0.3), _row(2, float("nan"), 0.1)], "val_acc") == 1  # NaN never wins
    assert improves(_row(2, 0.95, 0.4), _row(1, 0.9, 0.1), "val_acc")  # a better value wins regardless of loss


def test_fit_breaks_a_tie_on_validation_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through fit (best.pt included): equal val accuracy in every epoch, the losses scripted."""
    import cnnkit.engine.loop as loop

    losses = iter([0.9, 0.7, 0.8, 0.7])
    matrix = torch.eye(10, dtype=torch.long) * 5

    def scripted(*args, **kwargs) -> loop.EvalResult:
        return loop.EvalResult(loss=next(losses), acc=0.5, top5=None, confusion=matrix, count=50, seconds=0.0)

    monkeypatch.setattr(loop, "evaluate", scripted)
    loaders, spec = build(DataConfig(limit_train=256, limit_eval=128, batch_size=64), seed=0)
    cfg = TrainConfig(epochs=4, device="cpu")
    result = fit(create_model("lenet", num_classes=10), loaders, cfg, num_classes=spec.num_classes,
                 saver=RunSaver(RunFolder(tmp_path)), hooks=FitHooks(log=lambda _: None, progress=False))  # fmt: skip

    assert [row["val_acc"] for row in result.history] == [0.5] * 4
    assert result.best_epoch == 2  # the lowest loss; epoch 4 only ties it, so the earlier stays
    payload = torch.load(tmp_path / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert payload["metrics"]["epoch"] == 2

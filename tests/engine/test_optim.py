"""Optimizer construction for the fast recipes: parameter groups (norm lr scale, no decay on
norms and biases), the triangle schedule, lookahead, and the fused/foreach choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.config import TrainConfig
from cnnkit.engine.optim import build_optimizer, build_scheduler, check_train_config
from cnnkit.models import create_model


def _groups(model: nn.Module, **train) -> list[dict]:
    return build_optimizer(model, TrainConfig(**train)).param_groups


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_norm_layers_get_their_own_lr_and_the_same_decay_per_step() -> None:
    model = create_model("airbench")
    norms = _ids(p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    groups = _groups(model, optimizer="sgd", lr=1.5, weight_decay=0.00133, norm_lr_scale=64)

    by_ids = {frozenset(_ids(g["params"])): g for g in groups}
    norm_group = by_ids[frozenset(norms)]
    assert norm_group["lr"] == pytest.approx(96.0)
    assert norm_group["lr"] * norm_group["weight_decay"] == pytest.approx(1.5 * 0.00133)  # decay per step kept
    (rest,) = [g for g in groups if g is not norm_group]
    assert rest["lr"] == 1.5 and rest["weight_decay"] == 0.00133
    assert _ids(rest["params"]) | norms == _ids(model.parameters())


def test_no_decay_on_norms_and_biases() -> None:
    model = create_model("cifar_cnn")
    groups = _groups(model, optimizer="adamw", lr=1e-3, weight_decay=0.05, no_decay_norm_bias=True)

    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    free = [p for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    assert decayed and all(p.dim() > 1 for p in decayed)  # conv and linear weights only
    assert _ids(free) == _ids(p for p in model.parameters() if p.dim() <= 1)
    assert all(g["lr"] == 1e-3 for g in groups)


def test_plain_config_keeps_one_group() -> None:
    (group,) = _groups(create_model("lenet"), optimizer="sgd", lr=0.1, weight_decay=5e-4)
    assert group["lr"] == 0.1 and group["weight_decay"] == 5e-4


def _fused_cpu() -> bool:
    try:
        torch.optim.Adam([nn.Parameter(torch.zeros(1))], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_where_torch_has_it_and_the_same_steps_as_foreach(name: str) -> None:
    """Fused kernels on the CPU (torch >= 2.4) and CUDA, foreach elsewhere: five steps of the
    fused optimizer land where the multi-tensor one does."""
    (group,) = _groups(create_model("lenet"), optimizer=name, lr=0.1)
    assert group.get("fused") is True if _fused_cpu() else group["foreach"] is True
    if torch.cuda.is_available():
        (group,) = _groups(create_model("lenet").cuda(), optimizer=name, lr=0.1)
        assert group["fused"] is True

    torch.manual_seed(0)
    start, grads = create_model("lenet"), [torch.randn(5, 1, 28, 28) for _ in range(5)]
    ends = []
    for implementation in ({"foreach": True}, {"fused": True} if _fused_cpu() else {"foreach": False}):
        model = create_model("lenet")
        model.load_state_dict(start.state_dict())
        klass = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
        optimizer = klass(model.parameters(), lr=1e-2, weight_decay=1e-4, **implementation)
        for images in grads:
            optimizer.zero_grad()
            model(images).square().mean().backward()
            optimizer.step()
        ends.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(ends[0], ends[1], rtol=1e-4, atol=1e-6)


def _lr_trace(steps_per_epoch: int = 10, epochs: int = 10, **train) -> list[float]:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    cfg = TrainConfig(epochs=epochs, lr=1.0, scheduler="triangle", **train)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    trace = []
    for _ in range(epochs * steps_per_epoch):
        trace.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return trace


def test_triangle_schedule_is_airbenchs() -> None:
    trace = _lr_trace(warmup_epochs=2.3, lr_start_factor=0.2, lr_end_factor=0.07)

    assert trace[0] == pytest.approx(0.2)  # starts at 0.2 x lr
    assert max(trace) == pytest.approx(1.0) and trace.index(max(trace)) == 23  # peak at 23 % of the steps
    rising, falling = trace[:24], trace[23:]
    assert all(b > a for a, b in zip(rising, rising[1:], strict=False))
    assert all(b < a for a, b in zip(falling, falling[1:], strict=False))
    assert trace[-1] == pytest.approx(0.07, abs=0.015)  # 0.07 x lr after the last step
    assert _lr_trace()[0] == 1.0  # no warm-up: straight down from lr


def test_factors_out_of_range_are_usage_errors() -> None:
    with pytest.raises(cnnkit.UsageError, match="lr_end_factor"):
        check_train_config(TrainConfig(scheduler="triangle", lr_end_factor=1.5))


def test_lookahead_averages_and_ends_on_the_average() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, lookahead=True, epochs=1)
    optimizer = build_optimizer(model, cfg)
    build_scheduler(optimizer, cfg, 12)  # tells lookahead the run is 12 steps
    x = torch.randn(32, 4)
    snapshots = []
    for step in range(1, 13):
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
        snapshots.append(model[0].weight.detach().clone())
        if step in (5, 10):  # an averaging step sets the weights to the average
            torch.testing.assert_close(snapshots[-1], optimizer.lookahead.average[0])
    # The last step leaves the average of step 10, not the weights SGD moved to since.
    torch.testing.assert_close(model[0].weight, snapshots[9])
    assert optimizer.lookahead.step == 12


def test_lookahead_state_survives_a_checkpoint() -> None:
    model = create_model("lenet")
    cfg = TrainConfig(optimizer="sgd", lr=0.01, lookahead=True, epochs=2)
    optimizer = build_optimizer(model, cfg)
    build_scheduler(optimizer, cfg, 10)
    for _ in range(7):
        optimizer.zero_grad()
        model(torch.randn(4, 1, 28, 28)).pow(2).mean().backward()
        optimizer.step()
    state = optimizer.state_dict()

    resumed = build_optimizer(model, cfg)
    resumed.load_state_dict(state)
    assert resumed.lookahead.step == 7
    for mine, theirs in zip(resumed.lookahead.average, optimizer.lookahead.average, strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize(("train", "klass", "expected"), [
    ({"optimizer": "sgd", "momentum": 0.9}, torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    ({"optimizer": "sgd", "momentum": 0.9, "nesterov": True}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ({"optimizer": "sgd", "momentum": 0.0, "nesterov": True}, torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
    ({"optimizer": "adam"}, torch.optim.Adam, {"betas": (0.9, 0.999), "eps": 1e-8}),
    ({"optimizer": "adamw", "weight_decay": 0.05}, torch.optim.AdamW, {"weight_decay": 0.05}),
])  # fmt: skip
def test_timms_factory_builds_the_configured_torch_optimizer(train: dict, klass: type, expected: dict) -> None:
    """timm's factory maps cnnkit's names onto PyTorch's optimizers: SGD is Nesterov's only
    when asked (timm's own ``sgd`` defaults to it), and nothing else is wrapped around them."""
    model = create_model("lenet")
    optimizer = build_optimizer(model, TrainConfig(lr=0.01, **train))
    assert type(optimizer) is klass
    assert optimizer.defaults["lr"] == 0.01
    assert {key: optimizer.defaults[key] for key in expected} == expected
    assert optimizer.defaults.get("fused") or optimizer.defaults.get("foreach")

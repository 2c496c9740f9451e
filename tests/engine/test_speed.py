"""``--compile auto`` on the CPU: the decision from an epoch's time and precision, the fallback when compiling fails.

The decision tests feed :class:`CompilePlan` made-up epoch times and a fake compiler (no
wall clock, no inductor); one slow test compiles LeNet for real with inductor's C++ backend.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.config import DataConfig, TrainConfig
from cnnkit.data import build
from cnnkit.engine import FitHooks, fit, speed
from cnnkit.engine.speed import CompileEstimate, CompilePlan, EagerOnFailure, compile_pays
from cnnkit.models import create_model

CPU = torch.device("cpu")
CPU_ESTIMATE = speed.COMPILE_ESTIMATES["cpu"]


class Twin(nn.Module):
    """What a fake ``torch.compile`` returns: the same model, counting its calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


class Broken(nn.Module):
    """A compiled module whose first call fails the way a missing C++ toolchain does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx")


@pytest.fixture
def logs() -> list[str]:
    return []


@pytest.fixture
def compiler_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "cpp_compiler", lambda: "g++")


def _plan(logs: list[str], mode: str = "auto", deterministic: bool = False, compile_fn=Twin) -> CompilePlan:
    return CompilePlan(mode, CPU, deterministic, logs.append, compile_fn=compile_fn)


def test_compile_pays_when_the_saving_beats_the_one_off_cost() -> None:
    estimate = CompileEstimate(seconds=60.0, gain=0.2)
    assert compile_pays(100.0, 4, estimate)  # saves 80 s > 60 s
    assert not compile_pays(100.0, 3, estimate)  # saves 60 s: not more than it costs
    assert not compile_pays(1e6, 0, estimate)  # nothing left to train


def test_cpu_auto_compiles_a_long_run_and_keeps_the_faster_compiled_epochs(logs, compiler_found) -> None:
    model, plan = nn.Linear(4, 2), _plan(logs)
    assert plan.module(model) is model  # epoch 1 is eager: it is the measurement
    long = 2 * CPU_ESTIMATE.seconds / CPU_ESTIMATE.gain  # one epoch's saving alone repays the compile twice
    plan.observe(long, epochs_left=19)
    runner = plan.module(model)
    assert isinstance(runner, EagerOnFailure) and runner.eager is model
    assert "compile: auto: compiling (19 more epochs" in logs[-1]
    plan.observe(long * 1.1, epochs_left=18)  # the compile's epoch: slower, not judged
    assert plan.module(model) is runner
    plan.observe(long * 0.8, epochs_left=17)
    assert plan.module(model) is runner and logs[-1].endswith("keeping it")
    assert len(logs) == 2


def test_cpu_auto_goes_back_to_eager_when_compiled_is_not_faster(logs, compiler_found) -> None:
    model, plan = nn.Linear(4, 2), _plan(logs)
    plan.observe(1000.0, epochs_left=19)
    plan.observe(1100.0, epochs_left=18)
    plan.observe(1000.0, epochs_left=17)  # a tie is not a gain
    assert plan.module(model) is model and logs[-1].endswith("back to eager")


def test_cpu_auto_stays_eager_when_the_run_is_too_short_to_repay_the_compile(logs, compiler_found) -> None:
    model, plan = nn.Linear(4, 2), _plan(logs)
    plan.observe(10.0, epochs_left=14)  # the default LeNet run: ~10 s epochs
    assert plan.module(model) is model and logs == []  # short runs stay eager without a line
    plan.observe(10.0, epochs_left=13)  # decided once
    plan.observe(10.0, epochs_left=12)
    assert plan.module(model) is model and logs == []


def test_cpu_auto_stays_eager_with_a_message_without_a_cpp_compiler(logs, monkeypatch) -> None:
    monkeypatch.setattr(speed, "cpp_compiler", lambda: None)
    model, plan = nn.Linear(4, 2), _plan(logs)
    plan.observe(1000.0, epochs_left=19)
    assert plan.module(model) is model
    assert "no C++ compiler for inductor was found" in logs[0] and logs[0].endswith("staying eager")


def test_cpu_auto_never_compiles_bf16_training(logs, compiler_found) -> None:
    """Compiled bf16 training ran slower than eager on the CPU (0.56x, 0.83x): auto stays eager there."""
    model = nn.Linear(4, 2)
    plan = CompilePlan("auto", CPU, False, logs.append, compile_fn=Twin, dtype=torch.bfloat16)
    plan.observe(1e6, epochs_left=100)
    assert plan.module(model) is model and logs == []
    assert speed.compile_estimate(CPU, None) is CPU_ESTIMATE
    assert speed.compile_estimate(torch.device("cuda"), torch.bfloat16) is speed.COMPILE_ESTIMATES["cuda"]


@pytest.mark.parametrize(("mode", "deterministic"), [("off", False), ("auto", True)])
def test_off_and_deterministic_never_compile(logs, compiler_found, mode: str, deterministic: bool) -> None:
    model, plan = nn.Linear(4, 2), _plan(logs, mode, deterministic)
    plan.observe(1e6, epochs_left=100)
    assert plan.module(model) is model and logs == []


def test_a_failed_compile_trains_eager_from_that_batch_on(logs, compiler_found) -> None:
    torch.manual_seed(0)
    model, plan = nn.Linear(4, 2), _plan(logs, compile_fn=lambda _: Broken())
    plan.observe(1000.0, epochs_left=19)
    runner = plan.module(model)
    x = torch.randn(3, 4)
    assert torch.equal(runner(x), model(x))  # the failing batch itself is answered eager
    assert logs[-1].startswith("compile: auto: compiling failed (RuntimeError: InvalidCxxCompiler")
    assert logs[-1].endswith("training eager")
    assert torch.equal(runner(x), model(x)) and len(logs) == 2  # reported once
    assert plan.module(model) is model  # the next epochs are eager
    plan.observe(900.0, epochs_left=18)
    assert plan.module(model) is model and len(logs) == 2


@pytest.fixture(scope="module")
def tiny_loaders():
    """1,024 train / 256 val embedded digits: 16 steps per epoch at batch 64."""
    return build(DataConfig(limit_train=1024, limit_eval=256, batch_size=64, augment="none"), seed=0)


def _fit(tiny_loaders, logs: list[str], epochs: int = 3, **train) -> cnnkit.FitResult:
    loaders, spec = tiny_loaders
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10)
    # float32 everywhere: on a CPU with AMX, --amp auto trains in bf16, where auto never compiles
    cfg = TrainConfig(**{"epochs": epochs, "device": "cpu", "lr": 2e-3, "amp": "off", **train})
    return fit(model, loaders, cfg, num_classes=spec.num_classes, hooks=FitHooks(log=logs.append, progress=False))


@pytest.fixture
def compiling_always_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any first epoch, however short, makes ``auto`` compile (the tiny runs here take seconds)."""
    monkeypatch.setitem(speed.COMPILE_ESTIMATES, "cpu", CompileEstimate(seconds=0.0, gain=1.0))


def test_fit_with_auto_carries_on_eager_when_compiling_fails(tiny_loaders, logs, monkeypatch, compiler_found,
                                                             compiling_always_pays) -> None:  # fmt: skip
    monkeypatch.setattr(torch, "compile", lambda model: Broken())
    result = _fit(tiny_loaders, logs)
    eager = _fit(tiny_loaders, [], compile="off")

    assert any(line.startswith("compile: auto: compiling (") for line in logs)
    assert sum("compiling failed (RuntimeError: InvalidCxxCompiler" in line for line in logs) == 1
    assert len(result.history) == 3
    # every batch ran eager, in the same order from the same seed: the very same run as --compile off
    assert [r["val_acc"] for r in result.history] == [r["val_acc"] for r in eager.history]
    assert result.history[-1]["val_acc"] > 0.7


@pytest.mark.slow
@pytest.mark.skipif(speed.cpp_compiler() is None, reason="no C++ compiler for inductor (torch.compile on the CPU)")
def test_auto_compiles_lenet_for_real_on_the_cpu_with_unchanged_accuracy(tiny_loaders, logs,
                                                                         compiling_always_pays) -> None:  # fmt: skip
    result = _fit(tiny_loaders, logs)
    eager = _fit(tiny_loaders, [], compile="off")

    assert any(line.startswith("compile: auto: compiling (") for line in logs)
    assert not any("failed" in line for line in logs)
    assert any(line.startswith("compile: auto: compiled epoch") for line in logs)  # epoch 3 timed against eager
    for compiled_row, eager_row in zip(result.history, eager.history, strict=True):
        # epoch 1 is eager on both sides; compiled kernels round differently, so later epochs agree closely
        assert compiled_row["val_acc"] == pytest.approx(eager_row["val_acc"], abs=0.03)
    assert result.history[-1]["val_acc"] > 0.7

"""Speed switches of the training loop: memory format, ``torch.compile`` and ``--profile``.

Each is a small decision with its reason logged, so a user sees what was chosen and why:

* channels-last (NHWC) memory format: convolutions on GPUs' tensor cores and in oneDNN
  on CPUs run on NHWC without layout conversions. ``auto`` turns it on for CUDA.
* ``torch.compile``: fuses the model's ops into fewer kernels, but compiling costs tens of
  seconds. ``auto`` measures the first (eager) epoch and compiles when the epochs left are
  expected to save more than the compile costs (:func:`compile_pays` with the device's
  :data:`COMPILE_ESTIMATES`), on CUDA and on a CPU with a C++ compiler for inductor
  training in float32 (:func:`compile_estimate`), outside deterministic mode; after one
  compiled epoch (which pays the compile), the next one is timed and the faster of the
  two is kept. A compile that fails sends ``auto``
  back to eager with a log line (:class:`EagerOnFailure`).
* :class:`StepTimer` adds up where each training step's time goes (data, forward,
  backward, optimizer) for ``--profile``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.device import check_switch, to_layout, use_channels_last  # noqa: F401 (the engine's names for them)


@dataclass(frozen=True)
class CompileEstimate:
    """What ``auto`` expects compiling to cost and save on one kind of device, before measuring.

    Attributes:
        seconds: the one-off compile of the training graphs (forward and backward), in seconds.
        gain: the share of an eager epoch's training time a compiled epoch saves (0.2: 20 %).
    """

    seconds: float
    gain: float


# CUDA: compiling a small CNN takes 20-60 s and a compiled step saves 10-40 %: 60 s / 0.2 means
# "compile when the eager epochs left would take over 5 minutes". CPU (inductor's C++ backend,
# bench/compile_cpu.py on 2 EPYC cores, cold cache): 44 s for CifarCNN, 13-30 s for LeNet and
# mnist_fast. The 10 % gain is a prior, not a promise: CifarCNN ran 0.87x compiled there (its
# time is in oneDNN convolutions either way), the airbench net 2.2x (issue 21); the timed
# compiled epoch settles it for the model at hand.
COMPILE_ESTIMATES = {"cuda": CompileEstimate(60.0, 0.2), "cpu": CompileEstimate(45.0, 0.1)}


def compile_estimate(device: torch.device, dtype: torch.dtype | None) -> CompileEstimate | None:
    """What ``auto`` expects of compiling training on ``device`` with autocast ``dtype`` (None: full
    precision); None where ``auto`` never compiles: bf16 autocast on a CPU, where compiled training
    ran at 0.56x (CifarCNN) and 0.83x (the airbench net) the eager rate on a 2-core Xeon with AMX
    (``bench/compile_cpu.py --amp auto``, issue 21)."""
    if device.type == "cpu" and dtype is not None:
        return None
    return COMPILE_ESTIMATES.get(device.type)


@functools.lru_cache(maxsize=1)
def cpp_compiler() -> str | None:
    """The C++ compiler inductor builds its CPU kernels with (``$CXX``, else ``g++``...), or None.

    ``torch.compile`` on the CPU cannot run without one; asking costs one ``--version`` call.
    """
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or an inductor that cannot be imported here
        return None


def compile_pays(epoch_seconds: float, epochs_left: int, estimate: CompileEstimate) -> bool:
    """Whether compiling is expected to save more than it costs: the time ``estimate.gain``
    saves over the ``epochs_left`` epochs of ``epoch_seconds`` each exceeds its one-off cost."""
    return epoch_seconds * epochs_left * estimate.gain > estimate.seconds


class CompilePlan:
    """Which module the loop runs each epoch: the eager model or its compiled twin.

    Args:
        mode: ``on`` (compiled from the first epoch), ``off`` or ``auto`` (see module doc).
        device: the training device (``auto`` compiles on CUDA and on a CPU with a C++ compiler).
        deterministic: ``auto`` never compiles in deterministic mode (bit-exact reruns).
        log: receives one line per decision.
        compile_fn: what compiles a module (None: ``torch.compile``; tests pass a fake).
        dtype: the training autocast dtype (None: full precision); see :func:`compile_estimate`.
    """

    def __init__(self, mode: str, device: torch.device, deterministic: bool, log,
                 compile_fn: Callable[[nn.Module], nn.Module] | None = None,
                 dtype: torch.dtype | None = None) -> None:  # fmt: skip
        self.mode = check_switch("compile", mode)
        self.device = device
        self.estimate = compile_estimate(device, dtype) if mode == "auto" and not deterministic else None
        self.log = log
        self.compile_fn = compile_fn or torch.compile
        self.compiled: nn.Module | None = None
        self.use_compiled = mode == "on"
        self.failed = False
        self.eager_seconds: float | None = None
        self.compiled_epochs = 0

    def module(self, model: nn.Module) -> nn.Module:
        """The module to train with this epoch."""
        if not self.use_compiled:
            return model
        if self.compiled is None:
            compiled = self.compile_fn(model)
            self.compiled = compiled if self.mode == "on" else EagerOnFailure(model, compiled, self._failed)
        return self.compiled

    def eval_module(self, model: nn.Module, runner: nn.Module) -> nn.Module:
        """The module to validate with: ``runner`` (this epoch's), except on the CPU, where
        validation stays eager: compiling its graphs (eval mode, other batch sizes, the last
        partial batch) would cost more seconds than validating a CIFAR-sized set takes."""
        return model if self.device.type == "cpu" else runner

    def observe(self, seconds: float, epochs_left: int) -> None:
        """Record how long the epoch just trained took and decide for the next one."""
        if self.estimate is None or self.failed:
            return
        if self.eager_seconds is None:
            self.eager_seconds = seconds
            self._decide(seconds, epochs_left)
        elif self.use_compiled:
            self.compiled_epochs += 1
            if self.compiled_epochs == 2:  # the 1st compiled epoch paid the compile; this one is comparable
                keep = seconds < self.eager_seconds
                self.use_compiled = keep
                self.log(f"compile: auto: compiled epoch {seconds:.1f}s vs eager {self.eager_seconds:.1f}s; "
                         + ("keeping it" if keep else "back to eager"))  # fmt: skip

    def _decide(self, seconds: float, epochs_left: int) -> None:
        """After the first (eager) epoch: compile when :func:`compile_pays`, saying why. A run too
        short to repay a compile (most runs: the default LeNet run, every test) stays eager without a
        line, as it always did; one that would pay but cannot compile says so."""
        estimate, where = self.estimate, self.device.type
        if not compile_pays(seconds, epochs_left, estimate):
            return
        saving = seconds * epochs_left * estimate.gain
        because = (f"{epochs_left} more epochs of ~{seconds:.0f}s, a {estimate.gain:.0%} gain would save "
                   f"~{saving:.0f}s vs ~{estimate.seconds:.0f}s to compile on {where}")  # fmt: skip
        if where == "cpu" and cpp_compiler() is None:
            self.log(f"compile: auto: would pay ({because}), but no C++ compiler for inductor was found "
                     "(install g++ or set CXX); staying eager")  # fmt: skip
        else:
            self.use_compiled = True
            self.log(f"compile: auto: compiling ({because}); the next epoch includes the compile, "
                     "the one after it is timed against eager")  # fmt: skip

    def _failed(self, error: Exception) -> None:
        """``auto``'s compiled module failed to compile: train eager from here on, saying why."""
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        self.log(f"compile: auto: compiling failed ({type(error).__name__}: {reason}); training eager")
        self.failed, self.use_compiled = True, False


class EagerOnFailure(nn.Module):
    """A compiled module that falls back to its eager original when compiling fails.

    ``torch.compile`` compiles lazily, at the first call: an error there (no C++ compiler,
    an operator inductor cannot lower) reaches ``on_failure`` once and every call from then
    on, that batch's included, runs ``eager``. Only the first call is guarded, which is
    where the forward graph is built; the compiled twin shares the eager module's weights.
    """

    def __init__(self, eager: nn.Module, compiled: nn.Module, on_failure: Callable[[Exception], None]) -> None:
        super().__init__()
        self.eager = eager  # a submodule: train()/eval() reach the weights both sides share
        object.__setattr__(self, "compiled", compiled)  # not a second registration of the same weights
        self.on_failure = on_failure
        self.state = "untried"  # -> "works" or "failed"

    def forward(self, *args, **kwargs):
        if self.state == "works":
            return self.compiled(*args, **kwargs)
        if self.state == "failed":
            return self.eager(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:  # any compile error: training goes on eager rather than dying
            self.state = "failed"
            self.on_failure(error)
            return self.eager(*args, **kwargs)
        self.state = "works"
        return out


class StepTimer:
    """Adds up wall time per phase of the training steps (``--profile``).

    On CUDA each phase ends with a synchronisation, so kernels are charged to the phase
    that launched them (which slows training a little: profile only the first epochs).
    """

    PHASES = ("data", "forward", "backward", "optimizer")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.steps = 0

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[phase] += time.perf_counter() - start

    def table(self, epoch: int, images: int, eval_seconds: float) -> str:
        """The profile of one epoch as aligned lines: seconds, share and ms per step."""
        total = sum(self.seconds.values()) + eval_seconds
        lines = [f"profile of epoch {epoch} ({self.steps} steps, {images:,} images, {total:.2f}s):"]
        for phase, seconds in [*self.seconds.items(), ("eval", eval_seconds)]:
            per_step = f"{1000 * seconds / max(self.steps, 1):8.2f} ms/step" if phase != "eval" else ""
            lines.append(f"  {phase:<10}{seconds:8.2f}s {seconds / max(total, 1e-9):6.1%} {per_step}")
        return "\n".join(lines)


class NoTimer:
    """The :class:`StepTimer` interface that measures nothing (no profiling)."""

    def __call__(self, phase: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

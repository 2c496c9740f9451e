"""Speed switches of the training loop: memory format, ``torch.compile`` and ``--profile``.

Each is a small decision with its reason logged, so a user sees what was chosen and why:

* channels-last (NHWC) memory format: convolutions on GPUs' tensor cores and in oneDNN
  on CPUs run on NHWC without layout conversions. ``auto`` turns it on for CUDA.
* ``torch.compile``: fuses the model's ops into fewer kernels, but compiling costs tens of
  seconds. ``auto`` measures the first (eager) epoch and compiles only when the epochs
  left would take long enough to repay that, on CUDA, outside deterministic mode; after
  one compiled epoch (which pays the compile), the next one is timed and the faster of
  the two is kept.
* :class:`StepTimer` adds up where each training step's time goes (data, forward,
  backward, optimizer) for ``--profile``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn

from cnnkit.config import SWITCH_MODES
from cnnkit.errors import unknown_name

# auto-compile when the eager epochs still to run are projected to take longer than this:
# compiling a small CNN takes 20-60 s, and a compiled step saves 10-40 % at best.
AUTO_COMPILE_MIN_SECONDS = 300.0


def check_switch(name: str, mode: str) -> str:
    """``mode`` itself when it is auto/on/off; else a UsageError naming the flag."""
    if mode not in SWITCH_MODES:
        raise unknown_name(f"--{name} mode", mode, SWITCH_MODES)
    return mode


def use_channels_last(mode: str, device: torch.device) -> bool:
    """Whether to train in channels-last: ``on``, ``off``, or ``auto`` (CUDA only)."""
    check_switch("channels-last", mode)
    return mode == "on" or (mode == "auto" and device.type == "cuda")


class CompilePlan:
    """Which module the loop runs each epoch: the eager model or its compiled twin.

    Args:
        mode: ``on`` (compiled from the first epoch), ``off`` or ``auto`` (see module doc).
        device: the training device (``auto`` compiles only on CUDA).
        deterministic: ``auto`` never compiles in deterministic mode (bit-exact reruns).
        log: receives one line per decision.
    """

    def __init__(self, mode: str, device: torch.device, deterministic: bool, log) -> None:
        self.mode = check_switch("compile", mode)
        self.allowed = mode == "on" or (mode == "auto" and device.type == "cuda" and not deterministic)
        self.log = log
        self.compiled: nn.Module | None = None
        self.use_compiled = mode == "on"
        self.eager_seconds: float | None = None
        self.compiled_epochs = 0

    def module(self, model: nn.Module) -> nn.Module:
        """The module to train with this epoch."""
        if not self.use_compiled:
            return model
        if self.compiled is None:
            self.compiled = torch.compile(model)
        return self.compiled

    def observe(self, seconds: float, epochs_left: int) -> None:
        """Record how long the epoch just trained took and decide for the next one."""
        if self.mode != "auto" or not self.allowed:
            return
        if not self.use_compiled and self.eager_seconds is None:
            self.eager_seconds = seconds
            projected = seconds * epochs_left
            if projected > AUTO_COMPILE_MIN_SECONDS:
                self.use_compiled = True
                self.log(f"compile: auto: {epochs_left} more eager epochs would take ~{projected:.0f}s; "
                         "compiling the model (the next epoch includes the compile time)")  # fmt: skip
            return
        if self.use_compiled:
            self.compiled_epochs += 1
            if self.compiled_epochs == 2 and seconds >= self.eager_seconds:  # the 1st compiled epoch paid the compile
                self.use_compiled = False
                self.log(f"compile: auto: compiled epoch {seconds:.1f}s vs eager {self.eager_seconds:.1f}s; "
                         "back to eager")  # fmt: skip
            elif self.compiled_epochs == 2:
                self.log(f"compile: auto: compiled epoch {seconds:.1f}s vs eager {self.eager_seconds:.1f}s; keeping it")


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

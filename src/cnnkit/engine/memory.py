"""Will the first training batch fit? An estimate of its memory against what the device has.

:func:`check_fits` is called before any data is read or file written (``cnnkit train`` and
``lr-find`` check their config with it), so ``--image-size 100000`` ends in one line instead
of a multi-terabyte allocation error minutes later. The estimate is shapes only: the model
is built and run on PyTorch's ``meta`` device, which allocates nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# Bytes per float32 value, and float32 copies of each trained parameter held while training:
# weight, gradient and two optimizer moments (Adam; SGD with momentum keeps one: an upper bound).
_FLOAT = 4
_COPIES_PER_PARAM = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step of the first batch needs, by part.

    Attributes:
        inputs: the input batch (float32).
        activations: what the forward keeps for the backward pass (each layer's output; with a
            frozen backbone only the largest one, as nothing is kept there).
        parameters: weights, gradients and optimizer state.
    """

    inputs: int
    activations: int
    parameters: int

    @property
    def total(self) -> int:
        return self.inputs + self.activations + self.parameters


def estimate(build: Callable[[], nn.Module], batch: int, chans: int, side: int, *, frozen: bool = False,
             half: bool = False) -> MemoryEstimate:
    """The memory of one training step of ``batch`` images ``chans x side x side`` through the
    model ``build()`` makes (called under ``torch.device("meta")``: nothing is allocated).

    Activations are counted as the output of every leaf module but in-place ones (an upper
    bound: some outputs are freed early), in 16-bit values when ``half`` (mixed precision),
    and with ``frozen`` only the largest one (nothing is kept for the backward). A model that
    cannot run on the meta device (your own code may not) counts its parameters only, or nothing.
    """
    inputs = batch * chans * side * side * _FLOAT
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # noqa: BLE001 (a model the meta device cannot build: the input batch alone)
        return MemoryEstimate(inputs, 0, 0)
    params = sum(p.numel() for p in model.parameters()) * _FLOAT * _COPIES_PER_PARAM
    sizes: list[int] = []
    leaves = [m for m in model.modules() if not any(True for _ in m.children()) and not getattr(m, "inplace", False)]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(_numel(out))) for m in leaves]
    try:
        with torch.no_grad():
            model.train()(torch.empty(batch, chans, side, side, device="meta"))
    except Exception:  # noqa: BLE001 (shape errors are reported by model creation itself, with advice)
        sizes = []
    finally:
        for hook in hooks:
            hook.remove()
    kept = (max(sizes, default=0) * 2) if frozen else sum(sizes)
    return MemoryEstimate(inputs, kept * (_FLOAT // 2 if half else _FLOAT), params)


def _numel(out: object) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel()
    if isinstance(out, (tuple, list)):
        return sum(_numel(o) for o in out)
    return 0


def available_bytes(device: torch.device) -> int | None:
    """Memory free for training on ``device``: the GPU's free memory, or the machine's available
    RAM (psutil when installed, else ``/proc/meminfo``, else ``os.sysconf``); None when unknown
    (Apple MPS shares memory in ways no call reports)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human(size: float) -> str:
    """``4.8 TB``, ``512 MB``: decimal units, as disks and ``free -h --si`` count."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.0f} {unit}" if unit in ("B", "kB") else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} PB"

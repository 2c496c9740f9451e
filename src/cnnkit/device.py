"""Devices, seeds and mixed precision: the runtime switches of a run.

Training (:mod:`cnnkit.engine`) and serving (:mod:`cnnkit.inference`) both need them, so they
sit beside the engine, not in it: serving never reaches the engine.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from cnnkit.config import AMP_MODES, SWITCH_MODES
from cnnkit.errors import UsageError, unknown_name


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but Apple MPS is not available; use --device cpu")
    return device


def data_device(device: torch.device) -> torch.device:
    """Where in-memory datasets keep their tensors: on the GPU when training there (batches
    never cross PCIe), else on the CPU."""
    return device if device.type == "cuda" else torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def amp_dtype(
    mode: str, device: torch.device, *, training: bool = False, deterministic: bool = False
) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (None: full precision).

    ``auto`` means bf16 on CUDA GPUs that support it, for training and evaluation alike;
    and bf16 for *training* on CPUs with bf16 matrix units (Intel AMX), where it measured
    3.2x (CifarCNN) at unchanged accuracy per epoch, while evaluation there stays in
    float32 so that ``cnnkit eval``, reports and ``Predictor`` give the same logits. Other
    CPUs emulate bf16 slowly, and ``deterministic`` runs on the CPU keep float32 (bit-exact
    reruns are the point of that mode), so ``auto`` is float32 there.
    """
    if mode not in AMP_MODES:
        raise UsageError(f"unknown amp mode {mode!r}; valid: {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        if device.type == "cpu" and training and not deterministic and cpu_has_bf16_matrix_units():
            return torch.bfloat16
        return None
    return torch.bfloat16 if mode == "bf16" else torch.float16


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The x86 CPU feature flags Linux lists in ``/proc/cpuinfo`` (``avx2``, ``amx_bf16``...),
    or None where there are none to read (not Linux, or not x86: ARM lists "Features")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            lines = [line for line in handle if line.startswith("flags")]
    except OSError:
        return None
    return frozenset(flag for line in lines for flag in line.split(":", 1)[-1].split()) if lines else None


# The x86 features that decide CPU training speed, by the name people know them and the flag Linux lists.
CPU_FEATURES = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX-512 bf16": "avx512_bf16", "AMX": "amx_bf16"}


def cpu_features() -> dict[str, bool]:
    """Which of :data:`CPU_FEATURES` this CPU advertises (all False where no flags can be read)."""
    flags = cpu_flags() or frozenset()
    return {name: flag in flags for name, flag in CPU_FEATURES.items()}


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU advertises AMX-BF16 tiles (the ``amx_bf16`` flag).

    Only such CPUs run bf16 convolutions and matrix products faster than float32;
    ``torch``'s own "bf16 supported" check is also true where bf16 is emulated.
    """
    return "amx_bf16" in (cpu_flags() or ())


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast context, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def denormals_as_zero() -> Iterator[None]:
    """Inside the block, float32 and float64 denormals count as zero (x86 FTZ/DAZ), then the
    calling thread's previous mode is back.

    Adam with L2 weight decay leaves a trained CifarCNN with 13 % of its weights below
    float32's smallest normal number, where an x86 core runs up to 100-fold slower:
    flushing them made ``cnnkit eval`` of such a run 1.4x faster and its training steps
    1.05x, top-1 unchanged (2-core Xeon with AMX, docs/benchmarks.md). Enter it before the
    first parallel tensor operation: OpenMP threads take the mode of the thread that starts
    them, and keep it.
    """
    was_on = sys.float_info.min / 2 == 0.0  # a denormal double rounds to zero only under FTZ
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


# ----------------------------------------------------------------------------- memory layout


def check_switch(name: str, mode: str) -> str:
    """``mode`` itself when it is auto/on/off; else a UsageError naming the flag."""
    if mode not in SWITCH_MODES:
        raise unknown_name(f"--{name} mode", mode, SWITCH_MODES)
    return mode


def use_channels_last(mode: str, device: torch.device) -> bool:
    """Whether to train in channels-last: ``on``, ``off``, or ``auto`` (CUDA only)."""
    check_switch("channels-last", mode)
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def to_layout(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """``model`` moved (in place) to ``device``, its 4-D weights in channels-last memory format
    when ``channels_last``; training, validation and ``cnnkit eval`` all place it this way."""
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)

"""What every benchmark prints about the machine it ran on (imported by the bench scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
import torchvision

import cnnkit
from cnnkit.engine.device import cpu_features
from cnnkit.engine.speed import cpp_compiler


def core_count() -> int:
    """CPUs this process may run on (affinity masks and containers can give fewer than the box has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_lines(threads: int) -> list[str]:
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        f"CPU: {cpu_model()}  ({core_count()} usable cores of {os.cpu_count()}; {platform.machine()})",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"cnnkit {cnnkit.__version__}, Python {platform.python_version()}; torch threads: {threads}",
        # Other work on the machine inflates both sides' times; the load says how busy it was.
        f"load average at start (1/5/15 min): {load}",
    ]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    return lines


def cpu_feature_line() -> str:
    """The CPU features that decide training speed, the kernels torch picked and inductor's C++ compiler."""
    seen = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in cpu_features().items())
    compiler = cpp_compiler()
    return (f"CPU features: {seen}; torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}; "
            f"C++ compiler for torch.compile: {compiler or 'none found'}")

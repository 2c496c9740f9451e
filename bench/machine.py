"""What every benchmark prints about the machine it ran on (imported by the bench scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
import torchvision

import cnnkit
from cnnkit.device import cpu_features, cpu_flags
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


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def fp32_peak(cores: int) -> tuple[float | None, str]:
    """This CPU's theoretical float32 peak in GFLOP/s (None where unknown) and how it was reckoned.

    cores x FMA units per core x float32 lanes per unit x 2 FLOP per FMA x clock. The lanes come
    from the vector width the FMA units really have: AMD's Zen 4 (family 25, model >= 0x10)
    runs AVX-512 on two 256-bit FMA pipes (8 lanes each, an AVX-512 FMA takes two of them);
    Zen 5 (family 26) has 512-bit pipes; Intel server cores with AVX-512 have two 512-bit FMA
    units (some Silver/Bronze parts one: then this overstates by 2x); AVX2-only cores two
    256-bit units. The clock is /proc/cpuinfo's "cpu MHz" (the nominal clock under a
    hypervisor; boost clocks, where the host allows them, raise the real peak).
    """
    vendor, family, model = _cpuinfo_field("vendor_id"), _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    mhz = _cpuinfo_field("cpu MHz")
    flags = cpu_flags() or frozenset()
    if mhz is None or family is None or model is None or "fma" not in flags:
        return None, "theoretical float32 peak: unknown (no /proc/cpuinfo clock or no FMA)"
    family_n, model_n, clock = int(family), int(model), float(mhz) / 1000
    if vendor == "AuthenticAMD" and family_n == 25:
        units, lanes, why = 2, 8, "Zen 3/4: two 256-bit FMA pipes (AVX-512 is double-pumped on them)"
    elif vendor == "AuthenticAMD" and family_n >= 26:
        units, lanes, why = 2, 16, "Zen 5: two 512-bit FMA pipes"
    elif "avx512f" in flags:
        units, lanes, why = 2, 16, "AVX-512 server core: two 512-bit FMA units (assumed)"
    else:
        units, lanes, why = 2, 8, "AVX2 core: two 256-bit FMA units (assumed)"
    peak = cores * units * lanes * 2 * clock
    return peak, (f"theoretical float32 peak: {cores} cores x {units} FMA units x {lanes} lanes x 2 FLOP x "
                  f"{clock:.2f} GHz = {peak:.0f} GFLOP/s ({why}; clock from /proc/cpuinfo, family {family_n} "
                  f"model {model_n:#x})")  # fmt: skip


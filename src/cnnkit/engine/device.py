"""The engine's name for :mod:`cnnkit.device` (devices, seeds, mixed precision), which
training and serving share; the functions are defined there, once."""

from cnnkit.device import (
    AMP_MODES,
    CPU_FEATURES,
    amp_dtype,
    autocast,
    cpu_features,
    cpu_flags,
    cpu_has_bf16_matrix_units,
    data_device,
    denormals_as_zero,
    resolve_device,
    seed_everything,
)

__all__ = [
    "AMP_MODES",
    "CPU_FEATURES",
    "amp_dtype",
    "autocast",
    "cpu_features",
    "cpu_flags",
    "cpu_has_bf16_matrix_units",
    "data_device",
    "denormals_as_zero",
    "resolve_device",
    "seed_everything",
]

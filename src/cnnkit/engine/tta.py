"""The engine's name for :mod:`cnnkit.tta` (test-time augmentation), which training's
validation and serving share; the functions are defined there, once."""

from cnnkit.tta import TTA_MODES, check_tta, combine_views, shift, suggested_tta, tta_logits, tta_views

__all__ = ["TTA_MODES", "check_tta", "combine_views", "shift", "suggested_tta", "tta_logits", "tta_views"]

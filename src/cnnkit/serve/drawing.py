"""Turning a drawing into an MNIST-style digit, as the MNIST digits themselves were made.

LeCun et al. took NIST's black-on-white scans, scaled each digit to fit a 20x20 box
keeping its aspect ratio (anti-aliased, hence the grey levels), and placed it in a 28x28
field so that the centre of mass of its pixel intensities sits at the field's centre.
A model trained on MNIST only recognises drawings prepared the same way: a digit drawn
small in a corner of a 280x280 canvas and merely resized to 28x28 is a few grey pixels
it has never seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from cnnkit.data.folder import to_mode
from cnnkit.errors import UsageError

INK_THRESHOLD = 32  # of 255: fainter (inverted) pixels are noise, not strokes, for the bounding box


def mnist_style(
    image: Any, *, size: int = 28, box: int = 20, threshold: int = INK_THRESHOLD
) -> Image.Image:
    """A drawing as an MNIST digit: a white digit on black, ``size`` x ``size``, greyscale.

    The drawing is composited over white (transparent canvases), made greyscale and
    inverted (white ink on black), cropped to the bounding box of its ink (pixels darker
    than ``threshold`` after inversion are ignored for the box, so faint specks do not
    stretch it), scaled so that its longer side is ``box`` pixels keeping the aspect ratio
    (bilinear, anti-aliased), and pasted into a black ``size`` x ``size`` image shifted by
    whole pixels so that the intensity centre of mass lands within half a pixel of
    ``(size / 2, size / 2)`` in pixel-index coordinates (row, column of pixel centres,
    0 to ``size - 1``): (14, 14) for 28x28. That is MNIST's own convention, measured on
    its digits (mean centre of mass 14.0, 14.0, 90 % within 0.45 px), half a pixel below
    and right of the geometric centre 13.5. The shift is limited so the digit stays whole
    inside the image.

    Args:
        image: dark strokes on a white or transparent background: a PIL image of any mode,
            or a NumPy array ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` (uint8, or floats
            in [0, 1]).
        size: side of the output (28 for MNIST).
        box: side of the box the digit is scaled into (20 for MNIST).
        threshold: ink level (0-255, after inversion) below which a pixel is background
            when finding the bounding box.

    Returns:
        An ``L`` image ``size`` x ``size``: white digit on black.

    Raises:
        UsageError: nothing is drawn, or the input is not an image.
    """
    ink = 255.0 - np.asarray(_grey(image), dtype=np.float32)  # [H, W], 255 = full ink
    rows = np.flatnonzero((ink > threshold).any(axis=1))
    cols = np.flatnonzero((ink > threshold).any(axis=0))
    if rows.size == 0:
        raise UsageError("draw a digit first: the canvas is empty")
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # [h, w]
    scale = box / max(crop.shape)
    width, height = (max(1, round(side * scale)) for side in crop.shape[::-1])
    small = Image.fromarray(crop.astype(np.uint8)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    digit = np.asarray(small, dtype=np.float32)  # [height, width]
    row, col = centre_of_mass(digit)
    middle = size / 2  # MNIST's centre of mass, see above
    top = int(np.clip(round(middle - row), 0, size - height))
    left = int(np.clip(round(middle - col), 0, size - width))
    out = np.zeros((size, size), dtype=np.uint8)
    out[top : top + height, left : left + width] = np.clip(np.rint(digit), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def centre_of_mass(array: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted mean (row, column) of a 2-D array, in pixel-index coordinates.

    The geometric centre of an all-equal array is ``((H - 1) / 2, (W - 1) / 2)``.

    Raises:
        UsageError: the array sums to zero (no mass).
    """
    weights = np.asarray(array, dtype=np.float64)
    total = weights.sum()
    if total <= 0:
        raise UsageError("draw a digit first: the canvas is empty")
    rows = np.arange(weights.shape[0], dtype=np.float64)
    cols = np.arange(weights.shape[1], dtype=np.float64)
    return float(weights.sum(axis=1) @ rows / total), float(weights.sum(axis=0) @ cols / total)


def _grey(image: Any) -> Image.Image:
    """A PIL image or array as 8-bit greyscale, transparent areas composited over white."""
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            if (
                not np.issubdtype(array.dtype, np.floating)
                or array.size == 0
                or array.min() < 0
                or array.max() > 1
            ):
                raise UsageError(
                    f"a drawing array must be uint8, or floats in [0, 1]; got {array.dtype}"
                )
            array = np.rint(array * 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise UsageError(
                f"a drawing must be [H, W], [H, W, 3] or [H, W, 4]; got shape {array.shape}"
            )
        image = Image.fromarray(np.ascontiguousarray(array))
    if not isinstance(image, Image.Image):
        raise UsageError(
            f"a drawing must be a PIL image or a NumPy array, not {type(image).__name__}"
        )
    return to_mode(image, "L")

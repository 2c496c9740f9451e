"""Decoding one image file: :func:`load_image`, :func:`to_mode` and :class:`ImageLoadError`.

This module owns turning a file into an upright 8-bit ``L`` or ``RGB`` PIL image (EXIF
orientation, transparency over white, 16-bit greyscale scaled rather than clipped), and
what a file that cannot be decoded raises: an :class:`ImageLoadError` whose ``kind`` is
one of :data:`LOAD_ERROR_KINDS` (:func:`decode_error` maps decoder exceptions to it;
:func:`refuse_bomb` refuses decompression bombs before decoding). PIL's
``LOAD_TRUNCATED_IMAGES`` is overridden while a file is read, so truncation is found.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cnnkit.errors import DataError, unknown_name

LOAD_ERROR_KINDS: tuple[str, ...] = (
    "zero-bytes", "not-an-image", "truncated", "corrupt", "decompression-bomb", "missing", "unreadable",
)  # fmt: skip
"""What :attr:`ImageLoadError.kind` can be, for reports that group bad files."""


class ImageLoadError(DataError):
    """An image file that cannot be decoded.

    Attributes:
        path: the file.
        reason: short reason, e.g. ``zero bytes`` or ``truncated or corrupt: ...``.
        kind: one of :data:`LOAD_ERROR_KINDS`, e.g. ``truncated``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"cannot load image {os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason
        self.kind = kind


_truncation_lock = threading.Lock()
_strict_loads = 0
_saved_truncated_flag = False


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL raise on truncated files even if someone set LOAD_TRUNCATED_IMAGES.

    The flag is a PIL module global; a counter lets concurrent loads in threads share one
    override and restores the caller's setting when the last load ends.
    """
    global _strict_loads, _saved_truncated_flag
    with _truncation_lock:
        if _strict_loads == 0:
            _saved_truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_loads += 1
    try:
        yield
    finally:
        with _truncation_lock:
            _strict_loads -= 1
            if _strict_loads == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _saved_truncated_flag


def load_image(path: str | os.PathLike[str], mode: str) -> Image.Image:
    """Decode one image file into an 8-bit ``L`` or ``RGB`` image, upright.

    EXIF orientation is applied; transparent pixels (RGBA, LA, palette or tRNS
    transparency) are composited over white; 16-bit and 32-bit greyscale is scaled to
    8 bits rather than clipped; CMYK and other modes are converted.

    Args:
        path: the image file.
        mode: ``"L"`` (greyscale) or ``"RGB"``.

    Returns:
        A fully loaded image of the given mode (the file is closed).

    Raises:
        ImageLoadError: the file is missing, empty, not an image, truncated or corrupt, or
            a decompression bomb (more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` allows).
            Recording it is the caller's (a dataset's own :class:`~cnnkit.data.folder.skipped.SkipLog`).
        UsageError: ``mode`` is not ``L`` or ``RGB``.
    """
    if mode not in ("L", "RGB"):
        raise unknown_name("image mode", mode, ["L", "RGB"])
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageLoadError(path, "zero bytes", "zero-bytes")
        with _strict_truncation(), Image.open(path) as image:
            refuse_bomb(path, image)
            image.load()
            return to_mode(_upright(image), mode)
    except ImageLoadError:
        raise
    except Exception as error:
        raise decode_error(path, error) from error


def refuse_bomb(path: str, image: Image.Image) -> None:
    """Raise for an opened (not yet decoded) image of more than ``MAX_IMAGE_PIXELS`` pixels.

    PIL itself only warns between 1x and 2x its limit and raises above 2x; a file that
    size is refused here before any memory goes to its pixels.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise ImageLoadError(
            path, f"decompression bomb: {image.width}x{image.height} is more than "
            f"PIL.Image.MAX_IMAGE_PIXELS ({limit:,}) pixels", "decompression-bomb",
        )  # fmt: skip


def decode_error(path: str, error: Exception) -> ImageLoadError:
    """The :class:`ImageLoadError` (reason and kind) for an exception raised while decoding."""
    if isinstance(error, Image.DecompressionBombError):
        return ImageLoadError(path, f"decompression bomb: {error}", "decompression-bomb")
    if isinstance(error, UnidentifiedImageError):
        return ImageLoadError(path, "not an image (no decoder recognises it)", "not-an-image")
    if isinstance(error, FileNotFoundError):
        return ImageLoadError(path, "file not found", "missing")
    if isinstance(error, OSError) and error.errno is not None:  # the OS refused: a folder, permissions
        return ImageLoadError(path, f"cannot read the file: {error.strerror or error}", "unreadable")
    if isinstance(error, OSError):  # PIL's decoders report truncated and broken data as OSError
        kind = "truncated" if "truncat" in str(error).lower() else "corrupt"
        return ImageLoadError(path, f"truncated or corrupt: {error}", kind)
    # plugins also raise SyntaxError, ValueError, struct.error, even MemoryError
    return ImageLoadError(path, f"cannot decode: {type(error).__name__}: {error}", "corrupt")


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not cost the whole image
        return image


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Any PIL mode as 8-bit ``L`` or ``RGB``: transparency over white, 16-bit scaled."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image = _over_white(image)
    elif image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit_grey(image)
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, P, 1: PIL converts all of them to RGB
    return image if image.mode == mode else image.convert(mode)


def _over_white(image: Image.Image) -> Image.Image:
    """Composite a transparent image over white: transparent pixels carry no colour of
    their own, and black (what a plain convert gives) misleads a classifier."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """Scale 16-bit (``I;16*``), 32-bit (``I``) or float (``F``) greyscale to ``L``.

    PIL's own convert clips at 255, which turns most 16-bit photos white. ``I;16`` is
    divided by 257 (65535 -> 255); ``I`` and ``F`` are scaled by their range: values up to
    255 (or up to 1.0 for ``F``) are taken as already 8-bit (or unit) data, up to 65535 as
    16-bit, anything larger by the image's maximum.
    """
    if image.mode.startswith("I;16"):
        full_scale = 65535.0
    else:
        low, high = image.getextrema()
        if image.mode == "F" and 0.0 <= low and high <= 1.0:
            full_scale = 1.0
        elif high <= 255:
            full_scale = 255.0
        elif high <= 65535:
            full_scale = 65535.0
        else:
            full_scale = float(high)
    wide = image.convert("F")
    return wide.point(lambda v: v * (255.0 / full_scale)).convert("L")

"""Bounded memory for image input: a pixel cap checked from the header, before decoding.

Every reader of radiographs and masks (:func:`osteo_jax.data.imageio.read_image`,
:func:`osteo_jax.data.dicom.read_dicom`, :func:`osteo_jax.data.folder.read_png`) learns the
image size from the file header (Pillow opens lazily; pydicom reads Rows and Columns before
the pixel data) and refuses an image of more than ``max_pixels`` pixels with a
:class:`~osteo_jax.data.errors.DatasetError` that names the file and its size. A 310 KB PNG can
declare 12000 x 12000 pixels and would take gigabytes once decoded and converted to float.

The default cap, :data:`MAX_IMAGE_PIXELS` (50 MP), is above the largest real radiographs (a
43 x 43 cm flat-panel detector at 0.1 mm is 4300 x 4300 = 18.5 MP; a mammogram about 30 MP).
Pillow's own decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 MP warns and
twice that raises) fires during ``Image.open`` itself; both its warning and its error are turned
into the same message here.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Iterator

from PIL import Image

from osteo_jax.data.errors import DatasetError

__all__ = ["MAX_IMAGE_PIXELS", "check_pixel_count", "open_image_lazily"]

MAX_IMAGE_PIXELS = 50_000_000
"""Default pixel cap (rows x columns x frames) of every image reader: 50 MP."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_pixel_count(
    path: str | os.PathLike, rows: int, cols: int, max_pixels: int | None, *, frames: int = 1
) -> None:
    """Raises when an image declares more than ``max_pixels`` pixels (None: no cap).

    Args:
      path: the file, for the message.
      rows: declared height.
      cols: declared width.
      max_pixels: the cap on ``rows * cols * frames``; None disables it.
      frames: declared frame count.

    Raises:
      DatasetError: ``{path}: image of {cols} x {rows} pixels ({n} MP) exceeds the pixel cap of
        {cap} MP ...``.
    """
    n = int(rows) * int(cols) * max(int(frames), 1)
    if max_pixels is not None and n > max_pixels:
        size = f"{cols} x {rows}" + (f" x {frames} frames" if frames > 1 else "")
        raise DatasetError(
            f"{path}: image of {size} pixels ({n / 1e6:.1f} MP) exceeds the pixel cap of "
            f"{max_pixels / 1e6:.1f} MP (max_pixels, CLI --max-megapixels); refused before "
            "decoding"
        )


@contextlib.contextmanager
def open_image_lazily(
    path: str | os.PathLike, max_pixels: int | None, what: str = "image"
) -> Iterator[Image.Image]:
    """``Image.open`` (header only) with the pixel cap applied before any pixel is decoded.

    Args:
      path: a PNG or TIFF file.
      max_pixels: the cap (None: only Pillow's own decompression-bomb limit applies).
      what: kind of file in messages (``"PNG"``, ``"TIFF"``, ``"image"``).

    Yields:
      The lazily opened Pillow image, closed on exit.

    Raises:
      DatasetError: missing or unreadable file, or an image over the cap (or over Pillow's
        decompression-bomb limit); the message names the file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        size = _png_size(path)
        if size is not None:
            check_pixel_count(path, size[1], size[0], max_pixels)
        raise DatasetError(
            f"{path}: image exceeds Pillow's decompression-bomb limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS); refused before decoding ({e})"
        ) from e
    except OSError as e:  # includes PIL.UnidentifiedImageError
        raise DatasetError(f"{path}: unreadable {what} ({e})") from e
    with im:
        width, height = im.size
        check_pixel_count(path, height, width, max_pixels, frames=getattr(im, "n_frames", 1))
        yield im


def _png_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR chunk, or None when it is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])

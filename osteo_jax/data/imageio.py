"""One reader for radiographs in DICOM, PNG or TIFF, and resampling to a common pixel spacing.

:func:`read_image` recognises the format by its first bytes (the ``DICM`` marker at byte 128, the
PNG signature, a TIFF byte-order mark), falling back to the ``.dcm`` extension, and returns
``[H, W]`` float32 display values in ``[0, 1]`` with bone bright plus a metadata dict:

* DICOM: :func:`osteo_jax.data.dicom.read_dicom` (Modality LUT, VOI, MONOCHROME1 inversion).
* PNG and TIFF (Pillow), single-channel single-frame only. 8-bit images are divided by 255.
  16-bit images are divided by ``2**bits_stored - 1``, with ``bits_stored`` taken from the
  argument, else from the PNG ``sBIT`` chunk, else ``default_bits_stored``, else 16 (the dtype
  maximum). The synthetic generator writes ``sBIT`` into its 12-bit PNGs; folders written
  before it did carry none, so pass the folder's ``bits_stored`` for them
  (:meth:`~osteo_jax.data.folder_index.DatasetIndex.read_image` does). A value above
  that range is an error. 32-bit float TIFFs must already lie in ``[0, 1]``. TIFF
  ``WhiteIsZero`` (the MONOCHROME1 of TIFF) is inverted for 16-bit and float images; Pillow
  already inverts 8-bit ones. PNG/TIFF resolution tags are not trusted as detector spacing:
  ``pixel_spacing_mm`` is None.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from osteo_jax.data.dicom import dicom_shape, read_dicom
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.limits import MAX_IMAGE_PIXELS, open_image_lazily

__all__ = ["read_image", "resample_to_spacing"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_MARKS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_TIFF_PHOTOMETRIC = 262  # 0 = WhiteIsZero, 1 = BlackIsZero


def read_image(
    path: str | os.PathLike,
    *,
    bits_stored: int | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    default_bits_stored: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Reads a grayscale radiograph as float32 display values in ``[0, 1]`` (bone bright).

    Args:
      path: a DICOM, PNG or TIFF file.
      bits_stored: significant bits of 16-bit PNG/TIFF values (ignored for DICOM and 8-bit
        images, which carry their own range).
      max_pixels: refuse an image of more pixels than this, judged from the header before
        decoding (None: no cap).
      default_bits_stored: significant bits of a 16-bit PNG/TIFF that declares none (no
        ``bits_stored`` argument, no PNG ``sBIT``) instead of 16: e.g. those of the dataset a
        model was trained on, so that its stored grey scale is read the same way.

    Returns:
      ``(image, meta)``: ``image`` is ``[H, W]`` float32 in ``[0, 1]``; ``meta`` has at least
      ``format``, ``path``, ``rows``, ``cols``, ``bits_stored`` and ``pixel_spacing_mm``
      (``(row, col)`` mm or None). See :func:`~osteo_jax.data.dicom.read_dicom` for DICOM keys.

    Raises:
      DatasetError: missing, unreadable or unsupported file, larger than ``max_pixels``, not
        single-channel single-frame, values outside the declared range, or non-finite values;
        the message names the file.
    """
    p = Path(path)
    fmt = _format_of(p)
    if fmt == "dicom":
        return read_dicom(p, max_pixels=max_pixels)
    return _read_pil(p, fmt, bits_stored, max_pixels, default_bits_stored)


def _format_of(path: Path) -> str:
    """``"dicom"``, ``"png"`` or ``"tiff"`` from the file's first bytes (or a DICOM suffix)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise DatasetError(f"{path}: unreadable ({e})") from e
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom"):
        return "dicom"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head[:4] in _TIFF_MARKS:
        return "tiff"
    raise DatasetError(f"{path}: unsupported image format (expected DICOM, PNG or TIFF)")


def image_shape(
    path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> tuple[int, int]:
    """``(rows, cols)`` of a radiograph from its header alone, without decoding the pixels.

    The checks :func:`read_image` makes before decoding: a DICOM, PNG or TIFF file, one frame,
    grayscale, at most ``max_pixels`` pixels. Corrupt pixel data is only found by decoding.

    Raises:
      DatasetError: missing, unreadable or unsupported file, several frames, not grayscale,
        or larger than ``max_pixels``; the message names the file.
    """
    p = Path(path)
    if _format_of(p) == "dicom":
        return dicom_shape(p, max_pixels=max_pixels)
    with open_image_lazily(p, max_pixels) as im:
        frames = getattr(im, "n_frames", 1)
        if frames != 1:
            raise DatasetError(f"{path}: {frames} frames/pages; expected a single image")
        if im.mode not in ("L", "I", "F", *_UINT16_MODES):
            raise DatasetError(
                f"{path}: expected a single-channel grayscale image, got mode {im.mode!r}"
            )
        return int(im.size[1]), int(im.size[0])


def _read_pil(
    path: Path,
    fmt: str,
    bits_stored: int | None,
    max_pixels: int | None,
    default_bits_stored: int | None = None,
) -> tuple[np.ndarray, dict]:
    try:
        with open_image_lazily(path, max_pixels, fmt.upper()) as im:
            frames = getattr(im, "n_frames", 1)
            if frames != 1:
                raise DatasetError(f"{path}: {frames} frames/pages; expected a single image")
            im.load()
            mode = im.mode
            white_is_zero = fmt == "tiff" and im.tag_v2.get(_TIFF_PHOTOMETRIC) == 0
            arr = np.array(im)
    except DatasetError:
        raise
    except OSError as e:  # includes PIL.UnidentifiedImageError and truncated data
        raise DatasetError(f"{path}: unreadable {fmt.upper()} ({e})") from e
    if arr.ndim != 2 or mode not in ("L", "I", "F", *_UINT16_MODES):
        raise DatasetError(
            f"{path}: expected a single-channel grayscale image, got mode {mode!r} "
            f"with shape {arr.shape}"
        )
    source = "argument"
    if mode == "L":
        bits, source = 8, "dtype"
    elif mode == "F":
        bits, source = None, None
    elif bits_stored is not None:
        bits = int(bits_stored)
    elif fmt == "png" and (sbit := _png_sbit(path)) is not None:
        bits, source = sbit, "sBIT"
    elif default_bits_stored is not None:
        bits, source = int(default_bits_stored), "default"
    else:
        bits, source = 16, "dtype"

    if mode == "F":
        if not np.isfinite(arr).all():
            raise DatasetError(f"{path}: non-finite values in a float image")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise DatasetError(
                f"{path}: float image values span [{arr.min()}, {arr.max()}]; "
                "expected [0, 1] (the range of a float image is not otherwise known)"
            )
        image = arr.astype(np.float64)
    else:
        if not 1 <= bits <= 16:
            raise DatasetError(f"{path}: bits_stored must be in 1..16, got {bits}")
        top = 2**bits - 1
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > top):
            raise DatasetError(
                f"{path}: values span [{int(arr.min())}, {int(arr.max())}], outside the "
                f"{bits}-bit range [0, {top}] ({source} bits_stored)"
            )
        image = arr.astype(np.float64) / top
    # Pillow inverts 8-bit WhiteIsZero itself ("L;I" raw mode) but not 16-bit or float data.
    if white_is_zero and mode != "L":
        image = 1.0 - image
    meta = {
        "format": fmt,
        "path": str(path),
        "mode": mode,
        "rows": int(arr.shape[0]),
        "cols": int(arr.shape[1]),
        "bits_stored": bits,
        "bits_stored_source": source,
        # Relative to the stored values, as for DICOM.
        "inverted": white_is_zero,
        "photometric_interpretation": "MONOCHROME1" if white_is_zero else "MONOCHROME2",
        "pixel_spacing_mm": None,
        "pixel_spacing_source": None,
    }
    return image.astype(np.float32), meta


def _png_sbit(path: Path) -> int | None:
    """Significant bits of a grayscale PNG from its ``sBIT`` chunk (Pillow does not parse it)."""
    with open(path, "rb") as f:
        f.seek(len(_PNG_SIGNATURE))
        while True:
            header = f.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind == b"sBIT":
                data = f.read(length)
                return int(data[0]) if len(data) == 1 else None
            if kind in (b"IDAT", b"IEND"):
                return None  # sBIT must precede the image data
            f.seek(length + 4, os.SEEK_CUR)  # data and CRC


def resample_to_spacing(
    image: np.ndarray,
    spacing_mm: float | tuple[float, float] | None,
    target_mm: float,
) -> tuple[np.ndarray, dict]:
    """Resamples an image to an isotropic target pixel spacing.

    Shrinking averages areas (a box filter: each output pixel is the area-weighted mean of the
    input pixels it covers, so the image mean is preserved); enlarging interpolates bilinearly.
    The output size is ``round(n * spacing / target)`` per axis, so the achieved spacing
    (``n * spacing / n_out``, reported in the info) can differ slightly from ``target_mm``.

    Args:
      image: ``[H, W]`` float image.
      spacing_mm: the image's ``(row, col)`` or isotropic spacing in mm; None (unknown) returns
        the image unchanged.
      target_mm: wanted spacing in mm.

    Returns:
      ``(image, info)``: the ``[H', W']`` float32 image and ``{"resampled": bool,
      "spacing_mm": (row, col) or None, "scale": (sy, sx) or None, "reason": str}``.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if not (math.isfinite(target_mm) and target_mm > 0):
        raise ValueError(f"target_mm must be positive and finite, got {target_mm}")
    if spacing_mm is None:
        return image, {
            "resampled": False,
            "spacing_mm": None,
            "scale": None,
            "reason": "pixel spacing unknown: image returned unchanged",
        }
    pair = (spacing_mm, spacing_mm) if np.isscalar(spacing_mm) else tuple(spacing_mm)
    if len(pair) != 2 or not all(math.isfinite(float(s)) and float(s) > 0 for s in pair):
        raise ValueError(f"spacing_mm must be positive and finite, got {spacing_mm!r}")
    sy, sx = float(pair[0]), float(pair[1])
    h, w = image.shape
    h_out = max(1, round(h * sy / target_mm))
    w_out = max(1, round(w * sx / target_mm))
    if (h_out, w_out) == (h, w):
        return image, {
            "resampled": False,
            "spacing_mm": (sy, sx),
            "scale": (1.0, 1.0),
            "reason": "already at the target spacing",
        }
    shrink = h_out <= h and w_out <= w
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    out = np.asarray(pil.resize((w_out, h_out), resample=resample), dtype=np.float32)
    return out, {
        "resampled": True,
        "spacing_mm": (h * sy / h_out, w * sx / w_out),
        "scale": (h_out / h, w_out / w),
        "reason": "box (area) filter" if shrink else "bilinear interpolation",
    }


def isotropic_spacing(meta: dict) -> float | None:
    """One pixel spacing (mm) from :func:`read_image` metadata, or None when unknown.

    DICOM gives ``(row, col)``; their mean is returned (radiographs are square-pixelled; a
    non-square pixel would need :func:`resample_to_spacing` first).
    """
    value = meta.get("pixel_spacing_mm")
    if value is None:
        return None
    return float(np.mean(np.atleast_1d(np.asarray(value, np.float64))))

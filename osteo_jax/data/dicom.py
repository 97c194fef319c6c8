"""DICOM radiographs in and out: display-ready grayscale (bone bright) and a reproducible writer.

Reading follows the DICOM grayscale pipeline (PS3.3 C.11, PS3.4 N.2.1.1)::

    stored values -> Modality LUT -> VOI LUT or window -> [0, 1] -> Presentation inversion

* Modality LUT: Rescale Slope/Intercept or a Modality LUT Sequence
  (:func:`pydicom.pixels.apply_modality_lut`).
* VOI: the first VOI LUT Sequence item, else the first Window Center/Width pair (with its VOI LUT
  Function), as chosen by :func:`pydicom.pixels.apply_voi_lut`; its output range maps to
  ``[0, 1]``. Without either, the window is taken from the image's own values: the
  :data:`PIXEL_RANGE_PERCENTILES` (0.5th and 99.5th) percentiles of the Modality LUT output map
  linearly to ``[0, 1]``, values beyond them clipped (``voi = "pixel_range"``). The whole
  stored range would be the content-independent choice, but detectors rarely fill it (a 16-bit
  file holding values 0-280 came out nearly black), and the percentiles keep a few hot or dead
  pixels from setting the contrast. An image whose percentiles coincide (nearly constant) falls
  back to its minimum and maximum, and a constant one to the stored range (``"stored_range"``,
  ``Bits Stored`` through the Modality LUT).
* Inversion: the output is inverted (``1 - x``) exactly once when the Photometric Interpretation
  is ``MONOCHROME1`` *or* the Presentation LUT Shape is ``INVERSE``; otherwise not. The DX, MG
  and IO image modules require ``INVERSE`` with ``MONOCHROME1`` and ``IDENTITY`` with
  ``MONOCHROME2``: the shape restates the inversion that MONOCHROME1 already implies, so applying
  both (e.g. inverting MONOCHROME1 and then :func:`pydicom.pixels.apply_presentation_lut`) would
  invert twice and make bone dark. ``INVERSE`` on a MONOCHROME2 image flips its meaning (a
  request to display it inverted); ``IDENTITY`` on MONOCHROME1 does not undo the photometric
  inversion ("an identity transformation ... other than to account for the value of Photometric
  Interpretation", PS3.3 C.8.11.7). pydicom itself never inverts MONOCHROME1.

Compressed transfer syntaxes are decoded by pydicom's plugins through ``pylibjpeg`` (pinned in
``pyproject.toml``): ``pylibjpeg-openjpeg`` for JPEG 2000 (lossless and lossy, .4.90/.91) and
``pylibjpeg-libjpeg`` for JPEG Baseline, Extended, Lossless and Lossless SV1 (.4.50/.51/.57/.70)
and JPEG-LS lossless and near-lossless (.4.80/.81); RLE and Deflate need no plugin.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.limits import MAX_IMAGE_PIXELS, check_pixel_count

__all__ = ["PIXEL_RANGE_PERCENTILES", "read_dicom", "write_dicom"]

_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PIXEL_RANGE_PERCENTILES = (0.5, 99.5)
"""Percentiles of the Modality LUT output mapped to 0 and 1 when a file has no VOI."""


def read_dicom(
    path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, dict]:
    """Reads a single-frame grayscale DICOM image as display values with bone bright.

    Args:
      path: a DICOM Part 10 file (with the ``DICM`` preamble), uncompressed or compressed with a
        transfer syntax that pydicom's installed plugins decode.
      max_pixels: refuse an image whose Rows x Columns (x Number of Frames) exceeds this,
        before the pixel data is decoded (:mod:`osteo_jax.data.limits`; None: no cap).

    Returns:
      ``(image, meta)``: ``image`` is ``[H, W]`` float32 in ``[0, 1]`` after the Modality LUT,
      the VOI transform and the presentation inversion (module docstring); ``meta`` holds
      ``photometric_interpretation``, ``presentation_lut_shape`` (or None), ``inverted``,
      ``voi`` (``"lut"``, ``"window"``, ``"pixel_range"`` or ``"stored_range"``),
      ``bits_stored``, ``rows``, ``cols``, ``pixel_spacing_mm`` (``(row, col)`` in mm or
      None), ``pixel_spacing_source``, ``transfer_syntax_uid``, ``transfer_syntax``,
      ``laterality``, ``sop_instance_uid``, ``modality``, ``study_instance_uid``,
      ``patient_id``, ``body_part_examined`` (header strings, None when absent or empty),
      ``format`` (``"dicom"``) and ``path``.

    Raises:
      DatasetError: missing file, not DICOM, truncated, no or undecodable pixel data, larger
        than ``max_pixels``, not a single-frame single-channel MONOCHROME image, or non-finite
        values; the message names the file.
    """
    ds = _read_dataset(path)
    _, _, pi = _geometry(ds, path, max_pixels)
    if "PixelData" not in ds:
        raise DatasetError(f"{path}: float pixel data is not supported (integer Pixel Data only)")
    if "BitsStored" not in ds:
        raise DatasetError(f"{path}: Bits Stored is missing")
    bits = int(ds.BitsStored)
    try:
        stored = ds.pixel_array
    except Exception as e:  # decoders raise many types (ValueError, RuntimeError, ...)
        raise DatasetError(f"{path}: cannot decode pixel data ({type(e).__name__}: {e})") from e
    if stored.ndim != 2:
        raise DatasetError(f"{path}: expected a 2-D image, decoded shape {stored.shape}")

    try:
        image, voi = _display(stored, ds, bits)
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from e
    except (ValueError, TypeError, NotImplementedError, AttributeError, IndexError) as e:
        raise DatasetError(f"{path}: invalid grayscale transform ({e})") from e

    shape = ds.get("PresentationLUTShape")
    shape = str(shape).strip().upper() if shape else None
    inverted = pi == "MONOCHROME1" or shape == "INVERSE"
    if inverted:
        image = 1.0 - image
    spacing, source = _spacing(ds)
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    meta = {
        "format": "dicom",
        "path": str(path),
        "photometric_interpretation": pi,
        "presentation_lut_shape": shape,
        "inverted": inverted,
        "voi": voi,
        "bits_stored": bits,
        "rows": int(stored.shape[0]),
        "cols": int(stored.shape[1]),
        "pixel_spacing_mm": spacing,
        "pixel_spacing_source": source,
        "transfer_syntax_uid": str(tsyntax) if tsyntax else None,
        "transfer_syntax": tsyntax.name if tsyntax else None,
        "laterality": _laterality(ds),
        "sop_instance_uid": str(ds.SOPInstanceUID) if ds.get("SOPInstanceUID") else None,
        "modality": str(ds.Modality) if ds.get("Modality") else None,
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "patient_id": _text(ds, "PatientID"),
        "body_part_examined": _text(ds, "BodyPartExamined"),
    }
    return image.astype(np.float32), meta


def _text(ds, keyword: str) -> str | None:
    """A header string, stripped; None when absent or empty."""
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def dicom_shape(
    path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> tuple[int, int]:
    """``(rows, cols)`` of a single-frame grayscale DICOM image from its header alone.

    Raises:
      DatasetError: not DICOM, unreadable header, Rows/Columns missing, several frames or
        samples, not MONOCHROME, or larger than ``max_pixels``; the message names the file.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as e:
        raise DatasetError(f"{path}: not a DICOM file ({e})") from e
    except Exception as e:  # truncated or corrupt element stream
        raise DatasetError(f"{path}: unreadable DICOM ({type(e).__name__}: {e})") from e
    rows, cols, _ = _geometry(ds, path, max_pixels)
    return rows, cols


def _geometry(ds: Dataset, path, max_pixels: int | None) -> tuple[int, int, str]:
    """``(rows, cols, photometric interpretation)`` after the header checks of a readable image."""
    rows, cols = _int_or(ds.get("Rows"), 0), _int_or(ds.get("Columns"), 0)
    if rows < 1 or cols < 1:
        raise DatasetError(f"{path}: Rows/Columns missing or invalid ({rows} x {cols})")
    frames = _int_or(ds.get("NumberOfFrames"), 1)
    check_pixel_count(path, rows, cols, max_pixels, frames=frames)
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if pi not in _GRAYSCALE:
        raise DatasetError(
            f"{path}: photometric interpretation {pi or 'missing'!r} is not grayscale "
            "(expected MONOCHROME1 or MONOCHROME2)"
        )
    spp = _int_or(ds.get("SamplesPerPixel"), 1) or 1
    if spp != 1 or frames != 1:
        raise DatasetError(
            f"{path}: expected one frame with one sample per pixel, got {frames} frame(s) "
            f"with {spp} sample(s) per pixel"
        )
    return rows, cols, pi


def _read_dataset(path: str | os.PathLike) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{path}: file not found")
    # pydicom reports a file cut inside an element only as a warning and drops the element;
    # record warnings so that the error can say so.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(p)
        except InvalidDicomError as e:
            raise DatasetError(f"{path}: not a DICOM file ({e})") from e
        except Exception as e:  # truncated or corrupt element stream
            raise DatasetError(f"{path}: unreadable DICOM ({type(e).__name__}: {e})") from e
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        why = "".join(f"; {w.message}" for w in caught)
        raise DatasetError(f"{path}: no pixel data (missing, or the file is truncated{why})")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ds


def _display(stored: np.ndarray, ds: Dataset, bits: int) -> tuple[np.ndarray, str]:
    """Modality LUT then VOI, scaled so the VOI (or pixel) output range is [0, 1]."""
    values = apply_modality_lut(stored, ds)
    _check_finite(values, "modality LUT output")
    if ds.get("VOILUTSequence") and _valid_voi_lut(ds):
        voi = "lut"
        if not np.issubdtype(values.dtype, np.integer):
            # A VOI LUT indexes integers; a rescale gives float64 holding integers.
            values = np.rint(values).astype(np.int64)
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        item = ds.VOILUTSequence[0]
        n, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        # The LUT's own extremes, not 2**bits - 1: many files declare 16-bit entries that hold
        # 12-bit values.
        lut = apply_voi_lut(np.arange(first, first + n), ds, index=0, prefer_lut=True)
        lo, hi = float(lut.min()), float(lut.max())
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        voi = "window"
        out = apply_voi_lut(values, ds, index=0, prefer_lut=False)
        # +-inf saturate every VOI LUT Function at pydicom's own output range [y_min, y_max].
        lo, hi = apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0, prefer_lut=False)
    else:
        out = values
        voi, (lo, hi) = _pixel_range(values, ds, bits)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
        raise DatasetError(f"degenerate {voi} output range [{lo}, {hi}]")
    image = (np.asarray(out, np.float64) - lo) / (hi - lo)
    _check_finite(image, f"{voi} output")
    return np.clip(image, 0.0, 1.0), voi


def _valid_voi_lut(ds: Dataset) -> bool:
    item = ds.VOILUTSequence[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _pixel_range(values: np.ndarray, ds: Dataset, bits: int) -> tuple[str, tuple[float, float]]:
    """The window of a file without VOI: robust percentiles of its values (module docstring)."""
    v = np.asarray(values, np.float64)
    lo, hi = np.percentile(v, PIXEL_RANGE_PERCENTILES)
    if hi <= lo:
        lo, hi = v.min(), v.max()
    if hi > lo:
        return "pixel_range", (float(lo), float(hi))
    return "stored_range", _stored_range(ds, bits)


def _stored_range(ds: Dataset, bits: int) -> tuple[float, float]:
    """Modality-LUT output over every representable stored value."""
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    if ds.get("ModalityLUTSequence") and bits <= 16:
        grid = np.arange(lo, hi + 1)  # a LUT need not be monotonic
    else:
        grid = np.array([lo, hi])  # rescale is linear
    out = np.asarray(apply_modality_lut(grid, ds), np.float64)
    return float(out.min()), float(out.max())


def _check_finite(x: np.ndarray, what: str) -> None:
    if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(x).all():
        raise DatasetError(f"non-finite values in the {what}")


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, col) spacing in mm from the first valid of PixelSpacing and ImagerPixelSpacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            vals = [float(v) for v in value] if value is not None else []
        except (TypeError, ValueError):
            continue  # malformed DS string
        if len(vals) == 2 and all(math.isfinite(v) and v > 0 for v in vals):
            return (vals[0], vals[1]), keyword
    return None, None


def _laterality(ds: Dataset) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = ds.get(keyword)
        if value is not None and str(value).strip():
            return str(value).strip().upper()
    return None


def _int_or(value, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def write_dicom(
    path: str | os.PathLike,
    image_uint16: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    laterality: str | None = None,
    identifier: str | None = None,
) -> None:
    """Writes a 2-D image as an uncompressed Secondary Capture DICOM (Conversion Type SYN).

    The file is Explicit VR Little Endian, Modality ``DX``, with a VOI window that maps the stored
    range linearly onto the display range, so :func:`read_dicom` returns
    ``image_uint16 / (2**bits_stored - 1)`` for either photometric interpretation. Output is
    byte-for-byte reproducible: no dates or times are written, and the Study, Series and SOP
    Instance UIDs are hashed from ``identifier``.

    Args:
      path: output file.
      image_uint16: ``[H, W]`` uint16 display values, bone bright, in ``[0, 2**bits_stored - 1]``.
      photometric: ``"MONOCHROME2"`` stores the values as given; ``"MONOCHROME1"`` stores
        ``2**bits_stored - 1 - value`` so that the displayed image is the same.
      bits_stored: significant bits (8-16); Bits Allocated is 16.
      pixel_spacing_mm: isotropic spacing or ``(row, col)`` in mm, written as Pixel Spacing (and
        Nominal Scanned Pixel Spacing); None writes neither.
      laterality: ``"L"``, ``"R"`` or None, written as the series Laterality.
      identifier: seed of the UIDs; defaults to the file name without its extension.

    Raises:
      ValueError: a bad argument (shape, dtype, values above the stored range, spacing).
    """
    image = np.asarray(image_uint16)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ValueError(f"{path}: expected a 2-D uint16 image, got {image.dtype} {image.shape}")
    if photometric not in _GRAYSCALE:
        raise ValueError(f"{path}: photometric must be one of {_GRAYSCALE}, got {photometric!r}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"{path}: bits_stored must be in 8..16, got {bits_stored}")
    top = 2**bits_stored - 1
    if image.size and int(image.max()) > top:
        raise ValueError(f"{path}: value {int(image.max())} exceeds {bits_stored} bits")
    if laterality not in (None, "L", "R"):
        raise ValueError(f"{path}: laterality must be 'L', 'R' or None, got {laterality!r}")
    stored = (top - image).astype(np.uint16) if photometric == "MONOCHROME1" else image
    seed = Path(path).stem if identifier is None else identifier

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[seed, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    # Patient and General Study: type 2 attributes present but empty (synthetic subject).
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # General Series, Equipment, SC Equipment.
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.SeriesNumber = 1
    if laterality is not None:
        ds.Laterality = laterality
    ds.Manufacturer = "osteo_jax"
    ds.ConversionType = "SYN"
    # General Image and Image Pixel.
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.set_pixel_data(stored, photometric, bits_stored, generate_instance_uid=False)
    if pixel_spacing_mm is not None:
        row, col = _spacing_pair(path, pixel_spacing_mm)
        ds.PixelSpacing = [_ds_str(row), _ds_str(col)]
        ds.NominalScannedPixelSpacing = [_ds_str(row), _ds_str(col)]
    # LINEAR window with center 2**(b-1) and width 2**b maps stored 0 -> y_min, top -> y_max.
    ds.WindowCenter = 2 ** (bits_stored - 1)
    ds.WindowWidth = 2**bits_stored
    ds.save_as(path, enforce_file_format=True)


def _spacing_pair(path, spacing) -> tuple[float, float]:
    pair = (spacing, spacing) if np.isscalar(spacing) else tuple(spacing)
    if len(pair) != 2 or not all(math.isfinite(float(v)) and float(v) > 0 for v in pair):
        raise ValueError(f"{path}: pixel spacing must be positive and finite, got {spacing!r}")
    return float(pair[0]), float(pair[1])


def _ds_str(x: float) -> str:
    """A Decimal String of at most 16 characters."""
    return f"{x:.10g}"

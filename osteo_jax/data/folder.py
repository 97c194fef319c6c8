"""The osteo_jax dataset folder: layout, PNG and CSV input/output.

A dataset is a folder (README.md, "Dataset folder format", is the user-facing description)::

    DIR/
      subjects.csv            one row per subject: subject_id, age, sex, t_score, label, ...
      images.csv              one row per image: image_id, subject_id, path, laterality,
                              pixel_spacing_mm
      images/<image_id>.png   16-bit grayscale radiograph (MONOCHROME2: bone bright)
      masks/<annotator>/<image_id>.png
                              8-bit label map, 0 background, 1 radius, 2 ulna, 3-7 MC1-MC5;
                              annotator "exact" is the generator's truth, "annotator_0" ...
                              the human-like masks; a missing file = not annotated
      dataset.json            format version, class names, annotators, generator settings
      oracle.json             synthetic only: the generator's oracle AUC and coupling r
      bones.csv               synthetic only: true per-bone geometry
      annotations.csv         synthetic only: each annotator's bias, jitter and convention

Paths inside the CSVs are relative to DIR and use forward slashes.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from osteo_jax.config import CLASS_NAMES
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.limits import MAX_IMAGE_PIXELS, open_image_lazily
from osteo_jax.data.table import read_table

FORMAT_VERSION = 1
SUBJECTS_CSV = "subjects.csv"
IMAGES_CSV = "images.csv"
EXACT = "exact"


def annotator_name(m: int) -> str:
    """Folder name of annotator ``m`` under ``masks/``."""
    return f"annotator_{m}"


def image_relpath(image_id: str) -> str:
    """Relative path of an image inside the dataset folder."""
    return f"images/{image_id}.png"


def mask_relpath(annotator: str, image_id: str) -> str:
    """Relative path of one annotator's mask of one image."""
    return f"masks/{annotator}/{image_id}.png"


def write_png16(
    path: str | os.PathLike, image: np.ndarray, *, bits_stored: int | None = None
) -> None:
    """Writes a 2-D uint16 array as a 16-bit grayscale PNG (fast, lossless compression).

    Args:
      path: the file to write.
      image: ``[H, W]`` uint16 stored values.
      bits_stored: the detector's bit depth (1-16): written as the PNG's ``sBIT`` chunk, so the
        file says on its own that its values span ``[0, 2**bits_stored - 1]``
        (:func:`~osteo_jax.data.imageio.read_image` reads it). None: no ``sBIT``.

    Raises:
      ValueError: a non-2-D or non-uint16 image, a bit depth outside 1-16, or a value above it.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ValueError(f"{path}: expected a 2-D uint16 image, got {image.dtype} {image.shape}")
    info = None
    if bits_stored is not None:
        if not 1 <= bits_stored <= 16:
            raise ValueError(f"{path}: bits_stored must be in 1-16, got {bits_stored}")
        if image.size and int(image.max()) >= 2**bits_stored:
            raise ValueError(
                f"{path}: value {int(image.max())} does not fit in bits_stored={bits_stored}"
            )
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([bits_stored]))
    Image.fromarray(image).save(path, compress_level=1, pnginfo=info)


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Writes a 2-D uint8 label map as an 8-bit PNG."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected a 2-D uint8 label map, got {labels.dtype} {labels.shape}"
        )
    Image.fromarray(labels).save(path, compress_level=1)


def read_png(path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Reads a grayscale PNG (8- or 16-bit) into a 2-D integer array.

    Args:
      path: the PNG file.
      max_pixels: refuse an image of more pixels than this, judged from the header before
        decoding (:mod:`osteo_jax.data.limits`; None: no cap).

    Raises:
      DatasetError: the file is missing, unreadable, larger than ``max_pixels``, or not
        single-channel.
    """
    try:
        with open_image_lazily(path, max_pixels) as im:
            im.load()
            arr = np.array(im)
    except OSError as e:
        raise DatasetError(f"{path}: unreadable image ({e})") from e
    if arr.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel image, got shape {arr.shape}")
    if arr.dtype == np.int32:  # some Pillow modes return 16-bit data as int32
        arr = arr.astype(np.uint16)
    return arr


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Reads a label-map PNG and checks its class ids.

    Raises:
      DatasetError: unreadable, or holding ids outside ``0..len(CLASS_NAMES) - 1``.
    """
    arr = read_png(path)
    if arr.size and int(arr.max()) >= len(CLASS_NAMES):
        raise DatasetError(
            f"{path}: unknown class id {int(arr.max())} (expected 0..{len(CLASS_NAMES) - 1})"
        )
    return arr.astype(np.uint8)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, object]]) -> None:
    """Writes rows (dicts with the same keys) as a CSV with a header."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Reads a CSV with a header into a list of dicts (stripped strings).

    The rules (UTF-8 with an optional byte-order mark, commas, no ragged rows) are
    :func:`osteo_jax.data.table.read_table`'s; a dataset folder's tables are read through
    :func:`osteo_jax.data.dataset.read_dataset`, which checks their contents too.
    """
    return read_table(path).records


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Writes pretty strict JSON (:func:`dumps_json`) atomically.

    A temporary sibling is renamed over ``path``, so a kill mid-write never leaves a truncated
    file for a resumed run to trip over.
    """
    path = Path(path)
    text = dumps_json(obj, indent=2) + "\n"
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder, not a file", str(path))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def dumps_json(obj: object, *, indent: int | None = None) -> str:
    """Strict JSON text (RFC 8259) of ``obj``: every file and log line the package writes.

    NaN and infinite numbers, which Python's ``json`` would write as the bare tokens ``NaN`` and
    ``Infinity`` that most JSON readers reject, become ``null``; numpy scalars and arrays become
    numbers and lists. Where a reader needs to know why a value is missing, the writer adds a
    reason field next to it (e.g. ``predict``'s per-hypothesis probabilities).

    Args:
      obj: dicts, lists, tuples, strings, numbers, bools, None, numpy scalars and arrays.
      indent: as for :func:`json.dumps` (None: one line, for JSON Lines logs).

    Raises:
      TypeError: an object of another type.
    """
    return json.dumps(_finite(obj), indent=indent, allow_nan=False, default=_not_jsonable)


def nulls_to_nan(x):
    """``x`` with every None replaced by NaN, recursively: numeric records read back.

    The inverse of :func:`dumps_json` for records whose values are all numbers (metric
    summaries, per-image measurements), so that readers can keep formatting and averaging
    them; never apply it to configs, where None means "not set".
    """
    if isinstance(x, dict):
        return {k: nulls_to_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nulls_to_nan(v) for v in x]
    return math.nan if x is None else x


def _finite(x):
    """``x`` with numpy values converted and non-finite floats replaced by None."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.ndarray):
        return _finite(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _not_jsonable(x):
    raise TypeError(f"not JSON serialisable: {type(x)}")


def annotators_of(root: str | os.PathLike) -> list[str]:
    """Annotator folder names under ``masks/``, exact first, then sorted."""
    masks = Path(root) / "masks"
    if not masks.is_dir():
        return []
    names = sorted(p.name for p in masks.iterdir() if p.is_dir())
    return sorted(names, key=lambda n: (n != EXACT, n))


def load_example(root: str | os.PathLike, image_id: str) -> dict[str, np.ndarray]:
    """Reads one image and all its masks from a dataset folder.

    The image path comes from ``images.csv`` (``images/<image_id>.png`` if the folder has no
    such row). PNGs come back as stored (uint16 for the generator's); DICOM and TIFF images
    are decoded by :func:`osteo_jax.data.imageio.read_image` to float32 display values in
    [0, 1] (bone bright).

    Returns:
      ``{"image": [H, W], "<annotator>": [H, W] uint8, ...}`` for each annotator that
      labelled this image.
    """
    root = Path(root)
    rel = image_relpath(image_id)
    if (root / IMAGES_CSV).exists():
        rows = [r for r in read_csv(root / IMAGES_CSV) if r["image_id"] == image_id]
        if rows and rows[0].get("path"):
            rel = rows[0]["path"]
    path = root / rel
    if path.suffix.lower() == ".png":
        out = {"image": read_png(path)}
    else:
        from osteo_jax.data.imageio import read_image

        out = {"image": read_image(path)[0]}
    for name in annotators_of(root):
        p = root / mask_relpath(name, image_id)
        if p.exists():
            mask = read_labels(p)
            if mask.shape != out["image"].shape:
                raise DatasetError(
                    f"{p}: mask shape {mask.shape} does not match its image {out['image'].shape}"
                )
            out[name] = mask
    return out


def rows_from(columns: Mapping[str, Iterable]) -> list[dict[str, object]]:
    """Column dict -> list of row dicts."""
    keys = list(columns)
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*columns.values(), strict=True)]

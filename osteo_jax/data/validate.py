"""Read-only validation of a user's dataset folder (README.md, "Dataset folder format").

:func:`validate_folder` walks ``subjects.csv``, ``images.csv``, the images and the masks and
raises :class:`~osteo_jax.data.errors.DatasetError` on the *first* problem, with a message that
names the file, the row and the problem. Rows are given as ``data row N`` (1-based, the header
not counted) and ``line M`` (the physical CSV line, the header being line 1), so either an
editor's line number or a spreadsheet's row number finds it.

Checks, in order:

* ``dataset.json`` (optional) is valid JSON; its ``bits_stored`` is used to read 16-bit images.
* ``subjects.csv``: present, a ``subject_id`` column and a ``label`` or ``t_score`` column;
  per row a non-empty unique ``subject_id``, a label (``label`` 0/1, else derived from
  ``t_score``), a numeric finite ``t_score`` when given, ``label`` agreeing with the WHO cut
  (1 iff T <= -2.5) when both are given, a known ``split`` when given, and a safe
  ``image_path`` when given.
* ``images.csv``: present, columns ``image_id``, ``subject_id``, ``path``; per row a non-empty
  unique ``image_id`` usable as a file name, a known ``subject_id``, a relative ``path`` that
  stays inside the dataset root (lexically: no absolute paths, no ``..`` leaving the root;
  symbolic links are followed, not judged), an existing file, and a known ``split`` when given
  that agrees with the subject's split in ``subjects.csv`` and with the subject's other images.
* with ``check_images``: every image is read by :func:`~osteo_jax.data.imageio.read_image`
  (corrupt, truncated, RGB, multi-frame, non-finite, out-of-range files and images over the
  pixel cap, judged from the header before decoding, fail) and must be 2-D
  with both sides >= 2; every mask ``masks/<annotator>/<image_id>.png`` must be a single-channel
  PNG of its image's shape with class ids ``0..len(CLASS_NAMES) - 1`` and at least one
  non-background pixel.

Decisions:

* An **all-background mask is an error**: by the folder format a present mask file means the
  annotator labelled the image, and every hand radiograph shows bones, so an empty mask is a
  failed export that would teach a segmenter "no bone". Delete the file to mean "not annotated".
* Warnings (no error): subjects without images, several image rows pointing at one file, mask
  files whose name matches no ``image_id``, a ``split`` column whose values are all empty.
* Split values are ``train``, ``val``, ``test`` (case-sensitive); an empty cell means
  unassigned.

Nothing is ever written: files are only opened for reading.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import posixpath
from pathlib import Path

import numpy as np

from osteo_jax.config import CLASS_NAMES
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import IMAGES_CSV, SUBJECTS_CSV, annotators_of, mask_relpath, read_png
from osteo_jax.data.imageio import read_image
from osteo_jax.data.limits import MAX_IMAGE_PIXELS

__all__ = ["SPLITS", "WHO_OSTEOPOROSIS_T", "ValidationReport", "validate_folder"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
WHO_OSTEOPOROSIS_T = -2.5  # T <= -2.5: osteoporosis (label 1)


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Summary of a folder that passed :func:`validate_folder`.

    Attributes:
      root: the dataset folder.
      n_subjects: rows of ``subjects.csv``.
      n_images: rows of ``images.csv``.
      annotators: annotator folders under ``masks/`` (``exact`` first).
      masks: number of mask files per annotator that belong to a listed image.
      warnings: problems that do not stop validation.
    """

    root: str
    n_subjects: int
    n_images: int
    annotators: tuple[str, ...]
    masks: dict[str, int]
    warnings: tuple[str, ...]


class _Row:
    """Location of one CSV data row, for messages."""

    def __init__(self, file: Path, index: int, line: int):
        self.file, self.index, self.line = file, index, line

    def __str__(self) -> str:
        return f"{self.file}: data row {self.index} (line {self.line})"

    def fail(self, problem: str) -> DatasetError:
        return DatasetError(f"{self}: {problem}")


def _read_rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[_Row, dict]]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (required)")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise DatasetError(f"{path}: empty file, no header line")
            header = [h.strip() for h in header]
            reader.fieldnames = header
            if len(set(header)) != len(header):
                dup = sorted({h for h in header if header.count(h) > 1})
                raise DatasetError(f"{path}: line 1 (header): duplicate column(s) {dup}")
            for col in required:
                if col not in header:
                    raise DatasetError(
                        f"{path}: line 1 (header): missing required column {col!r} "
                        f"(columns: {header})"
                    )
            rows = []
            for i, rec in enumerate(reader, start=1):
                row = _Row(path, i, reader.line_num)
                if None in rec:
                    raise row.fail(
                        f"{len(header) + len(rec[None])} fields but the header has {len(header)}"
                    )
                rows.append((row, {k: (v or "").strip() for k, v in rec.items()}))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: unreadable CSV ({e})") from e
    return header, rows


def _safe_relpath(root: Path, rel: str, row: _Row, column: str) -> Path:
    """``root / rel`` after checking that ``rel`` is relative and stays inside ``root``."""
    if not rel:
        raise row.fail(f"empty {column!r}")
    if rel.startswith(("/", "\\")) or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        raise row.fail(f"{column} {rel!r} is an absolute path; paths must be relative to {root}")
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise row.fail(f"{column} {rel!r} escapes the dataset root {root}")
    return root / rel


def _parse_label(rec: dict, has_label: bool, has_t: bool, row: _Row) -> int:
    label_s = rec.get("label", "") if has_label else ""
    t_s = rec.get("t_score", "") if has_t else ""
    label = t = None
    if label_s:
        try:
            x = float(label_s)
        except ValueError:
            x = math.nan
        if x not in (0.0, 1.0):
            raise row.fail(f"label {label_s!r} out of range (expected 0 or 1)")
        label = int(x)
    if t_s:
        try:
            t = float(t_s)
        except ValueError:
            raise row.fail(f"t_score {t_s!r} is not a number") from None
        if not math.isfinite(t):
            raise row.fail(f"t_score {t_s!r} is not finite")
    if label is None and t is None:
        raise row.fail("missing label: neither 'label' nor 't_score' is given")
    who = None if t is None else int(t <= WHO_OSTEOPOROSIS_T)
    if label is not None and who is not None and label != who:
        raise row.fail(
            f"label {label} contradicts the WHO cut for t_score {t_s} (osteoporosis, label 1, "
            f"iff T <= {WHO_OSTEOPOROSIS_T})"
        )
    return label if label is not None else who


def _check_split(value: str, row: _Row) -> str:
    if value and value not in SPLITS:
        raise row.fail(f"unknown split {value!r} (expected one of {list(SPLITS)} or empty)")
    return value


def _bits_stored(root: Path) -> int | None:
    p = root / "dataset.json"
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{p}: unreadable JSON ({e})") from e
    bits = meta.get("bits_stored") if isinstance(meta, dict) else None
    if bits is None:
        return None
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise DatasetError(f"{p}: bits_stored must be an integer in 1..16, got {bits!r}")
    return bits


def validate_folder(
    root: str | os.PathLike,
    *,
    check_images: bool = True,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> ValidationReport:
    """Checks a dataset folder without writing anything; raises on the first problem.

    Args:
      root: the dataset folder.
      check_images: also read every image and mask (slower); without it only the CSVs, the
        paths and the existence of the image files are checked.
      max_pixels: images and masks of more pixels are refused from their header, before
        decoding (:mod:`osteo_jax.data.limits`; None: no cap).

    Returns:
      A :class:`ValidationReport` of a valid folder.

    Raises:
      DatasetError: the first problem found; the message names the file, the row (data row
        and CSV line) where there is one, and the problem.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    warnings: list[str] = []
    bits = _bits_stored(root)

    # subjects.csv
    s_header, s_rows = _read_rows(root / SUBJECTS_CSV, ("subject_id",))
    has_label, has_t = "label" in s_header, "t_score" in s_header
    if not (has_label or has_t):
        raise DatasetError(
            f"{root / SUBJECTS_CSV}: line 1 (header): missing required column 'label' or "
            "'t_score' (at least one)"
        )
    subject_split: dict[str, str] = {}
    for row, rec in s_rows:
        sid = rec["subject_id"]
        if not sid:
            raise row.fail("empty subject_id")
        if sid in subject_split:
            raise row.fail(f"duplicate subject_id {sid!r}")
        _parse_label(rec, has_label, has_t, row)
        subject_split[sid] = _check_split(rec.get("split", ""), row)
        if rec.get("image_path"):
            _safe_relpath(root, rec["image_path"], row, "image_path")
    if not s_rows:
        raise DatasetError(f"{root / SUBJECTS_CSV}: no data rows")

    # images.csv
    i_header, i_rows = _read_rows(root / IMAGES_CSV, ("image_id", "subject_id", "path"))
    seen_ids: set[str] = set()
    seen_paths: dict[str, int] = {}
    image_split: dict[str, tuple[str, _Row]] = {}  # subject -> (split, first row giving it)
    images: list[tuple[_Row, str, Path]] = []
    for row, rec in i_rows:
        iid, sid = rec["image_id"], rec["subject_id"]
        if not iid:
            raise row.fail("empty image_id")
        if "/" in iid or "\\" in iid or iid in (".", ".."):
            raise row.fail(f"image_id {iid!r} is not usable as a file name (masks are named by it)")
        if iid in seen_ids:
            raise row.fail(f"duplicate image_id {iid!r}")
        seen_ids.add(iid)
        if sid not in subject_split:
            raise row.fail(f"unknown subject_id {sid!r} (not in {SUBJECTS_CSV})")
        path = _safe_relpath(root, rec["path"], row, "path")
        norm = posixpath.normpath(rec["path"].replace("\\", "/"))
        if norm in seen_paths:
            warnings.append(f"{row}: path {rec['path']!r} also used by data row {seen_paths[norm]}")
        else:
            seen_paths[norm] = row.index
        split = _check_split(rec.get("split", ""), row)
        if split:
            if subject_split[sid] and subject_split[sid] != split:
                raise row.fail(
                    f"subject {sid!r} assigned to two splits: {split!r} here, "
                    f"{subject_split[sid]!r} in {SUBJECTS_CSV}"
                )
            if sid in image_split and image_split[sid][0] != split:
                prev, prev_row = image_split[sid]
                raise row.fail(
                    f"subject {sid!r} assigned to two splits: {split!r} here, {prev!r} at "
                    f"data row {prev_row.index} (line {prev_row.line})"
                )
            image_split.setdefault(sid, (split, row))
        if not path.is_file():
            raise row.fail(f"image file {path} not found")
        images.append((row, iid, path))
    if not i_rows:
        raise DatasetError(f"{root / IMAGES_CSV}: no data rows")
    for name, header, rows in (
        (SUBJECTS_CSV, s_header, s_rows),
        (IMAGES_CSV, i_header, i_rows),
    ):
        if "split" in header and not any(rec["split"] for _, rec in rows):
            warnings.append(f"{root / name}: 'split' column present but empty in every row")
    with_images = {rec["subject_id"] for _, rec in i_rows}
    without = [sid for sid in subject_split if sid not in with_images]
    if without:
        warnings.append(
            f"{root / SUBJECTS_CSV}: {len(without)} subject(s) without images, e.g. {without[:5]}"
        )

    # masks
    annotators = annotators_of(root)
    masks: dict[str, int] = {}
    for name in annotators:
        folder = root / "masks" / name
        expected = {f"{iid}.png" for iid in seen_ids}
        orphans = sorted(p.name for p in folder.iterdir() if p.name not in expected)
        if orphans:
            warnings.append(
                f"{folder}: {len(orphans)} file(s) matching no image_id, e.g. {orphans[:5]}"
            )
        masks[name] = sum((folder / n).is_file() for n in expected)

    # pixels
    if check_images:
        n_classes = len(CLASS_NAMES)
        for row, iid, path in images:
            try:
                image, _ = read_image(path, bits_stored=bits, max_pixels=max_pixels)
            except DatasetError as e:
                raise DatasetError(f"{row}: {e}") from e
            if image.ndim != 2 or min(image.shape) < 2:
                raise row.fail(
                    f"{path}: wrong dimensionality, shape {image.shape} "
                    "(expected a 2-D image with both sides >= 2)"
                )
            for name in annotators:
                mpath = root / mask_relpath(name, iid)
                if not mpath.is_file():
                    continue
                try:
                    mask = read_png(mpath, max_pixels=max_pixels)
                except DatasetError as e:
                    raise DatasetError(f"{e} (mask of {IMAGES_CSV} data row {row.index})") from e
                where = f"{mpath} (mask of {IMAGES_CSV} data row {row.index}, line {row.line})"
                if mask.shape != image.shape:
                    raise DatasetError(
                        f"{where}: mask shape {mask.shape} does not match its image {image.shape}"
                    )
                top = int(mask.max()) if mask.size else 0
                if top >= n_classes:
                    bad = sorted(int(v) for v in np.unique(mask[mask >= n_classes]))[:10]
                    raise DatasetError(
                        f"{where}: unknown class id(s) {bad} (expected 0..{n_classes - 1})"
                    )
                if top == 0:
                    raise DatasetError(
                        f"{where}: empty mask (all background); delete the file if the "
                        "annotator did not label this image"
                    )

    return ValidationReport(
        root=str(root),
        n_subjects=len(s_rows),
        n_images=len(i_rows),
        annotators=tuple(annotators),
        masks=masks,
        warnings=tuple(warnings),
    )

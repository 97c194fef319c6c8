"""The per-row rules of ``subjects.csv`` and ``images.csv`` (:mod:`osteo_jax.data.validate`).

Each function reads one table of a dataset folder through
:func:`osteo_jax.data.table.read_table`, checks every row (ids, labels against the WHO cut,
splits, spacings, confined paths) and raises :class:`~osteo_jax.data.errors.DatasetError`
naming the file, the row and the problem; warnings are appended to a list. The image and mask
checks, and the order in which everything runs, are :func:`osteo_jax.data.validate.check_dataset`'s.
"""

from __future__ import annotations

import json
import math
import posixpath
from pathlib import Path

from osteo_jax.data.confine import confined, is_file
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import IMAGES_CSV, SUBJECTS_CSV
from osteo_jax.data.folder_index import ImageRow
from osteo_jax.data.table import Row, read_table

__all__ = ["SPLITS", "WHO_OSTEOPOROSIS_T", "bits_stored", "image_rows", "subject_rows"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
WHO_OSTEOPOROSIS_T = -2.5  # T <= -2.5: osteoporosis (label 1)
_MAX_ID = 200  # characters; a longer id is no usable file name


def _number(rec: dict, column: str, row: Row, *, positive: bool = False) -> float:
    text = rec.get(column, "")
    if not text:
        return math.nan
    try:
        x = float(text)
    except ValueError:
        raise row.fail(f"{column} {text!r} is not a number") from None
    if not math.isfinite(x) or (positive and x <= 0):
        raise row.fail(f"{column} {text!r} is not a {'positive ' if positive else ''}finite number")
    return x


def _parse_label(rec: dict, row: Row) -> tuple[int, float]:
    label_s = rec.get("label", "")
    label = None
    if label_s:
        try:
            x = float(label_s)
        except ValueError:
            x = math.nan
        if x not in (0.0, 1.0):
            raise row.fail(f"label {label_s!r} out of range (expected 0 or 1)")
        label = int(x)
    t = _number(rec, "t_score", row)
    who = None if math.isnan(t) else int(t <= WHO_OSTEOPOROSIS_T)
    if label is not None and who is not None and label != who:
        raise row.fail(
            f"label {label} contradicts the WHO cut for t_score {rec['t_score']} (osteoporosis, "
            f"label 1, iff T <= {WHO_OSTEOPOROSIS_T})"
        )
    return (label if label is not None else who if who is not None else -1), t


def _check_split(value: str, row: Row) -> str:
    if value and value not in SPLITS:
        raise row.fail(f"unknown split {value!r} (expected one of {list(SPLITS)} or empty)")
    return value


def bits_stored(root: Path) -> int | None:
    """``bits_stored`` of the folder's ``dataset.json`` (16-bit images), or None."""
    p = root / "dataset.json"
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{p}: unreadable JSON ({e})") from e
    bits = meta.get("bits_stored") if isinstance(meta, dict) else None
    if bits is None:
        return None
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise DatasetError(f"{p}: bits_stored must be an integer in 1..16, got {bits!r}")
    return bits


def subject_rows(root: Path, allow: bool, warnings: list[str]) -> tuple[dict[str, dict], bool]:
    """``subject_id -> fields`` of ``subjects.csv``, and whether it has a split column."""
    table = read_table(root / SUBJECTS_CSV, ("subject_id",))
    if not {"label", "t_score"} & set(table.header):
        raise DatasetError(
            f"{table.path}: line 1 (header): missing required column 'label' or 't_score' "
            "(at least one)"
        )
    if not table.rows:
        raise DatasetError(f"{table.path}: no data rows")
    subjects: dict[str, dict] = {}
    unknown = []
    for row, rec in table.rows:
        sid = rec["subject_id"]
        if not sid:
            raise row.fail("empty subject_id")
        if sid in subjects:
            raise row.fail(f"duplicate subject_id {sid!r}")
        label, t = _parse_label(rec, row)
        if label < 0:
            unknown.append(sid)
        if rec.get("image_path"):
            confined(root, rec["image_path"], row, "image_path", allow)
        subjects[sid] = dict(
            label=label,
            t_score=t,
            split=_check_split(rec.get("split", ""), row),
            pixel_spacing_mm=_number(rec, "pixel_spacing_mm", row, positive=True),
            laterality=rec.get("laterality", ""),
        )
    if unknown:
        warnings.append(
            f"{table.path}: {len(unknown)} subject(s) without label or t_score (unknown label: "
            f"used for segmentation, left out of classification), e.g. {unknown[:5]}"
        )
    if "split" in table.header and not any(s["split"] for s in subjects.values()):
        warnings.append(f"{table.path}: 'split' column present but empty in every row")
    return subjects, "split" in table.header


def image_rows(root: Path, subjects: dict, allow: bool, warnings: list[str]) -> list[tuple]:
    """``[(row, ImageRow)]`` of ``images.csv``, tables and paths checked."""
    table = read_table(root / IMAGES_CSV, ("image_id", "subject_id", "path"))
    if not table.rows:
        raise DatasetError(f"{table.path}: no data rows")
    seen_paths: dict[str, int] = {}
    first_split: dict[str, tuple[str, Row]] = {}  # subject -> (split, first row giving it)
    out: list[tuple[Row, ImageRow]] = []
    ids: set[str] = set()
    for row, rec in table.rows:
        iid, sid = rec["image_id"], rec["subject_id"]
        if not iid:
            raise row.fail("empty image_id")
        if (any(c in iid for c in "/\\:") or iid in (".", "..") or len(iid) > _MAX_ID) or any(
            ord(c) < 32 for c in iid
        ):
            raise row.fail(f"image_id {iid!r} is not usable as a file name (masks are named by it)")
        if iid in ids:
            raise row.fail(f"duplicate image_id {iid!r}")
        ids.add(iid)
        if sid not in subjects:
            raise row.fail(f"unknown subject_id {sid!r} (not in {SUBJECTS_CSV})")
        subj = subjects[sid]
        path = confined(root, rec["path"], row, "path", allow)
        norm = posixpath.normpath(rec["path"].replace("\\", "/"))
        if norm in seen_paths:
            warnings.append(f"{row}: path {rec['path']!r} also used by data row {seen_paths[norm]}")
        else:
            seen_paths[norm] = row.index
        split = _check_split(rec.get("split", ""), row)
        if split:
            if subj["split"] and subj["split"] != split:
                raise row.fail(
                    f"subject {sid!r} assigned to two splits: {split!r} here, "
                    f"{subj['split']!r} in {SUBJECTS_CSV}"
                )
            if sid in first_split and first_split[sid][0] != split:
                prev, prev_row = first_split[sid]
                raise row.fail(
                    f"subject {sid!r} assigned to two splits: {split!r} here, {prev!r} at "
                    f"data row {prev_row.index} (line {prev_row.line})"
                )
            first_split.setdefault(sid, (split, row))
        if not is_file(path, row, "path"):
            raise row.fail(f"image file {path} not found")
        spacing = _number(rec, "pixel_spacing_mm", row, positive=True)
        image = ImageRow(
            index=len(out),
            image_id=iid,
            subject_id=sid,
            path=rec["path"],
            label=subj["label"],
            t_score=subj["t_score"],
            pixel_spacing_mm=subj["pixel_spacing_mm"] if math.isnan(spacing) else spacing,
            laterality=rec.get("laterality", "") or subj["laterality"],
            split=split or subj["split"],
        )
        out.append((row, image))
    if "split" in table.header and not any(im.split for _, im in out):
        warnings.append(f"{table.path}: 'split' column present but empty in every row")
    return out

"""The index of a dataset folder: its images joined with their subjects' fields, checked.

:func:`read_index` reads ``subjects.csv`` and ``images.csv`` (``README.md``, "Dataset
folder format"; :mod:`osteo_jax.data.folder`) into one :class:`ImageRow` per image, the rows a
TFDS build writes (:mod:`osteo_jax.data.tfds_builder`); :func:`source_fingerprint` hashes
every file such a build reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import (
    IMAGES_CSV,
    SUBJECTS_CSV,
    annotators_of,
    image_relpath,
    mask_relpath,
    read_csv,
)

__all__ = ["FOLDER_SPLITS", "ImageRow", "read_index", "source_fingerprint"]

FOLDER_SPLITS = ("train", "val", "test")
"""Allowed values of the optional ``split`` column of ``subjects.csv``."""


@dataclasses.dataclass(frozen=True)
class ImageRow:
    """One image with its subject's fields, as written to a record."""

    index: int
    image_id: str
    subject_id: str
    path: str
    label: int
    t_score: float
    pixel_spacing_mm: float
    laterality: str
    split: str


def read_index(root: Path) -> list[ImageRow]:
    """Reads and checks ``subjects.csv`` and ``images.csv``; one :class:`ImageRow` per image.

    Raises:
      DatasetError: a missing folder or file, missing columns, duplicate or unknown ids,
        unparsable values, an unknown split name, or a missing image file.
    """
    if not root.is_dir():
        raise DatasetError(
            f"{root}: not a dataset folder (not a directory); expected the layout in "
            "OsteoHandXray.MANUAL_DOWNLOAD_INSTRUCTIONS"
        )
    for name in (SUBJECTS_CSV, IMAGES_CSV):
        if not (root / name).is_file():
            raise DatasetError(
                f"{root}: no {name}; not an osteo_jax dataset folder (see README.md, "
                "'Dataset folder format')"
            )
    subjects = {}
    for i, r in enumerate(read_csv(root / SUBJECTS_CSV), start=2):
        where = f"{root / SUBJECTS_CSV}, row {i}"
        sid = r.get("subject_id") or ""
        if not sid:
            raise DatasetError(f"{where}: empty or missing subject_id")
        if sid in subjects:
            raise DatasetError(f"{where}: duplicate subject_id {sid!r}")
        split = (r.get("split") or "").strip()
        if "split" in r and split not in FOLDER_SPLITS:
            raise DatasetError(f"{where}: split {split!r} is not one of {list(FOLDER_SPLITS)}")
        try:
            subjects[sid] = dict(
                label=_parse(r.get("label"), int, -1),
                t_score=_parse(r.get("t_score"), float, math.nan),
                pixel_spacing_mm=_parse(r.get("pixel_spacing_mm"), float, math.nan),
                laterality=(r.get("laterality") or "").strip(),
                split=split,
            )
        except ValueError as e:
            raise DatasetError(f"{where}: bad label/t_score/pixel_spacing_mm ({e})") from e
    rows, seen = [], set()
    for i, r in enumerate(read_csv(root / IMAGES_CSV), start=2):
        where = f"{root / IMAGES_CSV}, row {i}"
        iid, sid = r.get("image_id") or "", r.get("subject_id") or ""
        if not iid or not sid:
            raise DatasetError(f"{where}: empty or missing image_id/subject_id")
        if iid in seen:
            raise DatasetError(f"{where}: duplicate image_id {iid!r}")
        seen.add(iid)
        if sid not in subjects:
            raise DatasetError(f"{where}: subject_id {sid!r} is not in {SUBJECTS_CSV}")
        subj = subjects[sid]
        path = r.get("path") or image_relpath(iid)
        if not (root / path).is_file():
            raise DatasetError(f"{root / path}: image file not found ({where})")
        try:
            spacing = _parse(r.get("pixel_spacing_mm"), float, subj["pixel_spacing_mm"])
        except ValueError as e:
            raise DatasetError(f"{where}: bad pixel_spacing_mm ({e})") from e
        rows.append(
            ImageRow(
                index=len(rows),
                image_id=iid,
                subject_id=sid,
                path=path,
                label=subj["label"],
                t_score=subj["t_score"],
                pixel_spacing_mm=spacing,
                laterality=(r.get("laterality") or "").strip() or subj["laterality"],
                split=subj["split"],
            )
        )
    if not rows:
        raise DatasetError(f"{root / IMAGES_CSV}: no images")
    return rows


def _parse(value: str | None, kind: type, default):
    value = (value or "").strip()
    return kind(value) if value else default


def source_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 over every file a build reads: the two CSVs, the images and the masks.

    Two folders with the same fingerprint give the same TFDS records;
    :func:`~osteo_jax.data.tfds_dataset.build_tfds` uses it to tell a repeated build (a no-op)
    from a build of different data (refused).
    """
    root = Path(root)
    files = [SUBJECTS_CSV, IMAGES_CSV]
    for r in read_csv(root / IMAGES_CSV):
        files.append(r.get("path") or image_relpath(r["image_id"]))
        files += [
            mask_relpath(a, r["image_id"])
            for a in annotators_of(root)
            if (root / mask_relpath(a, r["image_id"])).exists()
        ]
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0")
        with open(root / rel, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()

"""The index of a dataset folder: its images joined with their subjects' fields, checked.

:class:`DatasetIndex` is what :func:`osteo_jax.data.dataset.read_dataset` returns once
:func:`osteo_jax.data.validate.check_dataset` has applied the folder's rules: one
:class:`ImageRow` per row of ``images.csv``. Readers take their rows, paths and labels from it
and never re-read the CSVs. :func:`source_fingerprint` hashes every file an index names.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from osteo_jax.data.folder import IMAGES_CSV, SUBJECTS_CSV, mask_relpath
from osteo_jax.data.imageio import read_image

__all__ = ["DatasetIndex", "ImageRow", "source_fingerprint"]


@dataclasses.dataclass(frozen=True)
class ImageRow:
    """One checked image with its subject's fields.

    Attributes:
      index: row order in ``images.csv`` (0-based).
      image_id: the image id (a safe file name).
      subject_id: its subject.
      path: ``path`` as written in ``images.csv`` (relative to the root unless outside paths
        were allowed); open ``root / path``.
      label: 1 osteoporosis, 0 not, -1 unknown.
      t_score: DXA T-score, NaN unknown.
      pixel_spacing_mm: ``images.csv``'s, else ``subjects.csv``'s, NaN unknown.
      laterality: ``images.csv``'s, else ``subjects.csv``'s, ``""`` unknown.
      split: ``images.csv``'s, else the subject's (``train``/``val``/``test``/``""``).
      masks: annotators with a mask file of this image.
    """

    index: int
    image_id: str
    subject_id: str
    path: str
    label: int
    t_score: float
    pixel_spacing_mm: float
    laterality: str
    split: str
    masks: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DatasetIndex:
    """A dataset folder that passed :func:`check_dataset`.

    Attributes:
      root: the dataset folder.
      rows: one :class:`ImageRow` per row of ``images.csv``, in order.
      n_subjects: rows of ``subjects.csv``.
      annotators: annotator folders under ``masks/`` (``exact`` first).
      masks: number of mask files per annotator that belong to a listed image.
      bits_stored: ``dataset.json``'s ``bits_stored`` (None: from the files).
      warnings: problems that do not stop reading.
    """

    root: Path
    rows: tuple[ImageRow, ...]
    n_subjects: int
    annotators: tuple[str, ...]
    masks: dict[str, int]
    bits_stored: int | None
    warnings: tuple[str, ...]

    def path(self, row: ImageRow) -> Path:
        """The image file of ``row``."""
        return self.root / row.path

    def read_image(self, row: ImageRow) -> tuple[np.ndarray, dict]:
        """``row``'s image and metadata, 16-bit values scaled by the folder's ``bits_stored``.

        :func:`~osteo_jax.data.imageio.read_image` with ``dataset.json``'s ``bits_stored``:
        synthetic folders written before the generator wrote ``sBIT`` (and PNGs from elsewhere)
        carry no bit depth, so read without it 12-bit values would be divided by 65535 instead
        of 4095, 16 times darker than the same radiograph as DICOM.
        """
        return read_image(self.path(row), bits_stored=self.bits_stored)

    def mask_path(self, annotator: str, image_id: str) -> Path:
        """The mask file of one annotator for one image (present or not)."""
        return self.root / mask_relpath(annotator, image_id)


def source_fingerprint(index: DatasetIndex) -> str:
    """SHA-256 over every file of a checked folder: the two CSVs, the images and the masks.

    Two folders with the same fingerprint give the same TFDS records;
    :func:`~osteo_jax.data.tfds_dataset.build_tfds` uses it to tell a repeated build (a no-op)
    from a build of different data (refused).
    """
    files = [SUBJECTS_CSV, IMAGES_CSV]
    for r in index.rows:
        files.append(r.path)
        files += [mask_relpath(a, r.image_id) for a in r.masks]
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0")
        with open(index.root / rel, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()

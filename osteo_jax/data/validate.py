"""The rules of a dataset folder (README.md, "Dataset folder format"), checked in one place.

:func:`check_dataset` reads ``subjects.csv``, ``images.csv``, the images and the masks, raises
:class:`~osteo_jax.data.errors.DatasetError` on the *first* problem (the message names the
file, the row where there is one, and the problem) and returns the checked
:class:`DatasetIndex`. Every command that reads a dataset folder reaches it through
:func:`osteo_jax.data.dataset.read_dataset` before it writes anything; ``osteo-jax validate``
(:func:`validate_folder`) runs it with every image decoded. The CSV rules (UTF-8 with an
optional byte-order mark, commas, row shapes) are :func:`osteo_jax.data.table.read_table`'s.

Checks, in order:

* ``dataset.json`` (optional) is valid JSON; its ``bits_stored`` is used to read 16-bit images.
* ``subjects.csv``: a ``subject_id`` column and a ``label`` or ``t_score`` column; per row a
  non-empty unique ``subject_id``; ``label`` 0/1 when given, a finite ``t_score`` when given,
  the two agreeing with the WHO cut (1 iff T <= -2.5) when both are given; a known ``split``;
  a positive ``pixel_spacing_mm`` when given; a confined ``image_path`` when given.
* ``images.csv``: columns ``image_id``, ``subject_id``, ``path``; per row a non-empty unique
  ``image_id`` usable as a file name (masks are named by it), a known ``subject_id``, a
  confined ``path`` to an existing file, a positive ``pixel_spacing_mm`` when given, and a
  known ``split`` agreeing with the subject's split and with its other images.
* **Confinement.** A path must stay inside the dataset root: absolute paths, ``..`` leaving
  the root, and paths (images or masks) whose symbolic links resolve outside the root are
  refused, unless ``allow_outside_paths`` (CLI ``--allow-outside-paths``) is given.
* **Images** (``images="header"``): the header of every image gives a 2-D grayscale
  single-frame image of both sides >= 2 under the pixel cap, without decoding the pixels;
  ``images="decode"`` (``validate``) decodes every image as well (corrupt, truncated,
  non-finite and out-of-range data fail).
* **Masks** (unless ``images="none"``): every ``masks/<annotator>/<image_id>.png`` is decoded
  and must be a single-channel PNG of its image's shape with class ids
  ``0..len(CLASS_NAMES) - 1`` and at least one bone pixel.
* **Training** (:func:`check_training`): the annotators asked for exist and at least one image
  has a mask from them.

Decisions:

* An **all-background mask is an error**: a present mask file means the annotator labelled
  the image, and every hand radiograph shows bones, so an empty mask is a failed export that
  would teach a segmenter "no bone". Delete the file to mean "not annotated". A folder whose
  masks are all empty is therefore refused by every command, training included.
* A subject with neither ``label`` nor ``t_score`` has an **unknown label** (-1): it is used
  for segmentation and left out of classification, with a warning.
* Warnings (no error): unknown labels, subjects without images, several image rows pointing at
  one file, mask files whose name matches no ``image_id``, a ``split`` column whose values are
  all empty.
* Split values are ``train``, ``val``, ``test`` (case-sensitive); an empty cell means
  unassigned.

Nothing is ever written: files are only opened for reading.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from osteo_jax.config import CLASS_NAMES
from osteo_jax.data.confine import check_inside
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import (
    EXACT,
    IMAGES_CSV,
    SUBJECTS_CSV,
    annotators_of,
    mask_relpath,
    read_png,
)
from osteo_jax.data.folder_index import DatasetIndex
from osteo_jax.data.imageio import image_shape, read_image
from osteo_jax.data.limits import MAX_IMAGE_PIXELS
from osteo_jax.data.table import Row
from osteo_jax.data.table_rules import (
    SPLITS,
    WHO_OSTEOPOROSIS_T,
    bits_stored,
    image_rows,
    subject_rows,
)

__all__ = [
    "IMAGE_CHECKS",
    "SPLITS",
    "WHO_OSTEOPOROSIS_T",
    "ValidationReport",
    "check_dataset",
    "check_training",
    "validate_folder",
]


IMAGE_CHECKS = ("none", "header", "decode")
"""How deeply :func:`check_dataset` reads images: not at all, the header, every pixel."""


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Summary of a folder that passed :func:`validate_folder`."""

    root: str
    n_subjects: int
    n_images: int
    annotators: tuple[str, ...]
    masks: dict[str, int]
    warnings: tuple[str, ...]


def _check_mask(path: Path, row: Row, shape: tuple[int, int], max_pixels: int | None) -> None:
    try:
        mask = read_png(path, max_pixels=max_pixels)
    except DatasetError as e:
        raise DatasetError(f"{e} (mask of {IMAGES_CSV} data row {row.index})") from e
    where = f"{path} (mask of {IMAGES_CSV} data row {row.index}, line {row.line})"
    if mask.shape != shape:
        raise DatasetError(f"{where}: mask shape {mask.shape} does not match its image {shape}")
    n_classes = len(CLASS_NAMES)
    top = int(mask.max()) if mask.size else 0
    if top >= n_classes:
        bad = sorted(int(v) for v in np.unique(mask[mask >= n_classes]))[:10]
        raise DatasetError(f"{where}: unknown class id(s) {bad} (expected 0..{n_classes - 1})")
    if top == 0:
        raise DatasetError(
            f"{where}: empty mask (all background); delete the file if the annotator did not "
            "label this image"
        )


def check_dataset(
    root: str | os.PathLike,
    *,
    images: str = "header",
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    allow_outside_paths: bool = False,
) -> DatasetIndex:
    """Checks a dataset folder without writing anything; raises on the first problem.

    Args:
      root: the dataset folder.
      images: one of :data:`IMAGE_CHECKS`: ``"none"`` (tables, paths and file existence
        only), ``"header"`` (also every image's header and every mask decoded), ``"decode"``
        (also every image decoded).
      max_pixels: images and masks of more pixels are refused from their header
        (:mod:`osteo_jax.data.limits`; None: no cap).
      allow_outside_paths: accept paths that leave the dataset root (absolute, ``..``,
        symbolic links resolving outside).

    Returns:
      The checked :class:`DatasetIndex`.

    Raises:
      DatasetError: the first problem found; the message names the file, the row (data row
        and CSV line) where there is one, and the problem.
    """
    if images not in IMAGE_CHECKS:
        raise ValueError(f"images must be one of {IMAGE_CHECKS}, got {images!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found (not a directory)")
    warnings: list[str] = []
    bits = bits_stored(root)
    subjects, _ = subject_rows(root, allow_outside_paths, warnings)
    checked = image_rows(root, subjects, allow_outside_paths, warnings)
    with_images = {im.subject_id for _, im in checked}
    without = [sid for sid in subjects if sid not in with_images]
    if without:
        warnings.append(
            f"{root / SUBJECTS_CSV}: {len(without)} subject(s) without images, e.g. {without[:5]}"
        )

    annotators = annotators_of(root)
    counts: dict[str, int] = {}
    have: dict[str, list[str]] = {}
    ids = {im.image_id for _, im in checked}
    for name in annotators:
        folder = root / "masks" / name
        if not allow_outside_paths:
            check_inside(root, folder, f"{folder}: mask folder")
        orphans = sorted(p.name for p in folder.iterdir() if p.name[:-4] not in ids)
        if orphans:
            warnings.append(
                f"{folder}: {len(orphans)} file(s) matching no image_id, e.g. {orphans[:5]}"
            )
        present = [iid for iid in ids if (folder / f"{iid}.png").is_file()]
        counts[name] = len(present)
        for iid in present:
            have.setdefault(iid, []).append(name)

    rows = []
    for row, im in checked:
        im = dataclasses.replace(
            im, masks=tuple(a for a in annotators if a in have.get(im.image_id, ()))
        )
        rows.append(im)
        if images == "none":
            continue
        path = root / im.path
        try:
            if images == "decode":
                shape = read_image(path, bits_stored=bits, max_pixels=max_pixels)[0].shape
            else:
                shape = image_shape(path, max_pixels=max_pixels)
        except DatasetError as e:
            raise DatasetError(f"{row}: {e}") from e
        if len(shape) != 2 or min(shape) < 2:
            raise row.fail(
                f"{path}: wrong dimensionality, shape {shape} (expected a 2-D image with both "
                "sides >= 2)"
            )
        for name in im.masks:
            mpath = root / mask_relpath(name, im.image_id)
            if not allow_outside_paths:
                check_inside(root, mpath, str(mpath))
            _check_mask(mpath, row, tuple(shape), max_pixels)

    return DatasetIndex(
        root=root,
        rows=tuple(rows),
        n_subjects=len(subjects),
        annotators=tuple(annotators),
        masks=counts,
        bits_stored=bits,
        warnings=tuple(warnings),
    )


def check_training(index: DatasetIndex, annotators: tuple[str, ...] | None) -> tuple[str, ...]:
    """The annotators a segmenter trains on, after checking that there is something to learn.

    Args:
      index: a checked folder (its masks decoded: ``images`` not ``"none"``).
      annotators: mask folders asked for; None: the human-like annotators, else ``exact``.

    Returns:
      The annotators, in the order given.

    Raises:
      DatasetError: no mask folder, an annotator that is not one, or no image with a mask
        from the annotators (empty masks are refused by :func:`check_dataset`).
    """
    masks = index.root / "masks"
    if not index.annotators:
        raise DatasetError(f"{masks}: no mask folders found; a segmenter needs masks to train")
    if annotators:
        missing = [a for a in annotators if a not in index.annotators]
        if missing:
            raise DatasetError(
                f"{masks}: no annotator folder {missing} (found {list(index.annotators)})"
            )
        chosen = tuple(annotators)
    else:
        human = tuple(a for a in index.annotators if a != EXACT)
        chosen = human or (EXACT,)
    if not any(set(chosen) & set(r.masks) for r in index.rows):
        raise DatasetError(
            f"{masks}: no image has a mask from annotators {list(chosen)}; nothing to train a "
            "segmenter on"
        )
    return chosen


def validate_folder(
    root: str | os.PathLike,
    *,
    check_images: bool = True,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    allow_outside_paths: bool = False,
) -> ValidationReport:
    """Checks a dataset folder (``osteo-jax validate``); raises on the first problem.

    :func:`check_dataset` with every image decoded (``check_images``) or the tables only.

    Returns:
      A :class:`ValidationReport` of a valid folder.
    """
    index = check_dataset(
        root,
        images="decode" if check_images else "none",
        max_pixels=max_pixels,
        allow_outside_paths=allow_outside_paths,
    )
    return ValidationReport(
        root=str(index.root),
        n_subjects=index.n_subjects,
        n_images=len(index.rows),
        annotators=index.annotators,
        masks=index.masks,
        warnings=index.warnings,
    )

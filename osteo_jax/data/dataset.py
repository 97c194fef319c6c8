"""The one reader of a dataset folder: every command's way in, checked once.

Every reader of a dataset folder (``train-seg``, ``eval-seg``, ``segment``, ``run``,
``build-tfds``, ``evaluate``, the grain sources, the TFDS builder, the in-memory loader) calls
:func:`read_dataset` before it writes anything, and takes its rows, paths, labels and mask
files from the returned :class:`~osteo_jax.data.folder_index.DatasetIndex` instead of reading
the CSVs its own way. The rules are :mod:`osteo_jax.data.validate`'s (``osteo-jax validate``
applies the same ones with every image decoded).

Cost: the tables, every image's header (sizes without decoding) and every mask (decoded: class
ids and emptiness need the pixels). The result is kept for the process, keyed by the folder,
the options and the size and modification time of every file it read, so the stages of one
``run`` check the folder once; any change to a file checks it again.
"""

from __future__ import annotations

import os
from pathlib import Path

from osteo_jax.data.folder import IMAGES_CSV, SUBJECTS_CSV
from osteo_jax.data.folder_index import DatasetIndex
from osteo_jax.data.limits import MAX_IMAGE_PIXELS
from osteo_jax.data.validate import check_dataset, check_training

__all__ = ["read_dataset", "training_annotators"]

_CACHE: dict[tuple, tuple[tuple, DatasetIndex]] = {}


def _stamp(root: Path, index: DatasetIndex | None) -> tuple:
    """Size and mtime of the files an index was built from (the CSVs, images, masks)."""
    rels = [SUBJECTS_CSV, IMAGES_CSV, "dataset.json", "masks"]
    if index is not None:
        rels += [f"masks/{a}" for a in index.annotators]
        for r in index.rows:
            rels.append(r.path)
            rels += [f"masks/{a}/{r.image_id}.png" for a in r.masks]
    out = []
    for rel in rels:
        try:
            st = os.stat(root / rel)
            out.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
        except (OSError, ValueError):
            out.append((rel, None))
    return tuple(out)


def read_dataset(
    root: str | os.PathLike,
    *,
    images: str = "header",
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    allow_outside_paths: bool = False,
) -> DatasetIndex:
    """The checked index of a dataset folder (:func:`~osteo_jax.data.validate.check_dataset`).

    The arguments are :func:`~osteo_jax.data.validate.check_dataset`'s, with image headers
    (not pixels) checked by default; ``images="none"`` suits readers of ``subjects.csv`` alone.
    A repeated call on unchanged files returns the same index without reading them again.
    """
    root = Path(root)
    key = (str(root.absolute()), images, max_pixels, bool(allow_outside_paths))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == _stamp(root, hit[1]):
        return hit[1]
    index = check_dataset(
        root, images=images, max_pixels=max_pixels, allow_outside_paths=allow_outside_paths
    )
    _CACHE[key] = (_stamp(root, index), index)
    return index


def training_annotators(
    root: str | os.PathLike,
    annotators: tuple[str, ...] | None = None,
    *,
    allow_outside_paths: bool = False,
) -> tuple[DatasetIndex, tuple[str, ...]]:
    """A folder checked for training a segmenter, and the annotators to train on.

    Args:
      root: the dataset folder.
      annotators: mask folders asked for (None: the human-like ones, else ``exact``).
      allow_outside_paths: as for :func:`read_dataset`.

    Returns:
      ``(index, annotators)``.

    Raises:
      DatasetError: a rule of :func:`read_dataset`, or nothing to train on
        (:func:`~osteo_jax.data.validate.check_training`).
    """
    index = read_dataset(root, allow_outside_paths=allow_outside_paths)
    return index, check_training(index, annotators)

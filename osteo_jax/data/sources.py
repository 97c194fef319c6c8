"""Random-access record sources for the grain input pipeline (:mod:`osteo_jax.data.pipeline`).

Every record is decoded by one path, :class:`FolderSource` (or :class:`TfdsSource` for a TFDS
build), per record when it is read, so datasets that do not fit in memory can stream; data
already in memory are served by :class:`ArraySource` (:class:`SegArraysSource` for
:class:`~osteo_jax.data.inmemory.SegArrays`).

Records are dicts ``{image [S, S, 1] float32, masks [M, S, S] uint8, image_id, subject_id}``
(robust-percentile normalisation, square padding, area resize for images, nearest for masks,
as :mod:`osteo_jax.data.inmemory` defines them; a missing annotator's slot repeats one of the
masks present).

Sources hold only paths and ints (readers are opened lazily in each process), so they pickle
into grain's spawned workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import EXACT, mask_relpath, read_labels
from osteo_jax.data.imageio import read_image
from osteo_jax.data.inmemory import resize_image, resize_labels

__all__ = ["ArraySource", "FolderSource", "Record", "SegArraysSource", "TfdsSource"]

Record = dict[str, Any]


def _text(value) -> str:
    """A TFDS text feature (bytes) or any id as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _fill_missing(masks: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """Repeats the present masks into empty slots (as ``load_seg_arrays``); None if none."""
    have = [m for m in masks if m is not None]
    if not have:
        return None
    return [m if m is not None else have[i % len(have)] for i, m in enumerate(masks)]


class FolderSource:
    """Random-access grain source over a dataset folder, checked by :func:`read_dataset`.

    Args:
      root: dataset folder (:mod:`osteo_jax.data.folder`).
      size: output side in pixels.
      annotators: mask folders used as targets (default: the human-like annotators, else
        ``exact``).
      require_masks: leave out images with no mask from any of ``annotators`` (their ids are
        in ``unlabelled``); the folder must have at least one image with a mask.
      allow_outside_paths: accept image paths leaving the dataset root
        (:mod:`osteo_jax.data.confine`).

    The folder's rules (:mod:`osteo_jax.data.validate`) are applied at construction, so a
    bad folder fails before a caller writes anything. Holds only paths, ids and ints, so it
    pickles cheaply into worker processes.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int,
        annotators: Sequence[str] | None = None,
        *,
        require_masks: bool = True,
        allow_outside_paths: bool = False,
    ):
        from osteo_jax.data.dataset import training_annotators

        self.root = Path(root)
        self.size = int(size)
        index, self.annotators = training_annotators(
            self.root,
            tuple(annotators) if annotators else None,
            allow_outside_paths=allow_outside_paths,
        )
        self.bits_stored = index.bits_stored
        rows = list(index.rows)
        if require_masks:
            wanted = set(self.annotators)
            self.unlabelled = tuple(r.image_id for r in rows if not wanted & set(r.masks))
            rows = [r for r in rows if wanted & set(r.masks)]
        else:
            self.unlabelled = ()
        self._paths = [r.path for r in rows]
        self._masks = [tuple(a in r.masks for a in self.annotators) for r in rows]
        self.image_ids = np.array([r.image_id for r in rows])
        self.subject_ids = np.array([r.subject_id for r in rows])

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> Record:
        index = int(index)
        iid = str(self.image_ids[index])
        image, _ = read_image(self.root / self._paths[index], bits_stored=self.bits_stored)
        masks: list[np.ndarray | None] = []
        for name, present in zip(self.annotators, self._masks[index], strict=True):
            if present:
                p = self.root / mask_relpath(name, iid)
                m = read_labels(p)
                if m.shape != image.shape:
                    raise DatasetError(
                        f"{p}: mask shape {m.shape} does not match its image {image.shape}"
                    )
                masks.append(resize_labels(m, self.size))
            else:
                masks.append(None)
        filled = _fill_missing(masks)
        if filled is None:
            raise DatasetError(f"{self.root}: image {iid} has no mask from {self.annotators}")
        return dict(
            image=resize_image(image, self.size)[..., None],
            masks=np.stack(filled),
            image_id=iid,
            subject_id=str(self.subject_ids[index]),
        )

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r}, size={self.size}, n={len(self)})"


class TfdsSource:
    """Random-access grain source over a built TFDS dataset (:mod:`osteo_jax.data.tfds_dataset`).

    Records match :class:`FolderSource`'s. Masks that the annotator did not label
    (``has_mask`` false) are filled from the present ones; an image labelled by none of
    ``annotators`` keeps the constant ``MISSING_MASK`` (255) maps, an ignore value.

    Args:
      tfds_dir: the ``out_dir`` given to ``build_tfds``, or the directory it returned.
      size: output side in pixels.
      split: TFDS split (``"train"`` = every image; see ``load_tfds``).
      annotators: mask names (default: the build's human-like annotators, else ``exact``).

    The TFDS reader is opened lazily per process and never pickled.
    """

    def __init__(
        self,
        tfds_dir: str | os.PathLike,
        size: int,
        split: str = "train",
        annotators: Sequence[str] | None = None,
    ):
        self.tfds_dir = Path(tfds_dir)
        self.size = int(size)
        self.split = split
        self._ds = None
        if annotators:
            self.annotators = tuple(annotators)
        else:
            names = list(self._reader()[0]["masks"]) if len(self._reader()) else []
            human = sorted(n for n in names if n != EXACT)
            self.annotators = tuple(human) if human else (EXACT,)

    def _reader(self):
        if self._ds is None:
            from osteo_jax.data.tfds_dataset import load_tfds

            self._ds = load_tfds(self.tfds_dir, self.split)
        return self._ds

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ds"] = None
        state["_id_cache"] = None
        return state

    def __len__(self) -> int:
        return len(self._reader())

    def _ids(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image_ids, subject_ids)``, read once (this decodes every record once)."""
        if getattr(self, "_id_cache", None) is None:
            rows = [self._reader()[i] for i in range(len(self))]
            self._id_cache = tuple(
                np.array([_text(r[key]) for r in rows]) for key in ("image_id", "subject_id")
            )
        return self._id_cache

    @property
    def image_ids(self) -> np.ndarray:
        """``[n]`` image ids in record order."""
        return self._ids()[0]

    @property
    def subject_ids(self) -> np.ndarray:
        """``[n]`` subject ids in record order (split by these)."""
        return self._ids()[1]

    def __getitem__(self, index: int) -> Record:
        from osteo_jax.data.tfds_builder import MISSING_MASK

        r = self._reader()[int(index)]
        masks = [
            resize_labels(r["masks"][a], self.size) if r["has_mask"][a] else None
            for a in self.annotators
        ]
        filled = _fill_missing(masks)
        if filled is None:
            filled = [np.full((self.size, self.size), MISSING_MASK, np.uint8)] * len(masks)
        return dict(
            image=resize_image(r["image"], self.size)[..., None],
            masks=np.stack(filled),
            image_id=_text(r["image_id"]),
            subject_id=_text(r["subject_id"]),
        )


class ArraySource:
    """Random-access source over equal-length arrays already in memory (one record per row).

    ``ArraySource(image=x, label=y)[i] == {"image": x[i], "label": y[i]}``. Used for data that
    fit in memory (a folder decoded once at the model's size, bone segments), so every
    training loop reads through the same :func:`~osteo_jax.data.pipeline.make_loader`
    whatever the storage. Keep ``workers=0`` with it: worker processes would each receive a
    copy of the arrays.
    """

    def __init__(self, **arrays: np.ndarray):
        if not arrays:
            raise ValueError("ArraySource needs at least one array")
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays differ in length: {lengths}")
        self.arrays = arrays
        self._n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> Record:
        return {k: v[int(index)] for k, v in self.arrays.items()}

    def __repr__(self) -> str:
        return f"ArraySource({', '.join(self.arrays)}; n={self._n})"


class SegArraysSource(ArraySource):
    """An :class:`ArraySource` over :class:`~osteo_jax.data.inmemory.SegArrays`.

    Has the attributes of :class:`FolderSource` the segmenter loop reads (``subject_ids``,
    ``image_ids``, ``annotators``) and the arrays themselves (``images``, ``masks``).
    """

    def __init__(self, arrays):
        super().__init__(
            image=arrays.images,
            masks=arrays.masks,
            image_id=arrays.image_ids,
            subject_id=arrays.subject_ids,
        )
        self.images, self.masks = arrays.images, arrays.masks
        self.image_ids, self.subject_ids = arrays.image_ids, arrays.subject_ids
        self.annotators = tuple(arrays.annotators)
        self.unlabelled = tuple(arrays.unlabelled)

"""A streaming grain input pipeline: decode, resize, augment and batch on the fly.

Every record is decoded by one path, :class:`FolderSource` (or :class:`TfdsSource` for a TFDS
build), per record inside a ``grain`` pipeline, so datasets that do not fit in memory (or
full-resolution decoding that should overlap training) can stream; :func:`load_seg_arrays`
decodes a whole folder once at the model's resolution into a
:class:`~osteo_jax.data.inmemory.SegArrays` through the same source::

    src = FolderSource("data/paper", size=128)             # or TfdsSource("data/tfds", 128)
    train_idx, val_idx = split_by_subject(src.subject_ids, 0.2, seed=0)
    for batch in make_loader(src, batch_size=8, seed=0, indices=train_idx, workers=2):
        batch["image"]   # [8, 128, 128, 1] float32, batch["masks"] [8, M, 128, 128] uint8

Records are dicts ``{image [S, S, 1] float32, masks [M, S, S] uint8, image_id, subject_id}``
(robust-percentile normalisation, square padding, area resize for images, nearest for masks,
as :mod:`osteo_jax.data.inmemory` defines them; a missing annotator's slot repeats one of the
masks present).

Determinism: the order (``shuffle``) and every record's augmentation (``random_map``) are
seeded by ``MapDataset.seed(seed)`` and the record's position, and batching happens before the
worker processes slice the stream, so the batches are identical for any ``workers`` count.
Sources hold only paths and ints (readers are opened lazily in each process), so they pickle
into grain's spawned workers; transforms are top-level classes for the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grain
import numpy as np

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import EXACT, IMAGES_CSV, mask_relpath, read_csv, read_labels
from osteo_jax.data.imageio import read_image
from osteo_jax.data.inmemory import SegArrays, default_annotators, resize_image, resize_labels

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
    """Random-access grain source over a dataset folder's ``images.csv``.

    Args:
      root: dataset folder (:mod:`osteo_jax.data.folder`).
      size: output side in pixels.
      annotators: mask folders used as targets (default
        :func:`osteo_jax.data.inmemory.default_annotators`).
      require_masks: drop images with no mask from any of ``annotators`` (as
        ``load_seg_arrays`` does; decided from file existence at construction).

    Holds only paths, ids and ints, so it pickles cheaply into worker processes.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int,
        annotators: Sequence[str] | None = None,
        *,
        require_masks: bool = True,
    ):
        self.root = Path(root)
        self.size = int(size)
        self.annotators = tuple(annotators) if annotators else default_annotators(self.root)
        rows = read_csv(self.root / IMAGES_CSV)
        if not rows:
            raise DatasetError(f"{self.root / IMAGES_CSV}: no images")
        if require_masks:
            rows = [
                r
                for r in rows
                if any(
                    (self.root / mask_relpath(a, r["image_id"])).exists() for a in self.annotators
                )
            ]
            if not rows:
                raise DatasetError(f"{self.root}: no image has masks from {self.annotators}")
        self._paths = [r.get("path") or f"images/{r['image_id']}.png" for r in rows]
        self.image_ids = np.array([r["image_id"] for r in rows])
        self.subject_ids = np.array([r["subject_id"] for r in rows])

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> Record:
        index = int(index)
        iid = str(self.image_ids[index])
        image, _ = read_image(self.root / self._paths[index])
        masks: list[np.ndarray | None] = []
        for name in self.annotators:
            p = self.root / mask_relpath(name, iid)
            if p.exists():
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
    """Random-access grain source over a built TFDS dataset (:func:`load_tfds`).

    Records match :class:`FolderSource`'s. Masks that the annotator did not label
    (``has_mask`` false) are filled from the present ones; an image labelled by none of
    ``annotators`` keeps the constant ``MISSING_MASK`` (255) maps, an ignore value.

    Args:
      tfds_dir: the ``out_dir`` given to :func:`build_tfds`, or the directory it returned.
      size: output side in pixels.
      split: TFDS split (``"train"`` = every image; see :func:`load_tfds`).
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
            from osteo_jax.data.tfds_builder import load_tfds

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
    training loop reads through the same :func:`make_loader` whatever the storage. Keep
    ``workers=0`` with it: worker processes would each receive a copy of the arrays.
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


def is_tfds_build(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a :func:`~osteo_jax.data.tfds_builder.build_tfds` output folder."""
    path = Path(path)
    return (path / "dataset_info.json").exists() or any(path.glob("*/*/dataset_info.json"))


def seg_source(
    data,
    size: int,
    annotators: Sequence[str] | None = None,
    *,
    stream: bool = False,
):
    """The segmenter's training source for a dataset folder, a TFDS build or loaded arrays.

    Args:
      data: a dataset folder, a TFDS build folder (:func:`is_tfds_build`), a
        :class:`~osteo_jax.data.inmemory.SegArrays`, or a source (returned as is).
      size: model input side in pixels.
      annotators: mask folders used as targets (default: the dataset's annotators).
      stream: for a folder, decode every record from disk when it is read
        (:class:`FolderSource`, for datasets too large for memory) instead of decoding the
        whole folder once at ``size`` (:class:`SegArraysSource`). Both give identical records.

    Returns:
      A source with ``subject_ids``, ``image_ids`` and ``annotators`` attributes.
    """
    if isinstance(data, SegArrays):
        return SegArraysSource(data)
    if not isinstance(data, (str, os.PathLike)):
        return data
    if is_tfds_build(data):
        return TfdsSource(data, size, annotators=annotators)
    if stream:
        return FolderSource(data, size, annotators)
    return SegArraysSource(load_seg_arrays(data, size, tuple(annotators) if annotators else None))


def load_seg_arrays(
    root: str | os.PathLike,
    size: int,
    annotators: tuple[str, ...] | None = None,
    *,
    workers: int = 8,
) -> SegArrays:
    """Loads a dataset folder's images and masks at ``size x size``.

    Images with no mask from any of ``annotators`` are skipped; an image missing only some
    annotators gets the masks it has repeated in the empty slots.

    Args:
      root: dataset folder.
      size: output side in pixels.
      annotators: mask folders to use as targets (default :func:`default_annotators`).
      workers: decoding threads.

    Returns:
      A :class:`SegArrays`.
    """
    src = FolderSource(root, size, annotators)
    with ThreadPoolExecutor(workers) as pool:
        records = list(pool.map(src.__getitem__, range(len(src))))
    return SegArrays(
        images=np.stack([r["image"] for r in records]),
        masks=np.stack([r["masks"] for r in records]),
        image_ids=src.image_ids,
        subject_ids=src.subject_ids,
        annotators=src.annotators,
    )


class _Subset:
    """The records ``indices`` of a source (picklable)."""

    def __init__(self, source: Sequence[Record], indices: Iterable[int]):
        self.source = source
        self.indices = np.asarray(list(indices), np.int64)
        if self.indices.ndim != 1:
            raise ValueError("indices must be one-dimensional")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(source)):
            raise IndexError(f"indices out of range for a source of {len(source)} records")

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index: int) -> Record:
        return self.source[int(self.indices[index])]


class RandomFlip:
    """Horizontal flip of image and masks with probability ``p`` (per-record rng).

    Used with ``MapDataset.random_map``; a top-level class so spawned workers can import it.
    """

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, record: Record, rng: np.random.Generator) -> Record:
        """Returns ``record`` unchanged or a mirrored copy."""
        if rng.random() >= self.p:
            return record
        out = dict(record)
        out["image"] = np.ascontiguousarray(record["image"][:, ::-1])  # [S, S, 1]: W axis 1
        out["masks"] = np.ascontiguousarray(record["masks"][..., ::-1])  # [M, S, S]: W last
        return out


def _mark_flags_parsed() -> None:
    """Marks absl flags parsed: grain's workers read them (upstream bug workaround)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(
    source: Sequence[Record],
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    indices: Iterable[int] | None = None,
    workers: int = 0,
    prefetch: int = 2,
    augment: bool = True,
    drop_remainder: bool = True,
    threads: int = 1,
    start_batch: int = 0,
) -> grain.IterDataset:
    """A deterministic batched iterable over ``source``.

    Args:
      source: a random-access source of records (:class:`FolderSource`, :class:`TfdsSource`).
      batch_size: records per batch.
      seed: seeds the shuffle and the augmentation; the batches depend on nothing else
        (not on ``workers``, ``threads`` or ``prefetch``).
      shuffle: global shuffle, reshuffled each epoch.
      num_epochs: passes over the data (``None`` = forever); batches may span epochs.
      indices: restrict to these source indices (e.g. a subject-wise split), in this order.
      workers: worker processes (0 = decode in this process).
      prefetch: batches buffered per worker (or by the in-process reader).
      augment: apply :class:`RandomFlip`.
      drop_remainder: drop a last incomplete batch.
      threads: reader threads in the consuming process (with ``workers=0`` they decode).
      start_batch: skip this many batches (a resumed run starts at its step: batch ``b`` of
        the stream is the same whatever ``start_batch`` is).

    Returns:
      A ``grain.IterDataset`` of dicts of stacked numpy arrays (``image_id`` and
      ``subject_id`` as string arrays). Close iterators of multi-worker loaders after use.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if indices is not None:
        source = _Subset(source, indices)
    ds = grain.MapDataset.source(source).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if augment:
        ds = ds.random_map(RandomFlip())
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if start_batch:
        if not 0 <= start_batch <= len(ds):
            raise ValueError(f"start_batch {start_batch} outside the {len(ds)} batches")
        ds = ds[int(start_batch) :]
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=max(int(threads), 1), prefetch_buffer_size=max(prefetch, 1))
    )
    if workers > 0:
        _mark_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=int(workers), per_worker_buffer_size=max(prefetch, 1)
            )
        )
    return it

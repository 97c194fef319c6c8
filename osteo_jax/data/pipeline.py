"""A streaming grain input pipeline: decode, resize, augment and batch on the fly.

The records come from a random-access source (:mod:`osteo_jax.data.sources`): a dataset folder
decoded per record, a TFDS build, or arrays in memory; :func:`seg_source` picks the segmenter's,
and :func:`load_seg_arrays` decodes a whole folder once at the model's resolution into a
:class:`~osteo_jax.data.inmemory.SegArrays` through the same source::

    src = FolderSource("data/paper", size=128)             # or TfdsSource("data/tfds", 128)
    train_idx, val_idx = split_by_subject(src.subject_ids, 0.2, seed=0)
    for batch in make_loader(src, batch_size=8, seed=0, indices=train_idx, workers=2):
        batch["image"]   # [8, 128, 128, 1] float32, batch["masks"] [8, M, 128, 128] uint8

Determinism: the order (``shuffle``) and every record's augmentation (``random_map``) are
seeded by ``MapDataset.seed(seed)`` and the record's position, and batching happens before the
worker processes slice the stream, so the batches are identical for any ``workers`` count.
The transforms are top-level classes so that they pickle into grain's spawned workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grain
import numpy as np

from osteo_jax.data.inmemory import SegArrays
from osteo_jax.data.sources import FolderSource, Record, SegArraysSource, TfdsSource

__all__ = ["RandomFlip", "is_tfds_build", "load_seg_arrays", "make_loader", "seg_source"]


def is_tfds_build(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a :func:`~osteo_jax.data.tfds_dataset.build_tfds` output folder."""
    path = Path(path)
    return (path / "dataset_info.json").exists() or any(path.glob("*/*/dataset_info.json"))


def seg_source(
    data,
    size: int,
    annotators: Sequence[str] | None = None,
    *,
    stream: bool = False,
    allow_outside_paths: bool = False,
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
      allow_outside_paths: accept a folder's paths leaving its root
        (:mod:`osteo_jax.data.confine`).

    A folder is checked by :func:`osteo_jax.data.dataset.read_dataset` here, before any
    caller writes anything.

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
        return FolderSource(data, size, annotators, allow_outside_paths=allow_outside_paths)
    arrays = load_seg_arrays(
        data,
        size,
        tuple(annotators) if annotators else None,
        allow_outside_paths=allow_outside_paths,
    )
    return SegArraysSource(arrays)


def load_seg_arrays(
    root: str | os.PathLike,
    size: int,
    annotators: tuple[str, ...] | None = None,
    *,
    workers: int = 8,
    allow_outside_paths: bool = False,
) -> SegArrays:
    """Loads a dataset folder's images and masks at ``size x size`` (checked first).

    Images with no mask from any of ``annotators`` are skipped; an image missing only some
    annotators gets the masks it has repeated in the empty slots.

    Args:
      root: dataset folder.
      size: output side in pixels.
      annotators: mask folders to use as targets (default: the human-like annotators, else
        ``exact``).
      workers: decoding threads.
      allow_outside_paths: accept paths leaving the folder (:mod:`osteo_jax.data.confine`).

    Returns:
      A :class:`SegArrays`.
    """
    src = FolderSource(root, size, annotators, allow_outside_paths=allow_outside_paths)
    with ThreadPoolExecutor(workers) as pool:
        records = list(pool.map(src.__getitem__, range(len(src))))
    return SegArrays(
        images=np.stack([r["image"] for r in records]),
        masks=np.stack([r["masks"] for r in records]),
        image_ids=src.image_ids,
        subject_ids=src.subject_ids,
        annotators=src.annotators,
        unlabelled=src.unlabelled,
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


class _ProcessBlock(grain.MapDataset):
    """Process ``i`` of ``n``'s records of every batch of ``parent``: a ``[B / n]`` block each.

    Record ``k`` is ``parent[(k // m) B + i m + k % m]`` with ``m = B / n``, so batching it by
    ``m`` gives rows ``[i m, (i + 1) m)`` of every global batch; an incomplete last global
    batch is dropped.
    """

    def __init__(self, parent: grain.MapDataset, batch_size: int, shard: tuple[int, int]):
        super().__init__(parent)
        self._index, count = shard
        self._batch = batch_size
        self._block = batch_size // count
        self._length = len(parent) // batch_size * self._block

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, k: int) -> int:
        batch, row = divmod(int(k), self._block)
        return batch * self._batch + self._index * self._block + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def _getitems(self, indices):
        return self._parent._getitems([self._parent_index(k) for k in indices])

    def __str__(self) -> str:
        return f"_ProcessBlock(batch={self._batch}, block={self._block}, index={self._index})"


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
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """A deterministic batched iterable over ``source``.

    Args:
      source: a random-access source of records (:mod:`osteo_jax.data.sources`).
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
      shard: ``(i, n)``: this is process ``i`` of ``n`` and reads only rows
        ``[i B / n, (i + 1) B / n)`` of every batch (``B = batch_size``), so the global
        batches are the same for any process count (an incomplete last batch is dropped).

    Returns:
      A ``grain.IterDataset`` of dicts of stacked numpy arrays (``image_id`` and
      ``subject_id`` as string arrays). Close iterators of multi-worker loaders after use.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index, count = shard
    if not 0 <= index < count or batch_size % count:
        raise ValueError(
            f"shard {shard}: batch_size {batch_size} must split evenly over {count} processes"
            " and the index lie in [0, count)"
        )
    if indices is not None:
        source = _Subset(source, indices)
    ds = grain.MapDataset.source(source).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if augment:
        ds = ds.random_map(RandomFlip())
    if count > 1:
        ds = _ProcessBlock(ds, batch_size, shard)
        batch_size //= count
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

"""The TFDS dataset of a dataset folder: built and read back without TensorFlow.

:func:`build_tfds` runs the builder :class:`~osteo_jax.data.tfds_builder.OsteoHandXray` (its
module lists what a record holds) into ArrayRecord files; :func:`load_tfds` reads them back as
a random-access ``Sequence`` of dicts (``tfds.data_source``), the input grain expects.
``tfds.load`` and ``as_dataset`` need TensorFlow and are not used.

Typical use::

    path = build_tfds("data/paper", "data/tfds")        # data/tfds/osteo_hand_xray/1.0.0
    train = load_tfds("data/tfds")                      # len(train), train[i]["image"]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from osteo_jax.data.dataset import read_dataset
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder_index import source_fingerprint
from osteo_jax.data.tfds_builder import OsteoHandXray

__all__ = ["build_tfds", "load_tfds"]


def _dataset_path(out_dir: Path) -> Path:
    """``out_dir/osteo_hand_xray/<version>``, where the builder writes under ``out_dir``."""
    return out_dir / OsteoHandXray.name / str(OsteoHandXray.VERSION)


def build_tfds(
    data_dir_src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    allow_outside_paths: bool = False,
) -> Path:
    """Builds the TFDS ArrayRecord dataset of a dataset folder (no TensorFlow, no download).

    Building again into the same ``out_dir`` from the same data (same
    :func:`source_fingerprint`) is a no-op; from different data it is refused unless
    ``overwrite``, which deletes the old build first.

    Args:
      data_dir_src: the dataset folder (the builder's manual directory).
      out_dir: TFDS ``data_dir``; the dataset goes to ``out_dir/osteo_hand_xray/1.0.0``.
      overwrite: rebuild even if ``out_dir`` holds a build of other data.
      allow_outside_paths: accept paths leaving the source folder
        (:mod:`osteo_jax.data.confine`).

    Returns:
      The prepared dataset directory (accepted by :func:`load_tfds` and
      ``tfds.builder_from_directory``).

    Raises:
      DatasetError: ``data_dir_src`` is not a valid dataset folder, or ``out_dir`` holds a
        build of different data and ``overwrite`` is false.
    """
    src, out_dir = Path(data_dir_src), Path(out_dir)
    index = read_dataset(src, allow_outside_paths=allow_outside_paths)  # before any write
    path = _dataset_path(out_dir)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if (path / "dataset_info.json").exists():
        old = tfds.builder_from_directory(path).info.metadata or {}
        if not overwrite and old.get("source_sha256") == source_fingerprint(index):
            return path
        if not overwrite:
            raise DatasetError(
                f"{path}: holds a build of other data (from {old.get('source_dir', '?')}); "
                "pass overwrite=True to replace it, or choose another out_dir"
            )
        mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # deletes, then rebuilds
    builder = OsteoHandXray(
        annotators=index.annotators,
        allow_outside_paths=allow_outside_paths,
        data_dir=os.fspath(out_dir),
        file_format="array_record",
    )
    # Nothing is downloaded, but TFDS creates download folders: keep them out of out_dir.
    with tempfile.TemporaryDirectory(prefix="osteo-tfds-") as tmp:
        builder.download_and_prepare(
            download_dir=tmp,
            download_config=tfds.download.DownloadConfig(
                manual_dir=os.fspath(src),
                download_mode=mode,
                try_download_gcs=False,  # never look the name up online
            ),
        )
    return Path(builder.data_path)


def load_tfds(out_dir: str | os.PathLike, split: str = "train") -> Sequence[dict[str, Any]]:
    """Random-access reader of a built dataset (``tfds`` ``ArrayRecordDataSource``, no TF).

    Args:
      out_dir: the ``out_dir`` given to :func:`build_tfds`, or the directory it returned.
      split: ``"train"`` (every image), ``"split_train"`` / ``"split_val"`` /
        ``"split_test"`` when the folder had a ``split`` column, or a TFDS slice such as
        ``"train[:80%]"``.

    Returns:
      A ``Sequence`` whose items are dicts of numpy values (module docstring); Text fields
      come back as ``bytes``.

    Raises:
      DatasetError: no built dataset at ``out_dir``.
    """
    out_dir = Path(out_dir)
    path = out_dir if (out_dir / "dataset_info.json").exists() else _dataset_path(out_dir)
    if not (path / "dataset_info.json").exists():
        raise DatasetError(f"{out_dir}: no built osteo_hand_xray dataset (run build_tfds)")
    return tfds.builder_from_directory(path).as_data_source(split)

"""The dataset folder as a TensorFlow Datasets (TFDS) dataset, built and read without TensorFlow.

:class:`OsteoHandXray` is a ``tfds.core.GeneratorBasedBuilder`` whose source is a dataset folder
(``README.md``, "Dataset folder format"; :mod:`osteo_jax.data.folder`) passed as the builder's
manual directory; nothing is downloaded. It writes ArrayRecord files, which TFDS reads back as
a random-access ``Sequence`` of dicts (``tfds.data_source``), the input grain expects.
``tfds.load`` and ``as_dataset`` need TensorFlow and are not used.

One record per row of ``images.csv``, in that order (shuffling at write time is disabled, so
record ``i`` is row ``i``)::

    image             [H, W] uint16   the radiograph, bit-identical to images/<image_id>.png
    masks/<name>      [H, W] uint8    annotator <name>'s label map (0 background ... 7 MC5),
                                      or all MISSING_MASK (255) if <name> did not label it
    has_mask/<name>   bool            whether masks/<name>/<image_id>.png exists
    image_id          Text            (decoded as bytes)
    subject_id        Text
    label             int64           1 = osteoporosis, 0 = not, -1 unknown
    t_score           float32         DXA T-score, NaN unknown
    pixel_spacing_mm  float32         images.csv, else subjects.csv, NaN unknown
    laterality        Text            "L" / "R" (images.csv, else subjects.csv), "" unknown

Read back, arrays are numpy, scalars Python ``int`` / ``float`` / ``bool`` and Text ``bytes``.

Annotators are the folder's ``masks/<name>/`` directories, so the feature spec depends on the
folder; the builder takes them as an argument and records them in ``features.json``. Readers
rebuild the spec from those files (:func:`load_tfds`), never from this class. Every record
carries every annotator: an unlabelled image gets a constant ``MISSING_MASK`` map (outside the
class ids, so code that ignores ``has_mask`` fails loudly or treats it as an ignore index
rather than as background; ZLIB stores it in a few bytes) and ``has_mask/<name> = False``.
``metadata.json`` holds the annotator order, class names, the source folder and its
:func:`source_fingerprint`.

Splits: ``train`` holds every image. If ``subjects.csv`` has a ``split`` column (values
``train`` / ``val`` / ``test``), the folder's own subject-wise split is added as ``split_train``,
``split_val`` and ``split_test`` (each present only when it has subjects, as TFDS cannot
write an empty split; every subject needs a value); the prefix keeps ``train`` meaning
"everything" for every folder. The synthetic folders have no ``split`` column.

Typical use::

    path = build_tfds("data/paper", "data/tfds")        # data/tfds/osteo_hand_xray/1.0.0
    train = load_tfds("data/tfds")                      # len(train), train[i]["image"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from osteo_jax.config import CLASS_NAMES
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import (
    IMAGES_CSV,
    SUBJECTS_CSV,
    annotators_of,
    image_relpath,
    mask_relpath,
    read_csv,
    read_labels,
    read_png,
)

__all__ = [
    "FOLDER_SPLITS",
    "MISSING_MASK",
    "OsteoHandXray",
    "build_tfds",
    "load_tfds",
    "source_fingerprint",
]

MISSING_MASK = 255
"""Fill value of the mask of an image its annotator did not label (not a class id)."""

FOLDER_SPLITS = ("train", "val", "test")
"""Allowed values of the optional ``split`` column of ``subjects.csv``."""

_SPLIT_PREFIX = "split_"


def _read_uint16(path: Path) -> np.ndarray:
    """The image to store as uint16.

    16-bit PNGs are stored as they are; DICOM, TIFF and 8-bit images are decoded to display
    values in [0, 1] (bone bright, MONOCHROME1 inverted) and scaled to 0..65535.
    """
    if path.suffix.lower() == ".png":
        image = read_png(path)
        if image.dtype == np.uint16:
            return image
    from osteo_jax.data.imageio import read_image

    values, _ = read_image(path)
    return np.round(values.astype(np.float64) * 65535.0).astype(np.uint16)


class OsteoHandXray(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Hand radiographs, per-annotator bone label maps and DXA labels from a dataset folder.

    Not registered by name: a registered class would be preferred over the stored
    ``features.json`` by ``tfds.builder`` / ``tfds.data_source``, and its feature spec depends
    on the annotators of the folder it was built from. ``tfds.data_source("osteo_hand_xray",
    data_dir=...)`` therefore reads from the files alone, like :func:`load_tfds`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 16-bit images and 8-bit per-annotator label maps (ZLIB "
        "Tensors), subject labels and T-scores, pixel spacing, laterality; `train` = all "
        "images plus the folder's own `split_*` splits when subjects.csv has a `split` column.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Pass an osteo_jax dataset folder as the manual directory
    (`tfds.download.DownloadConfig(manual_dir=DIR)`, or `build_tfds(DIR, out)`). Layout:

      DIR/subjects.csv          subject_id, label (1/0, blank = unknown), t_score (blank =
                                unknown), optional pixel_spacing_mm, laterality and split
                                (train / val / test)
      DIR/images.csv            image_id, subject_id, optional path (default
                                images/<image_id>.png), laterality, pixel_spacing_mm
      DIR/images/<image_id>.png 16-bit grayscale radiograph, MONOCHROME2 (bone bright)
      DIR/masks/<annotator>/<image_id>.png
                                8-bit label map, 0 background, 1 radius, 2 ulna, 3-7 MC1-MC5;
                                a missing file = that annotator did not label that image

    `osteo-jax synth --out DIR` writes such a folder from the synthetic cohort.
    """

    def __init__(self, *, annotators: Sequence[str], **kwargs: Any):
        """Creates the builder.

        Args:
          annotators: mask folder names (``masks/<name>/``) of the source folder, as
            :func:`osteo_jax.data.folder.annotators_of` lists them (the build checks); this
            order is kept in ``metadata.json`` (the feature dicts sort their keys).
          **kwargs: ``tfds.core.GeneratorBasedBuilder`` arguments (``data_dir``,
            ``file_format``; build with ``file_format="array_record"`` to read without TF).
        """
        self._annotators = tuple(annotators)
        if len(set(self._annotators)) != len(self._annotators):
            raise ValueError(f"duplicate annotator names: {self._annotators}")
        super().__init__(**kwargs)
        self._original_state["annotators"] = self._annotators  # survives pickling

    def _info(self) -> tfds.core.DatasetInfo:
        def label_map():
            return tfds.features.Tensor(
                shape=(None, None), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
            )

        return self.dataset_info_from_configs(
            description=(
                "Hand/wrist radiographs (16-bit, MONOCHROME2) with per-annotator 8-bit bone "
                f"label maps (classes {', '.join(CLASS_NAMES)}; {MISSING_MASK} = not labelled) "
                "and subject-level DXA labels, from an osteo_jax dataset folder."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(None, None), dtype=np.uint16, encoding=tfds.features.Encoding.ZLIB
                    ),
                    "masks": tfds.features.FeaturesDict(
                        {name: label_map() for name in self._annotators}
                    ),
                    "has_mask": tfds.features.FeaturesDict(
                        {
                            name: tfds.features.Tensor(shape=(), dtype=np.bool_)
                            for name in self._annotators
                        }
                    ),
                    "image_id": tfds.features.Text(),
                    "subject_id": tfds.features.Text(),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "t_score": tfds.features.Tensor(shape=(), dtype=np.float32),
                    "pixel_spacing_mm": tfds.features.Tensor(shape=(), dtype=np.float32),
                    "laterality": tfds.features.Text(),
                }
            ),
            disable_shuffling=True,  # record i = row i of images.csv
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.manual_dir)
        rows = _read_index(root)
        found = tuple(annotators_of(root))
        if found != self._annotators:
            raise DatasetError(
                f"{root / 'masks'}: annotators {list(found)} differ from the builder's "
                f"{list(self._annotators)}"
            )
        self.info.metadata.update(
            source_dir=str(root.resolve()),
            source_sha256=source_fingerprint(root),
            annotators=list(self._annotators),
            classes=list(CLASS_NAMES),
            missing_mask=MISSING_MASK,
        )
        splits = {"train": self._generate_examples(root, rows)}
        for name in FOLDER_SPLITS:
            part = [r for r in rows if r.split == name]
            if part:
                splits[_SPLIT_PREFIX + name] = self._generate_examples(root, part)
        return splits

    def _generate_examples(
        self, root: Path, rows: Sequence[_Row]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for row in rows:
            image = _read_uint16(root / row.path)
            masks, has_mask = {}, {}
            for name in self._annotators:
                p = root / mask_relpath(name, row.image_id)
                has_mask[name] = p.exists()
                if has_mask[name]:
                    masks[name] = read_labels(p)
                    if masks[name].shape != image.shape:
                        raise DatasetError(
                            f"{p}: mask shape {masks[name].shape} does not match its image "
                            f"{image.shape}"
                        )
                else:
                    masks[name] = np.full(image.shape, MISSING_MASK, np.uint8)
            yield (
                row.index,
                dict(
                    image=image,
                    masks=masks,
                    has_mask=has_mask,
                    image_id=row.image_id,
                    subject_id=row.subject_id,
                    label=np.int64(row.label),
                    t_score=np.float32(row.t_score),
                    pixel_spacing_mm=np.float32(row.pixel_spacing_mm),
                    laterality=row.laterality,
                ),
            )


@dataclasses.dataclass(frozen=True)
class _Row:
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


def _read_index(root: Path) -> list[_Row]:
    """Reads and checks ``subjects.csv`` and ``images.csv``; one :class:`_Row` per image.

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
            _Row(
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

    Two folders with the same fingerprint give the same TFDS records; :func:`build_tfds` uses
    it to tell a repeated build (a no-op) from a build of different data (refused).
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


def _dataset_path(out_dir: Path) -> Path:
    """``out_dir/osteo_hand_xray/<version>``, where the builder writes under ``out_dir``."""
    return out_dir / OsteoHandXray.name / str(OsteoHandXray.VERSION)


def build_tfds(
    data_dir_src: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Builds the TFDS ArrayRecord dataset of a dataset folder (no TensorFlow, no download).

    Building again into the same ``out_dir`` from the same data (same
    :func:`source_fingerprint`) is a no-op; from different data it is refused unless
    ``overwrite``, which deletes the old build first.

    Args:
      data_dir_src: the dataset folder (the builder's manual directory).
      out_dir: TFDS ``data_dir``; the dataset goes to ``out_dir/osteo_hand_xray/1.0.0``.
      overwrite: rebuild even if ``out_dir`` holds a build of other data.

    Returns:
      The prepared dataset directory (accepted by :func:`load_tfds` and
      ``tfds.builder_from_directory``).

    Raises:
      DatasetError: ``data_dir_src`` is not a valid dataset folder, or ``out_dir`` holds a
        build of different data and ``overwrite`` is false.
    """
    src, out_dir = Path(data_dir_src), Path(out_dir)
    _read_index(src)  # fail before TFDS creates anything
    path = _dataset_path(out_dir)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if (path / "dataset_info.json").exists():
        old = tfds.builder_from_directory(path).info.metadata or {}
        if not overwrite and old.get("source_sha256") == source_fingerprint(src):
            return path
        if not overwrite:
            raise DatasetError(
                f"{path}: holds a build of other data (from {old.get('source_dir', '?')}); "
                "pass overwrite=True to replace it, or choose another out_dir"
            )
        mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # deletes, then rebuilds
    builder = OsteoHandXray(
        annotators=annotators_of(src), data_dir=os.fspath(out_dir), file_format="array_record"
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

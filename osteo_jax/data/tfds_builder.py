"""The TFDS builder of a dataset folder: :class:`OsteoHandXray`, written without TensorFlow.

:class:`OsteoHandXray` is a ``tfds.core.GeneratorBasedBuilder`` whose source is a dataset folder
(``README.md``, "Dataset folder format"; :mod:`osteo_jax.data.folder`) passed as the builder's
manual directory; nothing is downloaded. It writes ArrayRecord files, which TFDS reads back as
a random-access ``Sequence`` of dicts (``tfds.data_source``), the input grain expects.
:mod:`osteo_jax.data.tfds_dataset` builds it (``build_tfds``) and reads it back (``load_tfds``).

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
rebuild the spec from those files (:func:`~osteo_jax.data.tfds_dataset.load_tfds`), never from
this class. Every record carries every annotator: an unlabelled image gets a constant
``MISSING_MASK`` map (outside the class ids, so code that ignores ``has_mask`` fails loudly or
treats it as an ignore index rather than as background; ZLIB stores it in a few bytes) and
``has_mask/<name> = False``. ``metadata.json`` holds the annotator order, class names, the
source folder and its :func:`~osteo_jax.data.folder_index.source_fingerprint`.

Splits: ``train`` holds every image. If the folder has ``split`` values (``train`` / ``val``
/ ``test`` in ``subjects.csv`` or ``images.csv``), its own subject-wise split is added as
``split_train``, ``split_val`` and ``split_test`` (each present only when it has images, as
TFDS cannot write an empty split; unassigned images are only in ``train``); the prefix keeps
``train`` meaning "everything" for every folder. The synthetic folders have no ``split`` column.

The source folder is checked by :func:`~osteo_jax.data.dataset.read_dataset` (the rules of
``osteo-jax validate``) before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from osteo_jax.config import CLASS_NAMES
from osteo_jax.data.dataset import read_dataset
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import mask_relpath, read_labels, read_png
from osteo_jax.data.folder_index import ImageRow, source_fingerprint
from osteo_jax.data.table_rules import SPLITS

__all__ = ["MISSING_MASK", "OsteoHandXray"]

MISSING_MASK = 255
"""Fill value of the mask of an image its annotator did not label (not a class id)."""

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
      DIR/images.csv            image_id, subject_id, path (relative, inside DIR),
                                optional laterality, pixel_spacing_mm, split
      DIR/images/<image_id>.png 16-bit grayscale radiograph, MONOCHROME2 (bone bright)
      DIR/masks/<annotator>/<image_id>.png
                                8-bit label map, 0 background, 1 radius, 2 ulna, 3-7 MC1-MC5;
                                a missing file = that annotator did not label that image

    `osteo-jax synth --out DIR` writes such a folder from the synthetic cohort.
    """

    def __init__(
        self, *, annotators: Sequence[str], allow_outside_paths: bool = False, **kwargs: Any
    ):
        """Creates the builder.

        Args:
          annotators: mask folder names (``masks/<name>/``) of the source folder, as
            :func:`osteo_jax.data.folder.annotators_of` lists them (the build checks); this
            order is kept in ``metadata.json`` (the feature dicts sort their keys).
          allow_outside_paths: accept paths leaving the source folder
            (:mod:`osteo_jax.data.confine`).
          **kwargs: ``tfds.core.GeneratorBasedBuilder`` arguments (``data_dir``,
            ``file_format``; build with ``file_format="array_record"`` to read without TF).
        """
        self._annotators = tuple(annotators)
        self._allow_outside_paths = bool(allow_outside_paths)
        if len(set(self._annotators)) != len(self._annotators):
            raise ValueError(f"duplicate annotator names: {self._annotators}")
        super().__init__(**kwargs)
        self._original_state["annotators"] = self._annotators  # survives pickling
        self._original_state["allow_outside_paths"] = self._allow_outside_paths

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
        index = read_dataset(root, allow_outside_paths=self._allow_outside_paths)
        rows = index.rows
        found = index.annotators
        if found != self._annotators:
            raise DatasetError(
                f"{root / 'masks'}: annotators {list(found)} differ from the builder's "
                f"{list(self._annotators)}"
            )
        self.info.metadata.update(
            source_dir=str(root.resolve()),
            source_sha256=source_fingerprint(index),
            annotators=list(self._annotators),
            classes=list(CLASS_NAMES),
            missing_mask=MISSING_MASK,
        )
        splits = {"train": self._generate_examples(root, rows)}
        for name in SPLITS:
            part = [r for r in rows if r.split == name]
            if part:
                splits[_SPLIT_PREFIX + name] = self._generate_examples(root, part)
        return splits

    def _generate_examples(
        self, root: Path, rows: Sequence[ImageRow]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for row in rows:
            image = _read_uint16(root / row.path)
            masks, has_mask = {}, {}
            for name in self._annotators:
                p = root / mask_relpath(name, row.image_id)
                has_mask[name] = name in row.masks
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

"""A dataset folder in memory at the model's resolution: the arrays and the per-image transforms.

The segmenter trains on whole radiographs resized to a small square (128 x 128 on CPU). Each
image is normalised to [0, 1] by robust percentiles (bit depth and exposure differ between
sources), padded to a square (air = 0, background = 0), and resized: area averaging for images,
nearest neighbour for label maps. :class:`SegArrays` holds a folder decoded that way
(:func:`osteo_jax.data.pipeline.load_seg_arrays` decodes it in a thread pool, through the same
per-record path as the streaming pipeline; PIL releases the GIL).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class SegArrays:
    """Images and masks of a dataset folder at one square resolution.

    Attributes:
      images: ``[n, S, S, 1]`` float32 in [0, 1].
      masks: ``[n, M, S, S]`` uint8 label maps (annotators in ``annotators`` order).
      image_ids: ``[n]`` image ids.
      subject_ids: ``[n]`` subject ids (split by these, never by image).
      annotators: names of the M mask folders.
      unlabelled: ids of the folder's images left out for having no mask from ``annotators``.
    """

    images: np.ndarray
    masks: np.ndarray
    image_ids: np.ndarray
    subject_ids: np.ndarray
    annotators: tuple[str, ...]
    unlabelled: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, idx: np.ndarray) -> SegArrays:
        """The rows ``idx``."""
        return dataclasses.replace(
            self,
            images=self.images[idx],
            masks=self.masks[idx],
            image_ids=self.image_ids[idx],
            subject_ids=self.subject_ids[idx],
        )


def normalise(image: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Maps an image to [0, 1] by its own robust percentiles (float32)."""
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, [lo_pct, hi_pct])
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("image has non-finite pixels")
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _pad_square(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape
    n = max(h, w)
    out = np.zeros((n, n), arr.dtype)
    out[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = arr
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Normalised, square-padded, area-resized image ``[size, size]`` float32."""
    img = _pad_square(normalise(image))
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BOX), np.float32)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Square-padded, nearest-neighbour-resized label map ``[size, size]`` uint8."""
    lab = _pad_square(labels.astype(np.uint8))
    return np.asarray(Image.fromarray(lab).resize((size, size), Image.NEAREST), np.uint8)


def split_by_subject(
    subject_ids: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of image indices; no subject is in both.

    Returns:
      ``(train_idx, val_idx)`` sorted index arrays.
    """
    subjects = np.unique(subject_ids)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E6]))
    perm = rng.permutation(subjects)
    n_val = int(round(val_fraction * len(subjects)))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), len(subjects) - 1)
    val_subjects = set(perm[:n_val].tolist())
    is_val = np.array([s in val_subjects for s in subject_ids])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)

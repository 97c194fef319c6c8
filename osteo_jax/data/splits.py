"""Subject-wise splits: no subject ever has images in two splits."""

from __future__ import annotations

import numpy as np

__all__ = ["stratified_subject_split"]


def stratified_subject_split(
    subject_ids: np.ndarray,
    labels: np.ndarray,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation/test split of subjects, stratified by the subject's label.

    Each class's subjects are shuffled (seeded) and cut by ``fractions`` (rounded, every split
    keeping at least one subject of a class that has three or more), so the class balance is
    the same in all three splits.

    Args:
      subject_ids: ``[n]`` subject id per image (repeats allowed).
      labels: ``[n]`` label per image; all images of a subject must share it.
      fractions: train, validation, test fractions (sum to 1).
      seed: shuffling seed.

    Returns:
      ``(train, val, test)`` sorted arrays of image indices.
    """
    subject_ids, labels = np.asarray(subject_ids), np.asarray(labels)
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    subjects, first, inverse = np.unique(subject_ids, return_index=True, return_inverse=True)
    subject_label = labels[first]
    if not np.array_equal(subject_label[inverse], labels):
        bad = subjects[np.unique(inverse[subject_label[inverse] != labels])]
        raise ValueError(f"subjects with images of different labels: {bad[:5].tolist()}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B17]))
    split_of = np.zeros(len(subjects), np.int64)
    for value in np.unique(subject_label):
        members = rng.permutation(np.flatnonzero(subject_label == value))
        n = len(members)
        n_val = int(round(fractions[1] * n))
        n_test = int(round(fractions[2] * n))
        if n >= 3:
            n_val = max(n_val, 1) if fractions[1] > 0 else 0
            n_test = max(n_test, 1) if fractions[2] > 0 else 0
        split_of[members[n - n_val - n_test : n - n_test]] = 1
        split_of[members[n - n_test :]] = 2
    image_split = split_of[inverse]
    return tuple(np.flatnonzero(image_split == k) for k in range(3))

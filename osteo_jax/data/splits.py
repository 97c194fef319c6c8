"""Subject-wise splits: no subject ever has images in two splits."""

from __future__ import annotations

import numpy as np

__all__ = ["stratified_subject_folds", "stratified_subject_split"]


def _subjects(
    subject_ids: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(subjects, inverse [n_images], subject_label)``; all images of a subject share a label."""
    subject_ids, labels = np.asarray(subject_ids), np.asarray(labels)
    if subject_ids.shape != labels.shape or subject_ids.ndim != 1:
        raise ValueError(
            f"subject_ids and labels must be equal 1-D shapes: {subject_ids.shape}, {labels.shape}"
        )
    subjects, first, inverse = np.unique(subject_ids, return_index=True, return_inverse=True)
    subject_label = labels[first]
    if not np.array_equal(subject_label[inverse], labels):
        bad = subjects[np.unique(inverse[subject_label[inverse] != labels])]
        raise ValueError(f"subjects with images of different labels: {bad[:5].tolist()}")
    return subjects, inverse, subject_label


def _cut(n: int, fraction: float) -> int:
    """Subjects of a class of ``n`` in a part of ``fraction``: rounded, at least one if n >= 3."""
    k = int(round(fraction * n))
    return max(k, 1) if n >= 3 and fraction > 0 else k


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
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    subjects, inverse, subject_label = _subjects(subject_ids, labels)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B17]))
    split_of = np.zeros(len(subjects), np.int64)
    for value in np.unique(subject_label):
        members = rng.permutation(np.flatnonzero(subject_label == value))
        n = len(members)
        n_val, n_test = _cut(n, fractions[1]), _cut(n, fractions[2])
        split_of[members[n - n_val - n_test : n - n_test]] = 1
        split_of[members[n - n_test :]] = 2
    image_split = split_of[inverse]
    return tuple(np.flatnonzero(image_split == k) for k in range(3))


def stratified_subject_folds(
    subject_ids: np.ndarray,
    labels: np.ndarray,
    k: int,
    seed: int = 0,
    val_fraction: float = 0.1 / 0.9,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stratified k-fold cross-validation over subjects, with a validation part per fold.

    Each class's subjects are shuffled (seeded) and dealt to the test folds in turn (the
    classes one after the other, so fold sizes differ by at most one and each class's count
    per fold by at most one): every subject is in exactly one test fold. Fold ``i`` then
    takes a stratified ``val_fraction`` of the remaining subjects as validation (rounded, at
    least one of each class that has three or more remaining) and trains on the rest. With
    ``k = 10`` and the default ``val_fraction`` the parts are 80/10/10 of the cohort.

    Args:
      subject_ids: ``[n]`` subject id per image (repeats allowed).
      labels: ``[n]`` label per image; all images of a subject must share it.
      k: number of folds, from 2 to the number of subjects of the smallest class.
      seed: shuffling seed.
      val_fraction: validation share of the subjects outside the test fold, in ``[0, 1)``.

    Returns:
      ``k`` tuples ``(train, val, test)`` of sorted arrays of image indices.
    """
    subjects, inverse, subject_label = _subjects(subject_ids, labels)
    classes, counts = np.unique(subject_label, return_counts=True)
    if not len(classes):
        raise ValueError("no subjects to split")
    if k < 2 or k > counts.min():
        raise ValueError(
            f"k must be from 2 to the number of subjects of the smallest class "
            f"(label {classes[counts.argmin()].item()!r}: {counts.min()}); got k = {k}"
        )
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1): {val_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF01D]))
    fold_of = np.zeros(len(subjects), np.int64)
    dealt = 0
    for value in classes:
        members = rng.permutation(np.flatnonzero(subject_label == value))
        # Continue the deal where the previous class stopped, so no fold gets every remainder.
        fold_of[members] = (dealt + np.arange(len(members))) % k
        dealt += len(members)
    folds = []
    for i in range(k):
        part = np.where(fold_of == i, 2, 0)
        for value in classes:
            members = rng.permutation(np.flatnonzero((subject_label == value) & (fold_of != i)))
            part[members[: _cut(len(members), val_fraction)]] = 1
        image_part = part[inverse]
        folds.append(tuple(np.flatnonzero(image_part == j) for j in range(3)))
    return folds

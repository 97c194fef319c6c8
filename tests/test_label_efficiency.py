"""The subset sampling of experiments/label_efficiency.py (not the experiment itself)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from osteo_jax.data.splits import stratified_subject_split

PATH = Path(__file__).resolve().parents[1] / "experiments" / "label_efficiency.py"


@pytest.fixture(scope="module")
def le():
    spec = importlib.util.spec_from_file_location(PATH.stem, PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "counts, n, expected",
    [
        ([7, 3], 4, [3, 1]),  # quotas 2.8, 1.2: the remainder unit goes to class 0
        ([7, 3], 5, [4, 1]),  # 3.5, 1.5: tie, lower class index first
        ([1385, 615], 24, [17, 7]),  # 16.62, 7.38
        ([1039, 461], 1500, [1039, 461]),  # the whole pool
    ],
)
def test_class_counts(le, counts, n, expected):
    k = le.class_counts(np.array(counts), n)
    assert k.dtype == np.int64 and k.tolist() == expected and k.sum() == n


def test_class_counts_rejects_bad_n(le):
    with pytest.raises(ValueError):
        le.class_counts(np.array([3, 2]), 6)


def test_hand_computed_case(le):
    # 10 negatives, 5 positives; n = 9 -> 6 + 3; validation max(2, round(0.2 k)) = 2 and 2.
    subjects = np.array([f"S{i:02d}" for i in range(15)])
    labels = np.array([0] * 10 + [1] * 5)
    (train, val) = le.labelled_subsets(subjects, labels, (9,), seed=3)[9]
    lab = dict(zip(subjects, labels, strict=True))
    assert len(train) == 5 and len(val) == 4
    assert sorted(lab[s] for s in val) == [0, 0, 1, 1]
    assert sorted(lab[s] for s in train) == [0, 0, 0, 0, 1]
    assert not set(train) & set(val)


def test_subsets_stratified_nested_disjoint_from_test(le):
    rng = np.random.default_rng(0)
    ids = np.array([f"S{i:04d}" for i in range(400)])
    y = (rng.random(400) < 0.3).astype(np.int64)
    pool_idx, _, test_idx = stratified_subject_split(ids, y, (0.75, 0.0, 0.25), seed=0)
    pool, pool_y = ids[pool_idx], y[pool_idx]
    ns = (24, 48, 96, 0)
    subsets = le.labelled_subsets(pool, pool_y, ns, seed=1)
    again = le.labelled_subsets(pool, pool_y, ns, seed=1)  # what the second arm gets
    prevalence = pool_y.mean()
    previous = set()
    for n in ns:
        train, val = subsets[n]
        assert all(np.array_equal(a, b) for a, b in zip(subsets[n], again[n], strict=True))
        chosen = set(train) | set(val)
        assert len(chosen) == (n or len(pool))
        assert not set(train) & set(val)
        assert not chosen & set(ids[test_idx])
        positives = sum(int(pool_y[pool == s][0]) for s in chosen)
        assert abs(positives - prevalence * len(chosen)) <= 1
        assert sum(int(pool_y[pool == s][0]) for s in val) >= 2
        assert previous <= chosen  # nested
        previous = chosen
    other = le.labelled_subsets(pool, pool_y, (24,), seed=2)[24]
    assert not np.array_equal(np.concatenate(other), np.concatenate(subsets[24]))


def test_too_small_subset_is_refused(le):
    subjects = np.array([f"S{i}" for i in range(20)])
    labels = np.array([0] * 18 + [1] * 2)
    with pytest.raises(ValueError):
        le.labelled_subsets(subjects, labels, (10,), seed=0)


@pytest.mark.parametrize(
    "base, n_seg, batch, min_steps, expected",
    [(8, 133, 64, 200, 100), (8, 8400, 64, 200, 8), (30, 10, 64, 200, 200)],
)
def test_fit_epochs(le, base, n_seg, batch, min_steps, expected):
    assert le.fit_epochs(base, n_seg, batch, min_steps) == expected

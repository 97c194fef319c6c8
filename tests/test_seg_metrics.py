import itertools

import numpy as np
import ot
import pytest
import scipy.stats
from sklearn.metrics import f1_score, jaccard_score

from osteo_jax.config import BONE_NAMES
from osteo_jax.eval.calibration import calibration_bins, mose_foreground_ece
from osteo_jax.eval.cls_metrics import binary_ece, reliability_curve
from osteo_jax.eval.seg_metrics import (
    dice_iou_per_class,
    ged,
    hm_iou,
    majority_consensus,
    multiclass_iou,
    pairwise_iou,
    pixel_ece,
    seg_report,
    uncertainty_maps,
)


def _ref_iou(a, b, num_classes):
    """Independent reference: per-class set IoU, skipping classes absent from both."""
    ious = []
    for c in range(1, num_classes):
        sa = {tuple(i) for i in np.argwhere(a == c)}
        sb = {tuple(i) for i in np.argwhere(b == c)}
        if sa or sb:
            ious.append(len(sa & sb) / len(sa | sb))
    return float(np.mean(ious)) if ious else 1.0


def _one_hot_probs(labels, conf, num_classes=8):
    """Probabilities with ``conf`` on ``labels`` and the rest spread evenly over other classes."""
    labels = np.asarray(labels)
    conf = np.broadcast_to(np.asarray(conf, dtype=np.float64), labels.shape)
    p = np.repeat(((1.0 - conf) / (num_classes - 1))[..., None], num_classes, axis=-1)
    np.put_along_axis(p, labels[..., None], conf[..., None], axis=-1)
    return p


# ----------------------------------------------------------------------------- IoU


A4 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
B4 = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 3, 3]])


@pytest.mark.parametrize("num_classes", [4, 8])
def test_multiclass_iou_hand_computed(num_classes):
    # Class 1: |a|=4, |b|=5, inter 4, union 5 -> 0.8. Class 2 only in a -> 0. Class 3 only in
    # b -> 0. Classes 4..7 absent from both -> skipped. Mean over {1, 2, 3} = 0.8 / 3.
    assert multiclass_iou(A4, B4, num_classes) == pytest.approx(0.8 / 3)
    assert multiclass_iou(A4, A4, num_classes) == 1.0


def test_multiclass_iou_empty_and_disjoint():
    empty = np.zeros((4, 4), dtype=np.int32)
    assert multiclass_iou(empty, empty) == 1.0  # both empty: perfect agreement
    assert multiclass_iou(empty, A4) == 0.0  # one empty, one not
    assert multiclass_iou(A4, empty) == 0.0
    # A class in one map only counts 0: same class-1 blob, plus class 5 only in one map.
    c = A4.copy()
    c[3, 0] = 5
    assert multiclass_iou(A4, c) == pytest.approx((1.0 + 1.0 + 0.0) / 3)


def test_pairwise_iou_matches_reference(rng):
    a = rng.integers(0, 4, size=(5, 6, 7)) * (rng.random((5, 6, 7)) < 0.6)
    b = rng.integers(0, 4, size=(3, 6, 7)) * (rng.random((3, 6, 7)) < 0.6)
    a[0] = 0  # an empty map among them
    b[1] = 0
    got = pairwise_iou(a, b, num_classes=4)
    assert got.shape == (5, 3) and got.dtype == np.float64 and np.all(np.isfinite(got))
    want = np.array([[_ref_iou(x, y, 4) for y in b] for x in a])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0, 1] == 1.0
    np.testing.assert_allclose(np.diag(pairwise_iou(a, a, 4)), 1.0)


def test_labels_are_checked():
    with pytest.raises(TypeError):
        multiclass_iou(A4.astype(float), B4)
    with pytest.raises(ValueError):
        multiclass_iou(A4, B4 + 6)


# ----------------------------------------------------------------------------- GED


def test_ged_hand_computed():
    # Binary 1x4 masks (C = 2), uniform weights 1/2 on both sides.
    s = np.array([[[1, 1, 0, 0]], [[0, 0, 1, 1]]])
    y = np.array([[[1, 1, 0, 0]], [[1, 1, 1, 0]]])
    # d(s1,y1) = 0; d(s1,y2) = 1 - 2/3 = 1/3; d(s2,y1) = 1 - 0/4 = 1; d(s2,y2) = 1 - 1/4 = 3/4
    # E[d(s,y)] = (0 + 1/3 + 1 + 3/4) / 4 = 25/48
    # E[d(s,s')] = (0 + 1 + 1 + 0) / 4 = 1/2          (d(s1,s2) = 1, self-pairs count 0)
    # E[d(y,y')] = (0 + 1/3 + 1/3 + 0) / 4 = 1/6      (d(y1,y2) = 1 - 2/3)
    # GED = 2 * 25/48 - 1/2 - 1/6 = 3/8
    got = ged(s, [0.5, 0.5], y, num_classes=2)
    assert isinstance(got, float)
    assert got == pytest.approx(3 / 8)


def test_ged_identical_distributions_is_zero(rng):
    maps = rng.integers(0, 8, size=(3, 8, 8))
    w = np.array([0.2, 0.3, 0.5])
    assert ged(maps, w, maps, w) == pytest.approx(0.0, abs=1e-12)
    # Same distribution written with repeats: {a, a, b, b} vs {a, b}.
    assert ged(maps[[0, 0, 1, 1]], np.full(4, 0.25), maps[:2]) == pytest.approx(0.0, abs=1e-12)
    empty = np.zeros((2, 8, 8), dtype=np.int64)
    assert ged(empty, [0.5, 0.5], empty[:1]) == 0.0


def test_ged_weighted_matches_double_loop(rng):
    hyps = rng.integers(0, 5, size=(3, 6, 6)) * (rng.random((3, 6, 6)) < 0.5)
    annots = rng.integers(0, 5, size=(4, 6, 6)) * (rng.random((4, 6, 6)) < 0.5)
    w, beta = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(4))

    def expect(xs, wx, ys, wy):
        return sum(
            wx[i] * wy[j] * (1.0 - _ref_iou(xs[i], ys[j], 5))
            for i in range(len(xs))
            for j in range(len(ys))
        )

    want = 2 * expect(hyps, w, annots, beta) - expect(hyps, w, hyps, w)
    want -= expect(annots, beta, annots, beta)
    assert ged(hyps, w, annots, beta, num_classes=5) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("num_classes", [2, 4, 8])
def test_ged_non_negative_on_random_inputs(rng, num_classes):
    for _ in range(30):
        n, m = rng.integers(1, 5, size=2)
        hyps = rng.integers(0, num_classes, size=(n, 4, 4)) * (rng.random((n, 4, 4)) < 0.5)
        annots = rng.integers(0, num_classes, size=(m, 4, 4)) * (rng.random((m, 4, 4)) < 0.5)
        g = ged(
            hyps,
            rng.dirichlet(np.ones(n)),
            annots,
            rng.dirichlet(np.ones(m)),
            num_classes=num_classes,
        )
        assert np.isfinite(g) and g >= -1e-12


def test_weights_are_checked():
    maps = np.zeros((2, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError):
        ged(maps, [0.5, 0.6], maps)
    with pytest.raises(ValueError):
        hm_iou(maps, [0.5, 0.5, 0.0], maps)


# ----------------------------------------------------------------------------- HM-IoU


@pytest.mark.parametrize("n,m", [(2, 2), (4, 2), (6, 3), (4, 1)])
def test_hm_iou_hungarian_matches_brute_force(rng, n, m):
    hyps = rng.integers(0, 4, size=(n, 6, 6))
    annots = rng.integers(0, 4, size=(m, 6, 6))
    iou = pairwise_iou(hyps, annots, 4)
    tiled = np.tile(iou, (1, n // m))
    want = max(tiled[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n)))
    w = np.full(n, 1.0 / n)
    got = hm_iou(hyps, w, annots, num_classes=4)
    assert got == pytest.approx(want, rel=1e-12)
    # With uniform weights and M | N the exact transport plan gives the same value (Birkhoff).
    assert hm_iou(hyps, w, annots, num_classes=4, method="ot") == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("n,m", [(3, 2), (4, 3), (2, 5)])
def test_hm_iou_ot_matches_pot(rng, n, m):
    hyps = rng.integers(0, 4, size=(n, 6, 6))
    annots = rng.integers(0, 4, size=(m, 6, 6))
    w, beta = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    iou = pairwise_iou(hyps, annots, 4)
    plan = ot.emd(w, beta, 1.0 - iou)
    want = float((plan * iou).sum())
    got = hm_iou(hyps, w, annots, beta, num_classes=4)
    assert np.isfinite(got) and 0.0 <= got <= 1.0
    assert got == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError):
        hm_iou(hyps, w, annots, beta, num_classes=4, method="hungarian")


def test_hm_iou_perfect_prediction(rng):
    annots = rng.integers(0, 8, size=(2, 8, 8))
    assert hm_iou(annots[[1, 0, 0, 1]], np.full(4, 0.25), annots) == pytest.approx(1.0)
    w = np.array([0.3, 0.7])
    assert hm_iou(annots, w, annots, w) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- Dice / IoU


def test_dice_iou_per_class_matches_sklearn(rng):
    pred = rng.integers(0, 6, size=(10, 10))
    target = np.where(rng.random((10, 10)) < 0.7, pred, rng.integers(0, 6, size=(10, 10)))
    pred[0, 0], target[0, 1] = 6, 6  # class 6 in both maps without overlap, 7 in neither
    dice, iou = dice_iou_per_class(pred, target, num_classes=8)
    assert dice.shape == iou.shape == (7,) and dice.dtype == np.float64
    for c in range(1, 7):
        t, p = (target == c).ravel(), (pred == c).ravel()
        assert dice[c - 1] == pytest.approx(f1_score(t, p))
        assert iou[c - 1] == pytest.approx(jaccard_score(t, p))
    assert dice[5] == 0.0  # class 6 present in both, no overlap
    assert np.isnan(dice[6]) and np.isnan(iou[6])


# ----------------------------------------------------------------------------- consensus


def test_majority_consensus_with_ties():
    annots = np.array(
        [
            [[1, 0, 0, 3, 0]],
            [[1, 0, 2, 2, 0]],
            [[0, 2, 3, 2, 0]],
        ]
    )
    # Pixel votes: {1,1,0} -> 1; {0,0,2} -> 0; {0,2,3} three-way tie -> 2 (smallest bone);
    # {3,2,2} -> 2; all background -> 0.
    got = majority_consensus(annots)
    np.testing.assert_array_equal(got, [[1, 0, 2, 2, 0]])
    assert got.dtype == annots.dtype and got.shape == (1, 5)
    # Two annotators: a background/bone tie goes to the bone, a bone/bone tie to the smaller id.
    np.testing.assert_array_equal(
        majority_consensus(np.array([[[0, 5, 0]], [[4, 3, 0]]])), [[4, 3, 0]]
    )


# ----------------------------------------------------------------------------- ECE


def _ref_ece(probs, target, n_bins=10):
    conf, pred = probs.max(-1).ravel(), probs.argmax(-1).ravel()
    correct = pred == target.ravel()
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def test_ece_hand_computed():
    # Four pixels predicting class 1 at confidence 0.75; 3 of 4 correct -> calibrated, ECE 0.
    probs = _one_hot_probs(np.ones(4, dtype=int), 0.75)
    assert pixel_ece(probs, np.array([1, 1, 1, 2])) == pytest.approx(0.0)
    # Overconfident: 0.9 confidence, half correct -> |0.5 - 0.9| = 0.4.
    probs = _one_hot_probs(np.ones(4, dtype=int), 0.9)
    assert pixel_ece(probs, np.array([1, 1, 2, 3])) == pytest.approx(0.4)
    # Two bins of four pixels, half correct in each: 0.5 * |0.5 - 0.95| + 0.5 * |0.5 - 0.55|.
    probs = _one_hot_probs(np.ones(8, dtype=int), np.repeat([0.95, 0.55], 4))
    target = np.array([1, 1, 2, 2, 1, 1, 2, 2])
    assert pixel_ece(probs, target) == pytest.approx(0.25)


def test_ece_calibrated_and_reference(rng):
    n = 200_000
    conf = rng.uniform(0.2, 1.0, size=n)
    labels = rng.integers(1, 8, size=n)
    correct = rng.random(n) < conf
    target = np.where(correct, labels, labels % 7 + 1)  # a different bone when wrong
    probs = _one_hot_probs(labels, conf)
    got = pixel_ece(probs, target)
    assert 0.0 <= got < 0.01
    small = slice(0, 500)
    assert pixel_ece(probs[small], target[small]) == pytest.approx(
        _ref_ece(probs[small], target[small]), rel=1e-9
    )


def test_ece_foreground_only():
    # Two overconfident bone pixels plus many confident, correct background pixels.
    labels = np.array([1, 1] + [0] * 98)
    probs = _one_hot_probs(labels, 0.9)
    target = np.array([1, 2] + [0] * 98)
    assert pixel_ece(probs, target) == pytest.approx(0.4)
    full = pixel_ece(probs, target, foreground_only=False)
    assert full == pytest.approx(_ref_ece(probs, target))
    assert full == pytest.approx(abs(99 / 100 - 0.9))
    assert np.isnan(pixel_ece(probs[2:], target[2:]))


def test_one_binning_convention():
    # Right-closed bins ((b-1)/B, b/B], 0 in the first: the same for every ECE of the package.
    edges = np.array([0.0, 0.05, 0.1, 0.1000001, 0.5, 0.95, 1.0])
    np.testing.assert_array_equal(calibration_bins(edges, 10), [0, 0, 0, 1, 4, 9, 9])
    # p = 0.5 sits in bin (0.4, 0.5] with 0.45, not with 0.55: |1/2 - 0.475| + 0 (0.55 alone).
    probs, labels = np.array([0.45, 0.5, 0.55]), np.array([1, 0, 1])
    assert binary_ece(probs, labels) == pytest.approx((abs(1 - 0.95) + abs(1 - 0.55)) / 3)
    np.testing.assert_array_equal(reliability_curve(probs, labels)["count"][[4, 5]], [2, 1])
    with pytest.raises(ValueError, match="bins"):
        calibration_bins(edges, 0)


def test_mose_foreground_ece_hand_case():
    # Four pixels: two predicted bone at 0.8 (annotators 2/2 and 1/2 agree), two predicted
    # background (ignored by MoSE's convention but counted in the denominator).
    probs = _one_hot_probs(np.array([1, 1, 0, 0]), 0.8)
    annots = np.array([[1, 1, 2, 0], [1, 0, 2, 0]])
    assert mose_foreground_ece(probs, annots) == pytest.approx(abs(0.75 - 0.8) * 2 / 4)
    # No pixel predicted bone: 0, though annotators marked pixel 2 (ours would count it).
    assert mose_foreground_ece(probs[2:], annots[:, 2:]) == 0.0
    with pytest.raises(ValueError, match="match"):
        mose_foreground_ece(probs, annots[:, :3])


# ----------------------------------------------------------------------------- uncertainty


def test_uncertainty_maps(rng):
    p = rng.dirichlet(np.ones(8), size=(3, 4, 5))
    w = np.array([0.2, 0.3, 0.5])
    same = uncertainty_maps(np.stack([p[0]] * 3), w)
    assert set(same) == {"total_entropy", "expected_entropy", "mutual_information"}
    assert same["mutual_information"].shape == (4, 5)
    np.testing.assert_allclose(same["mutual_information"], 0.0, atol=1e-12)
    np.testing.assert_allclose(same["total_entropy"], scipy.stats.entropy(p[0], axis=-1))

    maps = uncertainty_maps(p, w)
    for v in maps.values():
        assert v.shape == (4, 5) and v.dtype == np.float64 and np.all(np.isfinite(v))
    np.testing.assert_allclose(
        maps["total_entropy"], scipy.stats.entropy(np.tensordot(w, p, axes=1), axis=-1)
    )
    np.testing.assert_allclose(
        maps["total_entropy"], maps["expected_entropy"] + maps["mutual_information"]
    )
    assert np.all(maps["mutual_information"] > 0)

    # Two confident hypotheses that disagree, weights 1/2: MI = log 2, no aleatoric part.
    q = np.zeros((2, 1, 1, 8))
    q[0, 0, 0, 1] = q[1, 0, 0, 2] = 1.0
    two = uncertainty_maps(q, [0.5, 0.5])
    assert two["mutual_information"][0, 0] == pytest.approx(np.log(2))
    assert two["expected_entropy"][0, 0] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- report


def test_seg_report(rng):
    annots = rng.integers(0, 8, size=(2, 8, 8))
    annots[1] = annots[0]
    annots[1, :2] = 0  # annotator 1 misses some bone pixels
    # Hypothesis 0 copies annotator 0 at 0.9; hypothesis 1 copies annotator 1 at 0.6.
    probs = np.stack([_one_hot_probs(annots[0], 0.9), _one_hot_probs(annots[1], 0.6)])
    w = np.array([0.5, 0.5])
    report = seg_report(probs, w, annots)
    assert len(report) == 2 * 3 * 8 + 4
    assert all(isinstance(v, float) for v in report.values())

    pred = np.tensordot(w, probs, axes=1).argmax(-1)
    np.testing.assert_array_equal(pred, annots[0])  # 0.9 outweighs 0.6
    # Consensus of two annotators = union of bones = annotator 0 here: a perfect mean prediction.
    for bone in BONE_NAMES:
        assert report[f"dice/consensus/{bone}"] == 1.0
        assert report[f"iou/annotator_0/{bone}"] == 1.0
    dice1, iou1 = dice_iou_per_class(pred, annots[1])
    for k, bone in enumerate(BONE_NAMES):
        assert report[f"dice/annotator_1/{bone}"] == pytest.approx(dice1[k])
        assert report[f"iou/annotator_1/{bone}"] == pytest.approx(iou1[k])
    assert report["dice/annotator_1/mean"] == pytest.approx(np.nanmean(dice1))
    # The hypotheses are exactly the annotations: GED 0, HM-IoU 1.
    assert report["ged"] == pytest.approx(0.0, abs=1e-12)
    assert report["hm_iou"] == pytest.approx(1.0)
    # ECE on annotator 0's bone pixels (= consensus), all predicted correctly. Where the two
    # hypotheses agree the confidence is (0.9 + 0.6) / 2 = 0.75; where hypothesis 1 says
    # background it is 0.9 / 2 + (0.4 / 7) / 2. The bins differ, so the gaps add up per pixel.
    agree = (annots[0] > 0) & (annots[1] > 0)
    only0 = (annots[0] > 0) & (annots[1] == 0)
    gap = agree.sum() * (1 - 0.75) + only0.sum() * (1 - (0.45 + 0.2 / 7))
    assert report["ece"] == pytest.approx(gap / (agree.sum() + only0.sum()))
    # MoSE's convention: the same predicted-bone pixels, accuracy = share of annotators giving
    # the predicted class (1 where both agree, 1/2 where annotator 1 says background), over all
    # 64 pixels.
    gap = agree.sum() * (1 - 0.75) + only0.sum() * abs(0.5 - (0.45 + 0.2 / 7))
    assert report["ece_mose"] == pytest.approx(gap / 64)


def test_hm_iou_ot_with_collapsed_router_weights(rng):
    # A collapsed router gives weights like 1e-30 next to 0.25 (float32 round-off); the exact
    # LP must still solve and equal the solution with those weights set to zero.
    hyps = rng.integers(0, 3, (8, 6, 6))
    annots = rng.integers(0, 3, (3, 6, 6))
    w = np.zeros(8)
    w[4:8] = 0.25
    w[0] = 1e-30
    w = w / w.sum()
    value = hm_iou(hyps, w, annots, num_classes=3)
    iou = pairwise_iou(hyps, annots, num_classes=3)
    w0 = np.where(w < 1e-12, 0.0, w)
    plan = ot.emd(w0 / w0.sum(), np.full(3, 1 / 3), 1.0 - iou)
    assert value == pytest.approx(float((plan * iou).sum()), abs=1e-9)

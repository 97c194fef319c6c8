"""Quality control of screening predictions (eval/qc.py) and image discovery (data/discover)."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from scipy.stats import entropy

from osteo_jax.data.discover import find_images, looks_like_image
from osteo_jax.data.errors import DatasetError
from osteo_jax.eval.qc import (
    QCCalibration,
    calibrate,
    mutual_information,
    qc_check,
    qc_features,
)

BONES = ("radius", "ulna", "MC1", "MC2", "MC3", "MC4", "MC5")


def _hand_probs(rng, n_hyp=3, size=40, jitter=0.0):
    """N one-hot-ish hypotheses of a blocky 'hand': 7 bones as rectangles, softened."""
    lab = np.zeros((size, size), np.int64)
    boxes = [(26, 36, 8, 16), (26, 36, 20, 26)] + [
        (4 + i, 22, 6 + 6 * i, 9 + 6 * i) for i in range(5)
    ]
    for c, (r0, r1, c0, c1) in enumerate(boxes, start=1):
        lab[r0:r1, c0:c1] = c
    probs = []
    for _ in range(n_hyp):
        logits = 4.0 * np.eye(8)[lab] + jitter * rng.normal(size=(size, size, 8))
        p = np.exp(logits)
        probs.append(p / p.sum(-1, keepdims=True))
    return np.stack(probs), lab


def test_mutual_information_against_scipy_entropies(rng):
    probs = rng.dirichlet(np.ones(4), size=(3, 5, 6))  # [N=3, 5, 6, C=4]
    w = np.array([0.2, 0.5, 0.3])
    mean = np.tensordot(w, probs, axes=1)
    want = entropy(mean, axis=-1) - sum(w[n] * entropy(probs[n], axis=-1) for n in range(3))
    np.testing.assert_allclose(mutual_information(probs, w), want, atol=1e-6)
    # Two certain hypotheses that disagree, equally weighted: log 2 everywhere.
    split = np.stack([np.eye(2)[np.zeros((2, 2), int)], np.eye(2)[np.ones((2, 2), int)]])
    np.testing.assert_allclose(mutual_information(split, [1, 1]), math.log(2), atol=1e-5)
    # Identical hypotheses: no disagreement.
    np.testing.assert_allclose(mutual_information(np.stack([probs[0]] * 2), [1, 3]), 0, atol=1e-9)


def test_geometry_is_invariant_to_rotation_mirror_and_scale(rng):
    probs, _ = _hand_probs(rng)
    w = np.ones(len(probs))
    f = qc_features(probs, w)
    assert f.present.all() and np.isfinite(f.geometry).all()
    for moved in (
        np.rot90(probs, 1, axes=(1, 2)),
        probs[:, :, ::-1],
        np.repeat(np.repeat(probs, 2, axis=1), 2, axis=2),  # twice the pixels
    ):
        g = qc_features(moved, w).geometry
        np.testing.assert_allclose(np.delete(g, 7), np.delete(f.geometry, 7), atol=1e-9)
    # The bone fraction of the image is the one scale-dependent feature: the same here.
    padded = np.pad(probs, ((0, 0), (0, 40), (0, 0), (0, 0)))
    padded[:, 40:, :, 0] = 1.0  # background below
    assert qc_features(padded, w).geometry[7] == pytest.approx(f.geometry[7] - math.log(2))


def test_missing_bone_gives_nan_geometry_and_a_reason(rng):
    probs, lab = _hand_probs(rng)
    probs[:, lab == 4] = np.eye(8)[0]  # MC2 gone
    f = qc_features(probs, np.ones(len(probs)))
    assert not f.present[3] and np.isnan(f.geometry).all()
    calib = QCCalibration(np.zeros(29), np.eye(29), 5.0, 0.1, 0.99, 1.0, 10)
    valid = np.array([True, True, True, False, True, True, True])
    reasons, scores = qc_check(f, calib, valid=valid, bones=BONES, spacing_known=True)
    assert reasons == ["bones missing: MC2"] and scores["geometry_distance"] == math.inf


def test_calibration_thresholds_and_mahalanobis(rng):
    feats = []
    for _ in range(40):
        probs, _ = _hand_probs(rng, jitter=1.5)
        feats.append(qc_features(probs, rng.dirichlet(np.ones(len(probs)))))
    calib = calibrate(feats, quantile=0.9, margin=1.0)
    geo = np.array([f.geometry for f in feats])
    # Mahalanobis against scipy's with the same precision matrix.
    for g in geo[:5]:
        assert calib.distance(g) == pytest.approx(mahalanobis(g, calib.mean, calib.precision))
    dist = np.array([calib.distance(g) for g in geo])
    assert calib.geometry_threshold == pytest.approx(np.quantile(dist, 0.9))
    mi = np.array([f.mutual_information for f in feats])
    assert calib.mi_threshold == pytest.approx(np.quantile(mi, 0.9))
    # About 10 % of the cohort is above each threshold by construction.
    assert 2 <= (dist > calib.geometry_threshold).sum() <= 6
    # JSON round trip.
    back = QCCalibration.from_dict(calib.to_dict())
    assert back.distance(geo[0]) == pytest.approx(calib.distance(geo[0]))
    # Too few complete images: the geometry check is off, the uncertainty one still fitted.
    few = calibrate(feats[:5], quantile=0.9, margin=1.0)
    assert few.geometry_threshold is None and few.n_images == 5
    assert few.mi_threshold == pytest.approx(np.quantile(mi[:5], 0.9))


def test_check_reasons_for_spacing_body_part_and_uncertainty(rng):
    probs, _ = _hand_probs(rng)
    f = qc_features(probs, np.ones(len(probs)))
    calib = QCCalibration(f.geometry, np.eye(29), 1.0, -1.0, 0.99, 1.0, 10)
    valid = np.ones(7, bool)
    reasons, _ = qc_check(
        f, calib, valid=valid, bones=BONES, spacing_known=False, body_part="CHEST"
    )
    assert [r.split(" (")[0] for r in reasons] == [
        "uncertain segmentation",
        "spacing unknown",
        "DICOM body part 'CHEST'",
    ]
    ok, _ = qc_check(
        f,
        QCCalibration(f.geometry, np.eye(29), 1.0, 1.0, 0.99, 1.0, 10),
        valid=valid,
        bones=BONES,
        spacing_known=True,
        body_part="hand",
    )
    assert ok == []


def test_find_images_by_content(tmp_path):
    from PIL import Image

    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "b" / "scan", format="TIFF")
    (tmp_path / "a" / "b" / "dicom_no_ext").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    (tmp_path / "a" / "notes.txt").write_text("not an image\n")
    (tmp_path / "a" / ".hidden.png").write_bytes((tmp_path / "a" / "x.png").read_bytes())
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/b/dicom_no_ext",
        "a/b/scan",
        "a/x.png",
    ]
    assert not looks_like_image(tmp_path / "a" / "notes.txt")
    # A list file: relative paths from its folder, comments skipped, duplicates once.
    lst = tmp_path / "list.txt"
    lst.write_text("# hands\na/x.png\n\na/x.png\nmissing.png\n")
    got = find_images([lst, tmp_path / "a" / "x.png"])
    assert got == sorted({tmp_path / "a" / "x.png", tmp_path / "missing.png"})
    # A named file is kept even if it is not an image (it gets an error row later); a .txt
    # named directly is a list, its lines paths.
    (tmp_path / "a" / "x.json").write_text("{}")
    assert find_images([tmp_path / "a" / "x.json"]) == [tmp_path / "a" / "x.json"]
    assert find_images([tmp_path / "a" / "notes.txt"]) == [tmp_path / "a" / "not an image"]
    with pytest.raises(DatasetError, match="no such file or folder"):
        find_images([tmp_path / "nope"])

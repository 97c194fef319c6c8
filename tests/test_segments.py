"""Bone segments: the right bone in the right place, missing bones, and full-resolution labels."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from osteo_jax.config import BONE_NAMES, CLASS_NAMES, SegmentConfig
from osteo_jax.data.inmemory import _pad_square, normalise, resize_labels
from osteo_jax.data.segments import (
    Segments,
    class_boxes,
    class_component,
    cut_segments,
    labels_from_probs,
    segment_masks,
    segments_from_prediction,
)

SIZE = 64
FRAMES = ("aligned", "box")


@pytest.fixture(scope="module")
def radiograph(noiseless_renders):
    rad = noiseless_renders[0]
    return normalise(rad.image), rad.exact, rad.pixel_spacing_mm


@pytest.fixture(scope="module")
def exact_segments(radiograph):
    image, labels, spacing = radiograph
    return {
        frame: cut_segments(
            image,
            labels,
            spacing_mm=spacing,
            cfg=SegmentConfig(size=SIZE, frame=frame, dilate_mm=0),
        )
        for frame in FRAMES
    }


def _grid(affine: np.ndarray, size: int = SIZE) -> np.ndarray:
    """``[2, size, size]`` image (row, col) of each segment pixel centre, per the documented map."""
    ij = np.arange(size, dtype=np.float64) + 0.5
    return (
        affine[0][:, None, None]
        + affine[1][:, None, None] * ij[None, :, None]
        + affine[2][:, None, None] * ij[None, None, :]
    )


def _true_in_frame(labels: np.ndarray, cls: int, affine: np.ndarray, order: int = 0) -> np.ndarray:
    """The true mask of class ``cls`` resampled into a segment frame."""
    mask = (labels == cls).astype(np.float32)
    return ndimage.map_coordinates(mask, _grid(affine), order=order, mode="constant") > 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _check_shapes(seg: Segments, size: int = SIZE) -> None:
    n = len(BONE_NAMES)
    assert seg.images.shape == (n, size, size) and seg.images.dtype == np.float32
    assert seg.valid.shape == (n,) and seg.valid.dtype == bool
    assert seg.area_mm2.shape == (n,)
    assert seg.boxes.shape == (n, 3, 2) and seg.boxes.dtype == np.float64
    assert np.isfinite(seg.images).all() and np.isfinite(seg.boxes).all()
    assert seg.images.min() >= 0 and seg.images.max() <= 1


@pytest.mark.parametrize("frame", FRAMES)
def test_segment_is_the_true_bone(exact_segments, radiograph, frame):
    _, labels, spacing = radiograph
    seg = exact_segments[frame]
    _check_shapes(seg)
    assert seg.valid.all()
    n = len(BONE_NAMES)
    iou = np.zeros((n, n))  # [segment, true bone]
    for b in range(n):
        mine = segment_masks(seg)[b]
        for c in range(n):
            iou[b, c] = _iou(
                mine, _true_in_frame(labels, CLASS_NAMES.index(BONE_NAMES[c]), seg.boxes[b])
            )
    assert np.diag(iou).min() >= 0.95, np.diag(iou)
    # Each true bone overlaps its own segment best, and each segment holds its own bone best.
    np.testing.assert_array_equal(iou.argmax(axis=0), np.arange(n))
    np.testing.assert_array_equal(iou.argmax(axis=1), np.arange(n))
    for b, name in enumerate(BONE_NAMES):
        cls = CLASS_NAMES.index(name)
        # Every non-zero segment pixel maps back (nearest image pixel) onto the true bone.
        i, j = np.nonzero(seg.images[b])
        rc = (
            seg.boxes[b, 0]
            + (i[:, None] + 0.5) * seg.boxes[b, 1]
            + (j[:, None] + 0.5) * seg.boxes[b, 2]
        )
        rc = np.rint(rc).astype(int)
        assert (labels[rc[:, 0], rc[:, 1]] == cls).mean() >= 0.98
        # The whole bone lies inside the box: invert the affine for every true bone pixel.
        pts = np.argwhere(labels == cls).astype(np.float64)
        ij = np.linalg.solve(seg.boxes[b, 1:].T, (pts - seg.boxes[b, 0]).T).T
        assert ij.min() > 0 and ij.max() < SIZE
        # Area is the bone's pixel count (the exact map's bones are one component each).
        lab, _ = ndimage.label(labels == cls)
        largest = np.bincount(lab.ravel())[1:].max()
        assert seg.area_mm2[b] == pytest.approx(largest * spacing**2)


@pytest.mark.parametrize("frame", FRAMES)
def test_bone_pixels_are_the_image_and_background_is_zero(exact_segments, radiograph, frame):
    image, labels, _ = radiograph
    seg = exact_segments[frame]
    for b, name in enumerate(BONE_NAMES):
        inside = _true_in_frame(labels, CLASS_NAMES.index(name), seg.boxes[b], order=1)
        # The segment's mask is the box-averaged mask > 1/2; the point-sampled reference can
        # differ only on rim pixels.
        kept = seg.images[b] > 0
        assert (kept != inside).mean() < 0.02
        assert np.all(seg.images[b][ndimage.binary_erosion(~inside, iterations=1)] == 0)
        assert np.all(seg.images[b][ndimage.binary_erosion(inside, iterations=1)] > 0)
        # Bone pixels carry the image at the mapped position (the anti-aliasing average mixes
        # in the zeroed background at the rim, so compare the interior).
        core = ndimage.binary_erosion(inside, iterations=2)
        ref = ndimage.map_coordinates(image, _grid(seg.boxes[b]), order=1)
        assert np.median(np.abs(seg.images[b] - ref)[core]) < 0.03


def test_dilation_keeps_the_bone_and_adds_a_rim(radiograph, exact_segments):
    image, labels, spacing = radiograph
    cfg = SegmentConfig(size=SIZE, frame="box", dilate_mm=0.8)
    seg = cut_segments(image, labels, spacing_mm=spacing, cfg=cfg)
    assert seg.valid.all()
    for b, name in enumerate(BONE_NAMES):
        bone = _true_in_frame(labels, CLASS_NAMES.index(name), seg.boxes[b], order=1)
        kept = seg.images[b] > 0
        assert (bone & ~kept).sum() <= 2  # the undilated bone is (all but edge ties) kept
        assert kept.sum() > bone.sum()
    np.testing.assert_array_equal(seg.area_mm2, exact_segments["box"].area_mm2)


def test_missing_small_and_speck(radiograph):
    image, labels, spacing = radiograph
    cfg = SegmentConfig(size=SIZE, frame="aligned", dilate_mm=0)
    mc2, mc3, mc4 = (CLASS_NAMES.index(n) for n in ("MC2", "MC3", "MC4"))
    edited = labels.copy()
    edited[edited == mc2] = 0  # absent
    rows, cols = np.nonzero(labels == mc3)
    edited[edited == mc3] = 0
    r, c = int(np.median(rows)), int(np.median(cols))
    edited[r : r + 5, c : c + 5] = mc3  # 25 px = 1 mm^2 < min_area_mm2
    # A 3x3 speck of MC4 in the far corner (background there).
    assert (labels[:3, :3] == 0).all()
    edited[:3, :3] = mc4
    base = cut_segments(image, labels, spacing_mm=spacing, cfg=cfg)
    seg = cut_segments(image, edited, spacing_mm=None, cfg=cfg)  # None -> 0.2 mm
    assert spacing == pytest.approx(0.2)
    _check_shapes(seg)
    b2, b3, b4 = (BONE_NAMES.index(n) for n in ("MC2", "MC3", "MC4"))
    assert not seg.valid[b2] and not seg.valid[b3]
    assert not seg.images[b2].any() and not seg.images[b3].any()
    assert seg.area_mm2[b2] == 0
    assert seg.area_mm2[b3] == pytest.approx(25 * 0.2**2)
    others = [b for b in range(len(BONE_NAMES)) if b not in (b2, b3)]
    assert seg.valid[others].all()
    # The speck changes nothing: largest component only.
    np.testing.assert_array_equal(seg.boxes[others], base.boxes[others])
    np.testing.assert_array_equal(seg.images[others], base.images[others])
    np.testing.assert_array_equal(seg.area_mm2[others], base.area_mm2[others])


def test_bad_inputs_raise(radiograph):
    image, labels, _ = radiograph
    with pytest.raises(ValueError, match="shape"):
        cut_segments(image[:-1], labels, spacing_mm=0.2)
    with pytest.raises(ValueError, match=r"SegmentConfig\.frame must be one of"):
        SegmentConfig(frame="rotated")
    with pytest.raises(ValueError, match="probs"):
        labels_from_probs(np.zeros((4, 5, 8), np.float32), (8, 8))


def _block_labels(shape: tuple[int, int], block: int, seed: int = 0) -> np.ndarray:
    """Blocks of random classes (neighbours differ), so a shift by half a block is visible."""
    rng = np.random.default_rng(seed)
    nr, nc = -(-shape[0] // block), -(-shape[1] // block)
    grid = np.zeros((nr, nc), np.int64)
    for r in range(nr):
        for c in range(nc):
            taken = {grid[r - 1, c] if r else -1, grid[r, c - 1] if c else -1}
            grid[r, c] = rng.choice([k for k in range(len(CLASS_NAMES)) if k not in taken])
    return np.kron(grid, np.ones((block, block), np.int64))[: shape[0], : shape[1]].astype(np.uint8)


@pytest.mark.parametrize("shape", [(96, 64), (64, 96)])
def test_labels_from_probs_undoes_padding_and_resize(shape):
    labels = _block_labels(shape, block=32)
    # The model's view: padded to a square, nearest-resized (data/inmemory.py), one-hot.
    small = resize_labels(labels, 48)
    probs = np.eye(len(CLASS_NAMES), dtype=np.float32)[small]
    out = labels_from_probs(probs, shape)
    assert out.shape == shape and out.dtype == np.uint8
    agree = (out == labels).mean()
    assert agree >= 0.95, agree
    # A result that ignored the padding offset (cropped at the corner) would be far off.
    side = max(shape)
    full = _pad_square(labels)
    assert full.shape == (side, side)
    shifted = full[: shape[0], : shape[1]]
    assert (shifted == labels).mean() < 0.8
    assert (out == shifted).mean() < 0.8


def test_labels_from_probs_argmax_of_soft_scores():
    # Two classes with a linear ramp: the argmax boundary sits where the ramps cross.
    ramp = np.linspace(0, 1, 16, dtype=np.float32)[None, :].repeat(16, 0)
    probs = np.stack([1 - ramp, ramp], axis=-1)
    out = labels_from_probs(probs, (16, 16))
    np.testing.assert_array_equal(out, (ramp > 0.5).astype(np.uint8))


@pytest.fixture(scope="module")
def predicted(radiograph):
    """One-hot probabilities of the exact map at a 256 px model resolution."""
    _, labels, _ = radiograph
    small = resize_labels(labels, 256)
    return np.eye(len(CLASS_NAMES), dtype=np.float32)[small]


def test_segments_from_prediction_hypotheses(radiograph, predicted):
    image, labels, spacing = radiograph
    cfg = SegmentConfig(size=SIZE, frame="aligned", dilate_mm=0)
    n = 3
    probs = np.repeat(predicted[None], n, axis=0)
    weights = np.array([0.2, 0.3, 0.5], np.float32)
    mean = segments_from_prediction(image, probs, weights, spacing_mm=spacing, cfg=cfg)
    per = segments_from_prediction(
        image, probs, weights, spacing_mm=spacing, cfg=cfg, per_hypothesis=True
    )
    assert isinstance(mean, Segments)
    assert isinstance(per, list) and len(per) == n
    for s in per:
        for field in dataclasses.fields(Segments):
            np.testing.assert_array_equal(getattr(s, field.name), getattr(mean, field.name))
    # The low-resolution prediction still cuts the right bones.
    assert mean.valid.all()
    for b, name in enumerate(BONE_NAMES):
        true = _true_in_frame(labels, CLASS_NAMES.index(name), mean.boxes[b])
        assert _iou(segment_masks(mean)[b], true) >= 0.85
    with pytest.raises(ValueError, match="weights"):
        segments_from_prediction(image, probs, weights[:2], spacing_mm=spacing, cfg=cfg)


def test_segments_from_prediction_hypotheses_differ(radiograph, predicted):
    image, _, spacing = radiograph
    cfg = SegmentConfig(size=SIZE, frame="box", dilate_mm=0)
    other = predicted.copy()
    mc2 = CLASS_NAMES.index("MC2")
    other[..., 0] += other[..., mc2]
    other[..., mc2] = 0  # hypothesis 2 misses MC2
    probs = np.stack([predicted, other])
    per = segments_from_prediction(
        image,
        probs,
        np.array([0.5, 0.5], np.float32),
        spacing_mm=spacing,
        cfg=cfg,
        per_hypothesis=True,
    )
    b = BONE_NAMES.index("MC2")
    assert per[0].valid[b] and not per[1].valid[b]
    np.testing.assert_array_equal(per[0].images[b + 1], per[1].images[b + 1])


def test_segment_intensity_stored_keeps_the_detector_scale():
    from osteo_jax.data.segments import segment_intensity

    rng = np.random.default_rng(0)
    image = (0.2 + 0.4 * rng.random((40, 30))).astype(np.float32)  # values in [0.2, 0.6]
    stored = segment_intensity(image, SegmentConfig(intensity="stored"))
    np.testing.assert_array_equal(stored, image)
    lo, hi = np.percentile(image, [0.5, 99.5])
    stretched = segment_intensity(image, SegmentConfig(intensity="percentile"))
    np.testing.assert_allclose(stretched, np.clip((image - lo) / (hi - lo), 0, 1), atol=1e-6)
    # Two exposures of one bone differ only in "stored": a brighter copy stays brighter.
    brighter = segment_intensity(image + 0.2, SegmentConfig(intensity="stored"))
    np.testing.assert_allclose(brighter - stored, 0.2, atol=1e-6)
    again = segment_intensity(image + 0.2, SegmentConfig(intensity="percentile"))
    np.testing.assert_allclose(again, stretched, atol=1e-5)
    with pytest.raises(ValueError, match="intensity"):
        SegmentConfig(intensity="raw")


def test_class_component_is_the_full_map_labelling():
    """The box-local component equals labelling the whole map (specks, ties, absent classes)."""
    rng = np.random.default_rng(3)
    labels = np.zeros((60, 80), np.uint8)
    labels[5:20, 10:30] = 1  # class 1: a block and a far speck
    labels[50:52, 70:72] = 1
    labels[30:35, 5:10] = 2  # class 2: two equal blocks, the tie goes to the first in scan order
    labels[30:35, 40:45] = 2
    labels[rng.random(labels.shape) < 0.05] = 4  # class 4: scattered noise
    boxes = class_boxes(labels)
    for cls in range(1, 6):
        full, n = ndimage.label(labels == cls)
        got = class_component(labels, cls, boxes)
        if n == 0:
            assert got is None
            continue
        want = full == 1 + int(np.argmax(np.bincount(full.ravel())[1:]))
        mask, (r0, c0) = got
        placed = np.zeros(labels.shape, bool)
        placed[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]] = mask
        np.testing.assert_array_equal(placed, want)
    assert class_boxes(np.zeros((4, 4), np.uint8)) == []
    with pytest.raises(ValueError, match="integer"):
        class_boxes(labels.astype(np.float32))

"""Segmentation metrics for the stochastic segmenter, MoSE conventions (PAPER.md section 5).

Pure numpy: these run outside ``jit`` on model outputs already brought to the host.

Conventions shared by every function here:

- A label map is an integer array (``[H, W]`` or any shape) with values in ``0..C-1``; class 0
  is background, the others are the bones of ``osteo_jax.config.CLASS_NAMES``.
- IoU of two label maps is the mean over foreground classes ``c = 1..C-1`` of
  ``|a=c ∩ b=c| / |a=c ∪ b=c|``, skipping classes absent from both maps. A class present in only
  one map contributes 0. If every foreground class is absent from both maps, IoU = 1 (two empty
  masks agree perfectly; the binary ``eps / eps`` convention of MoSE).
- The distance between two label maps is ``d = 1 - IoU``.
- Hypothesis weights ``w`` ``[N]`` and annotation weights ``β`` ``[M]`` are non-negative and sum
  to 1 (checked to 1e-6; not silently renormalised). ``β`` defaults to uniform ``1/M``.

Reference: Gao et al., "MoSE: Modeling Multimodal Segmentation Uncertainty with Mixture of
Stochastic Experts", ICLR 2023 (GED, HM-IoU); Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017 (ECE, in :mod:`osteo_jax.eval.calibration`).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from osteo_jax.config import BONE_NAMES
from osteo_jax.eval.calibration import mose_foreground_ece, pixel_ece

_PROB_FLOOR = 1e-12
_WEIGHT_TOL = 1e-6


def _labels(x, num_classes: int, name: str) -> np.ndarray:
    """Returns ``x`` as an integer array, failing loudly on floats or out-of-range labels."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label map, got dtype {x.dtype}")
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    return x


def _weights(w, n: int, name: str) -> np.ndarray:
    """Returns ``w`` as float64 ``[n]`` (uniform when ``None``) after checking it is a simplex."""
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name} has shape {w.shape}, expected ({n},)")
    if np.any(w < 0) or abs(w.sum() - 1.0) > _WEIGHT_TOL:
        raise ValueError(f"{name} must be non-negative and sum to 1, got sum {w.sum()}")
    return w


def _class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the foreground classes ``1..C-1`` (the bones when C = 8)."""
    if num_classes == len(BONE_NAMES) + 1:
        return BONE_NAMES
    return tuple(f"class_{c}" for c in range(1, num_classes))


def pairwise_iou(a, b, num_classes: int = 8) -> np.ndarray:
    """Multi-class IoU between every map of one stack and every map of another.

    Intersections are one-hot count products (one matrix product per class), so the cost is
    ``O(C·N·M·P)`` flops with no Python loop over pixels or pairs.

    Args:
      a: ``[N, H, W]`` (or ``[N, ...]``) integer label maps.
      b: ``[M, H, W]`` integer label maps with the same per-map shape.
      num_classes: C, background included.

    Returns:
      ``[N, M]`` float64, entry ``(n, m)`` the IoU of ``a[n]`` and ``b[m]`` under the module's
      convention (mean over foreground classes present in either map; 1 if none is).
    """
    a = _labels(a, num_classes, "a")
    b = _labels(b, num_classes, "b")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"map shapes differ: {a.shape[1:]} vs {b.shape[1:]}")
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    iou_sum = np.zeros((a.shape[0], b.shape[0]))
    n_present = np.zeros((a.shape[0], b.shape[0]))
    for c in range(1, num_classes):
        # float64 keeps integer pixel counts exact far beyond any image size.
        ha = (a == c).astype(np.float64)
        hb = (b == c).astype(np.float64)
        inter = ha @ hb.T
        union = ha.sum(1)[:, None] + hb.sum(1)[None, :] - inter
        present = union > 0
        iou_sum += np.where(present, inter / np.maximum(union, 1.0), 0.0)
        n_present += present
    return np.where(n_present > 0, iou_sum / np.maximum(n_present, 1.0), 1.0)


def multiclass_iou(a, b, num_classes: int = 8) -> float:
    """Multi-class IoU of two label maps.

    ``IoU = mean_{c ∈ S} |a=c ∩ b=c| / |a=c ∪ b=c|`` with ``S`` the foreground classes present in
    ``a`` or ``b``; ``IoU = 1`` when ``S`` is empty.

    Args:
      a: ``[H, W]`` integer label map.
      b: ``[H, W]`` integer label map.
      num_classes: C, background included.

    Returns:
      The IoU, a float in ``[0, 1]``.
    """
    return float(pairwise_iou(np.asarray(a)[None], np.asarray(b)[None], num_classes)[0, 0])


def ged(hyps, hyp_weights, annots, annot_weights=None, *, num_classes: int = 8) -> float:
    """Generalised energy distance between the weighted hypotheses and the annotations.

    ``GED = 2·E[d(s, y)] - E[d(s, s')] - E[d(y, y')]`` with ``d = 1 - IoU``, ``s, s'`` drawn
    independently from the hypotheses with weights ``w`` and ``y, y'`` from the annotations with
    weights ``β``; all pairs count, a sample with itself included (``d = 0`` there):
    ``GED = 2 wᵀ D_sy β - wᵀ D_ss w - βᵀ D_yy β``.

    Args:
      hyps: ``[N, H, W]`` integer label maps, one per hypothesis (argmax of its probabilities).
      hyp_weights: ``[N]`` hypothesis weights, summing to 1.
      annots: ``[M, H, W]`` integer label maps, one per annotator.
      annot_weights: ``[M]`` annotator weights β summing to 1; ``None`` is uniform ``1/M``.
      num_classes: C, background included.

    Returns:
      GED, a float; 0 for identical weighted sets.
    """
    w = _weights(hyp_weights, len(hyps), "hyp_weights")
    beta = _weights(annot_weights, len(annots), "annot_weights")
    d_sy = 1.0 - pairwise_iou(hyps, annots, num_classes)
    d_ss = 1.0 - pairwise_iou(hyps, hyps, num_classes)
    d_yy = 1.0 - pairwise_iou(annots, annots, num_classes)
    return float(2.0 * w @ d_sy @ beta - w @ d_ss @ w - beta @ d_yy @ beta)


def _is_uniform(w: np.ndarray) -> bool:
    return bool(np.allclose(w, 1.0 / len(w), rtol=0.0, atol=_WEIGHT_TOL))


def _hm_iou_hungarian(iou: np.ndarray) -> float:
    """Mean IoU of the best one-to-one matching to the annotations tiled ``N / M`` times."""
    n, m = iou.shape
    tiled = np.tile(iou, (1, n // m))
    rows, cols = scipy.optimize.linear_sum_assignment(tiled, maximize=True)
    return float(tiled[rows, cols].mean())


def _hm_iou_ot(iou: np.ndarray, w: np.ndarray, beta: np.ndarray) -> float:
    """``max_P Σ P·IoU`` over plans with marginals ``w`` and ``β``, solved exactly (HiGHS LP)."""
    n, m = iou.shape
    # Weights that are zero up to round-off (a collapsed router gives 1e-30) make HiGHS report
    # the problem infeasible; zero them and renormalise both marginals exactly.
    w = np.where(w < 1e-12, 0.0, w)
    w, beta = w / w.sum(), beta / beta.sum()
    # Row sums of the row-major flattened plan, then column sums; the last column constraint is
    # implied by the others (both marginals sum to 1), and dropping it avoids a rank-deficient
    # system that round-off can make infeasible.
    a_eq = np.concatenate(
        [np.kron(np.eye(n), np.ones((1, m))), np.kron(np.ones((1, n)), np.eye(m))[:-1]]
    )
    b_eq = np.concatenate([w, beta[:-1]])
    res = scipy.optimize.linprog(
        -iou.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0.0, None), method="highs"
    )
    if not res.success:
        raise RuntimeError(f"HM-IoU transport LP failed: {res.message}")
    return float(iou.ravel() @ res.x)


def hm_iou(
    hyps,
    hyp_weights,
    annots,
    annot_weights=None,
    *,
    num_classes: int = 8,
    method: str = "auto",
) -> float:
    """Hungarian-matched IoU between the weighted hypotheses and the annotations.

    ``"hungarian"``: the annotations are tiled ``N / M`` times and matched one-to-one to the
    hypotheses maximising total IoU (``scipy.optimize.linear_sum_assignment``); the score is the
    mean matched IoU. Valid only when both weight vectors are uniform and ``M`` divides ``N``.
    ``"ot"``: the exact transport plan ``P`` with marginals ``w`` and ``β`` maximising ``Σ P·IoU``
    (a linear programme, HiGHS); the score is ``Σ P·IoU``. With uniform weights and ``M | N`` the
    two coincide (Birkhoff), so ``"auto"`` picks Hungarian exactly then and OT otherwise.

    Args:
      hyps: ``[N, H, W]`` integer label maps (argmax of each hypothesis).
      hyp_weights: ``[N]`` hypothesis weights, summing to 1.
      annots: ``[M, H, W]`` integer label maps.
      annot_weights: ``[M]`` annotator weights summing to 1; ``None`` is uniform.
      num_classes: C, background included.
      method: ``"auto"``, ``"hungarian"`` or ``"ot"``.

    Returns:
      HM-IoU, a float in ``[0, 1]``; 1 when every hypothesis equals its matched annotation.
    """
    w = _weights(hyp_weights, len(hyps), "hyp_weights")
    beta = _weights(annot_weights, len(annots), "annot_weights")
    iou = pairwise_iou(hyps, annots, num_classes)
    n, m = iou.shape
    hungarian_ok = _is_uniform(w) and _is_uniform(beta) and n % m == 0
    if method == "auto":
        method = "hungarian" if hungarian_ok else "ot"
    if method == "hungarian":
        if not hungarian_ok:
            raise ValueError("Hungarian HM-IoU needs uniform weights and M dividing N")
        return _hm_iou_hungarian(iou)
    if method == "ot":
        return _hm_iou_ot(iou, w, beta)
    raise ValueError(f"unknown method {method!r}")


def dice_iou_per_class(pred, target, num_classes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of each foreground class between two label maps.

    ``Dice_c = 2|p=c ∩ t=c| / (|p=c| + |t=c|)``, ``IoU_c = |p=c ∩ t=c| / |p=c ∪ t=c|``. A class
    absent from both maps gets ``nan`` (undefined, not perfect), so ``np.nanmean`` averages only
    the classes that occur; a class in one map only gets 0.

    Args:
      pred: integer label map, any shape (``[H, W]``, or a stack pooled as one volume).
      target: integer label map of the same shape.
      num_classes: C, background included.

    Returns:
      ``(dice, iou)``, each ``[C - 1]`` float64, entry ``k`` for class ``k + 1``.
    """
    pred = _labels(pred, num_classes, "pred").ravel()
    target = _labels(target, num_classes, "target").ravel()
    if pred.shape != target.shape:
        raise ValueError(f"pred and target sizes differ: {pred.size} vs {target.size}")
    joint = np.bincount(pred * num_classes + target, minlength=num_classes**2)
    joint = joint.reshape(num_classes, num_classes).astype(np.float64)
    inter = np.diag(joint)[1:]
    n_pred = joint.sum(1)[1:]
    n_target = joint.sum(0)[1:]
    union = n_pred + n_target - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(union > 0, 2.0 * inter / (n_pred + n_target), np.nan)
        iou = np.where(union > 0, inter / union, np.nan)
    return dice, iou


def majority_consensus(annots, num_classes: int = 8) -> np.ndarray:
    """Per-pixel majority vote of several annotators' label maps.

    Rule: the label with the most votes wins. Background wins only if it strictly beats every
    bone, so a tie between background and bones goes to the bone, and a tie between bones goes
    to the smallest class id among them. With two annotators this makes the consensus the union
    of their bones; with an odd number of annotators and one bone it is the strict majority.

    Args:
      annots: ``[M, H, W]`` integer label maps.
      num_classes: C, background included.

    Returns:
      ``[H, W]`` label map with the dtype of ``annots``.
    """
    annots = _labels(annots, num_classes, "annots")
    votes = np.stack([(annots == c).sum(0) for c in range(num_classes)]).astype(np.float64)
    # Half a vote less than any bone with equal votes; argmax already breaks bone ties low.
    votes[0] -= 0.5
    return votes.argmax(0).astype(annots.dtype)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats over the last axis, probabilities clipped below at 1e-12."""
    return -(p * np.log(np.clip(p, _PROB_FLOOR, None))).sum(-1)


def uncertainty_maps(probs, weights) -> dict[str, np.ndarray]:
    """Per-pixel decomposition of the mixture's predictive uncertainty (natural log).

    ``total = H[Σ_i w_i p_i]``, ``expected = Σ_i w_i H[p_i]`` (the uncertainty inside each
    hypothesis) and ``mutual_information = total - expected ≥ 0`` (the disagreement between
    hypotheses; clipped at 0 against round-off).

    Args:
      probs: ``[N, H, W, C]`` per-hypothesis softmax probabilities.
      weights: ``[N]`` hypothesis weights summing to 1.

    Returns:
      Dict with ``"total_entropy"``, ``"expected_entropy"`` and ``"mutual_information"``, each
      ``[H, W]`` float64.
    """
    probs = np.asarray(probs, dtype=np.float64)
    w = _weights(weights, probs.shape[0], "weights")
    total = _entropy(np.tensordot(w, probs, axes=1))
    expected = np.tensordot(w, _entropy(probs), axes=1)
    return {
        "total_entropy": total,
        "expected_entropy": expected,
        "mutual_information": np.maximum(total - expected, 0.0),
    }


def seg_report(
    probs, weights, annots, num_classes: int = 8, *, annot_weights=None
) -> dict[str, float]:
    """All segmenter metrics of one image as a flat dict of floats.

    The mixture-mean prediction is ``argmax_c Σ_i w_i p_i``. Keys:

    - ``"{dice,iou}/consensus/{bone}"`` and ``"{dice,iou}/annotator_{m}/{bone}"``: per-bone
      scores of the mean prediction against the majority consensus (``majority_consensus``) and
      each annotator; ``nan`` for a bone absent from both maps.
    - ``"{dice,iou}/{target}/mean"``: ``nanmean`` over the bones of that target.
    - ``"ged"`` and ``"hm_iou"``: hypotheses are the argmax of each hypothesis.
    - ``"ece"``: :func:`~osteo_jax.eval.calibration.pixel_ece` of the mixture mean against the
      consensus, foreground pixels only; ``"ece_mose"``: MoSE's convention,
      :func:`~osteo_jax.eval.calibration.mose_foreground_ece` against the annotators.

    Dataset numbers are the mean of these dicts over images (``nanmean`` for the per-bone keys).

    Args:
      probs: ``[N, H, W, C]`` per-hypothesis softmax probabilities.
      weights: ``[N]`` hypothesis weights summing to 1.
      annots: ``[M, H, W]`` integer label maps.
      num_classes: C, background included.
      annot_weights: ``[M]`` annotator weights for GED and HM-IoU; ``None`` is uniform.

    Returns:
      Flat ``dict[str, float]``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[-1] != num_classes:
        raise ValueError(f"probs have {probs.shape[-1]} classes, expected {num_classes}")
    w = _weights(weights, probs.shape[0], "weights")
    annots = _labels(annots, num_classes, "annots")
    mean_probs = np.tensordot(w, probs, axes=1)
    pred = mean_probs.argmax(-1)
    consensus = majority_consensus(annots, num_classes)
    names = _class_names(num_classes)

    out: dict[str, float] = {}
    targets = [("consensus", consensus)] + [(f"annotator_{m}", y) for m, y in enumerate(annots)]
    for target_name, target in targets:
        scores = dict(
            zip(("dice", "iou"), dice_iou_per_class(pred, target, num_classes), strict=True)
        )
        for metric, per_class in scores.items():
            for name, value in zip(names, per_class, strict=True):
                out[f"{metric}/{target_name}/{name}"] = float(value)
            finite = per_class[~np.isnan(per_class)]
            out[f"{metric}/{target_name}/mean"] = float(finite.mean()) if finite.size else np.nan

    hyps = probs.argmax(-1)
    out["ged"] = ged(hyps, w, annots, annot_weights, num_classes=num_classes)
    out["hm_iou"] = hm_iou(hyps, w, annots, annot_weights, num_classes=num_classes)
    out["ece"] = pixel_ece(mean_probs, consensus)
    out["ece_mose"] = mose_foreground_ece(mean_probs, annots)
    return out

"""Evaluation: figures and metrics."""

from osteo_jax.eval.calibration import calibration_bins, mose_foreground_ece, pixel_ece
from osteo_jax.eval.preview import dataset_preview
from osteo_jax.eval.radiogrammetry.hypotheses import (
    measure_hypotheses,
    measure_prediction,
    weighted_spread,
)
from osteo_jax.eval.radiogrammetry.measure import measure_bone, measure_radiograph
from osteo_jax.eval.seg_metrics import (
    dice_iou_per_class,
    ged,
    hm_iou,
    majority_consensus,
    multiclass_iou,
    pairwise_iou,
    seg_report,
    uncertainty_maps,
)

__all__ = [
    "calibration_bins",
    "dataset_preview",
    "dice_iou_per_class",
    "ged",
    "hm_iou",
    "majority_consensus",
    "measure_bone",
    "measure_hypotheses",
    "measure_prediction",
    "measure_radiograph",
    "mose_foreground_ece",
    "multiclass_iou",
    "pairwise_iou",
    "pixel_ece",
    "seg_report",
    "uncertainty_maps",
    "weighted_spread",
]

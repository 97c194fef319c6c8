"""Losses: relaxed optimal transport between segmentation hypotheses and annotations."""

from osteo_jax.losses.ot import (
    balanced_ot_loss,
    capped_plan,
    cross_entropy_cost,
    gamma_schedule,
    relaxed_ot_loss,
    soft_iou_cost,
)

__all__ = [
    "balanced_ot_loss",
    "capped_plan",
    "cross_entropy_cost",
    "gamma_schedule",
    "relaxed_ot_loss",
    "soft_iou_cost",
]

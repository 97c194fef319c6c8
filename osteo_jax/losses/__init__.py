"""Losses: relaxed optimal transport for segmentation and self-supervised pretraining losses."""

from osteo_jax.losses.costs import cross_entropy_cost, soft_iou_cost
from osteo_jax.losses.expert_cap import expert_capped_plan
from osteo_jax.losses.ot import balanced_ot_loss, capped_plan, relaxed_ot_loss
from osteo_jax.losses.schedule import gamma_schedule
from osteo_jax.losses.ssl import balanced_assignment, nt_xent, supcon, swav, vicreg

__all__ = [
    "balanced_assignment",
    "balanced_ot_loss",
    "capped_plan",
    "cross_entropy_cost",
    "expert_capped_plan",
    "gamma_schedule",
    "nt_xent",
    "relaxed_ot_loss",
    "soft_iou_cost",
    "supcon",
    "swav",
    "vicreg",
]

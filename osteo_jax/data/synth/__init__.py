"""The synthetic cohort: latents, Bayes posteriors and ceilings, phantom, raster, X-ray, writer."""

from osteo_jax.data.synth.ceiling import CEILING_KEYS, read_ceilings, read_posteriors
from osteo_jax.data.synth.cohort import Cohort, hand_latent_auc, roc_auc, sample_cohort
from osteo_jax.data.synth.synthetic import Radiograph, render_subject, write_dataset

__all__ = [
    "CEILING_KEYS",
    "Cohort",
    "Radiograph",
    "hand_latent_auc",
    "read_ceilings",
    "read_posteriors",
    "render_subject",
    "roc_auc",
    "sample_cohort",
    "write_dataset",
]

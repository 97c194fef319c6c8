"""Data: the synthetic cohort generator and the dataset folder format."""

from osteo_jax.data.cohort import Cohort, hand_latent_auc, roc_auc, sample_cohort
from osteo_jax.data.folder import DatasetError, load_example
from osteo_jax.data.synthetic import Radiograph, render_subject, write_dataset

__all__ = [
    "Cohort",
    "DatasetError",
    "Radiograph",
    "load_example",
    "hand_latent_auc",
    "render_subject",
    "roc_auc",
    "sample_cohort",
    "write_dataset",
]

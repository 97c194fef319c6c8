"""Data: the dataset folder format and its readers; the synthetic cohort is in ``data.synth``."""

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import load_example

__all__ = ["DatasetError", "load_example"]

"""Evaluation: figures and metrics."""

from osteo_jax.eval.preview import dataset_preview

__all__ = ["dataset_preview"]

"""The demo experiment (what ``make demo`` / ``osteo-jax demo`` runs), as a config file.

    osteo-jax run --config experiments/demo.py --out runs/demo_copy
    osteo-jax run --config experiments/demo.py --data my_dataset --out runs/my_demo

Edit a field to run an ablation, e.g. ``cfg.protocol.ssl`` -> ``SSLConfig(method="vicreg")``.
Synthetic data: method development only, no clinical use.
"""

from osteo_jax.config import ExperimentConfig
from osteo_jax.pipeline.experiment import demo_config


def get_config() -> ExperimentConfig:
    """The demo's :class:`ExperimentConfig` (see :func:`demo_config` for the sizes)."""
    return demo_config()

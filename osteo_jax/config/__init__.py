"""Typed, frozen configuration for every stage of osteo_jax.

Every number that shapes data, a model or a run is a field here with a default; an ablation is
``dataclasses.replace(cfg, field=value)`` (nested: ``replace(cfg, cohort=replace(cfg.cohort,
r=0.9))``). Below the CLI, functions take these typed configs or plain keyword arguments, never
an untyped dict. One topic per module: label names (``labels``), the synthetic cohort
(``synth``), the segmenter and its segments (``segmenter``), the evaluation protocol
(``protocol``), the whole pipeline (``experiment``) and reading configs from files
(``loading``: :func:`from_dict`, :func:`load_config`); import every name from here.
"""

from osteo_jax.config.experiment import ExperimentConfig
from osteo_jax.config.labels import BONE_NAMES, CLASS_NAMES, ROI_REGIONS, WHO_CATEGORIES
from osteo_jax.config.loading import from_dict, load_config
from osteo_jax.config.protocol import (
    BackboneConfig,
    ClsConfig,
    CropConfig,
    ProtocolConfig,
    SSLConfig,
)
from osteo_jax.config.segmenter import OTConfig, SegConfig, SegmentConfig, SegTrainConfig
from osteo_jax.config.synth import AnnotatorConfig, CohortConfig, PhysicsConfig, SynthConfig

__all__ = [
    "BONE_NAMES",
    "CLASS_NAMES",
    "ROI_REGIONS",
    "WHO_CATEGORIES",
    "AnnotatorConfig",
    "BackboneConfig",
    "ClsConfig",
    "CohortConfig",
    "CropConfig",
    "ExperimentConfig",
    "OTConfig",
    "PhysicsConfig",
    "ProtocolConfig",
    "SSLConfig",
    "SegConfig",
    "SegTrainConfig",
    "SegmentConfig",
    "SynthConfig",
    "from_dict",
    "load_config",
]

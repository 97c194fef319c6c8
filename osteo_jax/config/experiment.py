"""The whole pipeline in one config: :class:`ExperimentConfig`."""

from __future__ import annotations

import dataclasses

from osteo_jax.config.protocol import ProtocolConfig
from osteo_jax.config.segmenter import SegmentConfig, SegTrainConfig
from osteo_jax.config.synth import SynthConfig


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The whole pipeline in one config: ``osteo-jax run --config`` and ``osteo-jax demo``.

    radiographs (given, or synthesised from ``synth``) → segmenter (``seg``) → bone segments
    (``segment``) → the evaluation protocol (``protocol``: SSL, classifier, 3 seeds) →
    radiogrammetry → report.

    Attributes:
      name: experiment name (report title).
      synth: the synthetic cohort made when no dataset folder is given; None: a dataset
        folder is required.
      seg: segmenter training.
      segment: how segments are cut from the segmenter's prediction.
      protocol: pretraining, classifier and evaluation protocol.
      report_subjects: subjects drawn in the report's segmentation panels.
      hypotheses: segmentation hypotheses (the heaviest of the mixture's ``K x S``; 0 = all)
        over which the report's radiogrammetry measures the 2MCI's spread.
    """

    name: str = "osteo_jax experiment"
    synth: SynthConfig | None = SynthConfig()
    seg: SegTrainConfig = SegTrainConfig()
    segment: SegmentConfig = SegmentConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    report_subjects: int = 4
    hypotheses: int = 0

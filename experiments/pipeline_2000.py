"""The demo pipeline on a 2,000-subject synthetic paper cohort (the large-cohort row).

    osteo-jax run --config experiments/pipeline_2000.py --out runs/pipeline_2000

Same sizes as ``make demo`` (512 px radiographs, 96 px K=4 x S=4 mixture segmenter with the
expert cap, 32 px segments, width-8 ResNet-18, 30-epoch linear probe, 3 seeds of a stratified
80/10/10 split: ~200 test subjects per seed), with the segmenter trained for 3 epochs over the
1,600 training radiographs (600 steps; the demo's 24 epochs over 153 are 456) and SimCLR for 10
epochs (~1,750 steps a seed, 5x the demo's 320). About 45 minutes on 2 CPU cores. Read its AUC
against the generator's Bayes ceilings and the clinical / radiogrammetry baselines in the
report, or with
``experiments/screening_gap.py --run runs/pipeline_2000 --target 2000``. Synthetic data: method
development only, no clinical claim.
"""

import dataclasses

from osteo_jax.config import CohortConfig, ExperimentConfig
from osteo_jax.pipeline.experiment import demo_config


def get_config() -> ExperimentConfig:
    """The demo's config with 2,000 subjects, a 3-epoch segmenter and 10 SimCLR epochs."""
    cfg = demo_config()
    synth = dataclasses.replace(cfg.synth, cohort=CohortConfig(n_subjects=2000))
    ssl = dataclasses.replace(cfg.protocol.ssl, epochs=10)
    return dataclasses.replace(
        cfg,
        name="demo sizes, 2,000-subject synthetic paper cohort",
        synth=synth,
        seg=dataclasses.replace(cfg.seg, epochs=3),
        protocol=dataclasses.replace(cfg.protocol, ssl=ssl),
    )

"""The demo with an expert-level cap on the OT plan: several experts stay alive (issue 12).

    osteo-jax run --config experiments/demo_experts.py --data runs/demo/data --out runs/demo_experts

The demo's segmenter (``demo_config``) ends with one live expert: at gamma = 1 one expert's S
samples take all the annotators' mass. Here no expert may take more than 0.34 of it
(``OTConfig.expert_gamma``), so at least 3 of the 4 carry mass, and the segmenter trains for 24
epochs instead of 12: at 12 the forced experts get their share before they segment well (Dice
0.70 against 0.87; ``experiments/seg_experts.py``), at 24 they match the single expert (Dice
0.925 against 0.922, GED 0.116 against 0.154, seed 0). Everything else is the demo's.
Synthetic data: method development only, no clinical use.
"""

import dataclasses

from osteo_jax.config import ExperimentConfig
from osteo_jax.pipeline.experiment import demo_config


def get_config() -> ExperimentConfig:
    """The demo's config with ``seg.ot.expert_gamma = 0.34`` and ``seg.epochs = 24``."""
    cfg = demo_config()
    seg = dataclasses.replace(
        cfg.seg, ot=dataclasses.replace(cfg.seg.ot, expert_gamma=0.34), epochs=24
    )
    return dataclasses.replace(cfg, seg=seg, name="demo, expert cap 0.34, 24 segmenter epochs")

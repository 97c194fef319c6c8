"""Ablation: a single-decoder U-Net segmenter instead of the mixture.

Segments cut with the single deterministic U-Net's prediction -> SimCLR (custom
multi-crop) -> linear probe.

    osteo-jax evaluate --config experiments/tables/unet_simclr.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables ablations --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). Paper (real data, 192 subjects): F1 0.62, AUC 0.80.

Expected, 3 seeds on 2 shared CPU cores: demo size AUC 0.70 ± 0.13 in 155 s (segments cached); cpu
size about 8 min (``experiments/cls_quality.py``, row ``full``: 492 s). Measured before the Bayes
ceilings existed and not re-run: on that 192-subject cohort the hand latent's AUC is 0.73 (not a
ceiling) and the image ceiling 0.875, as is the age + sex ceiling. Synthetic cohort: no clinical
result.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

from osteo_jax.config import ProtocolConfig

_presets = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("_presets.py"))))

MODEL = "single U-Net instead of the mixture"
ROI = "segmentation (single U-Net)"
SEGMENTS = "unet"
PAPER = {"f1": 0.62, "auc": 0.8, "accuracy": None}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.ssl_row(size, method="simclr", custom=True, name=MODEL)

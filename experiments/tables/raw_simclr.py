"""Ablation: the raw radiograph instead of bone segments (SimCLR, custom multi-crop).

The whole radiograph resized to the segment size -> SimCLR -> linear probe. Every
pixel of a raw image is > 0, so the custom rule accepts every crop.

    osteo-jax evaluate --config experiments/tables/raw_simclr.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables ablations --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). Paper: F1 -0.12 and AUC -0.07 from the full pipeline, i.e. F1 0.56, AUC 0.78.

Expected, 3 seeds on 2 shared CPU cores: demo size AUC 0.62 ± 0.12 in 98 s (segments cached); cpu
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

MODEL = "raw image instead of segments"
ROI = "raw image"
SEGMENTS = "raw"
PAPER = {"f1": 0.56, "auc": 0.78, "accuracy": None}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.ssl_row(size, method="simclr", custom=True, name=MODEL)

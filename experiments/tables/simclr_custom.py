"""Table 7: SimCLR with the custom multi-crop, the paper's full pipeline.

Mixture segmenter -> 7 bone segments -> SimCLR pretraining (every crop keeps
>= 10 % bone pixels) -> frozen backbone + linear probe. Also the reference row
of Tables 6 and 8 and of the ablations.

    osteo-jax evaluate --config experiments/tables/simclr_custom.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables 7,8 --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). Paper (real data, 192 subjects): F1 0.68, AUC 0.85, accuracy 0.82.

Expected, 3 seeds on 2 shared CPU cores: demo size AUC 0.67 ± 0.11 in 144 s (segments cached); cpu
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

MODEL = "SimCLR, custom multi-crop (paper)"
ROI = "segmentation (mixture)"
SEGMENTS = "mixture"
PAPER = {"f1": 0.68, "auc": 0.85, "accuracy": 0.82}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.ssl_row(size, method="simclr", custom=True, name=MODEL)

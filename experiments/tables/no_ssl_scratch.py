"""Table 6: no SSL, the backbone trained end to end from random initialisation.

Mixture segmenter -> 7 bone segments -> the SSL rows' backbone trained with the
labels only (supervised from scratch; no pretraining, hence no multi-crop). Also the
ablations' "no SSL, no custom multi-crop" row.

    osteo-jax evaluate --config experiments/tables/no_ssl_scratch.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables 6 --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). Paper (no SSL and no custom multi-crop): F1 0.53, AUC 0.67, accuracy 0.72.

Expected, 3 seeds on 2 shared CPU cores: demo size AUC 0.61 ± 0.09 in 138 s (segments cached); cpu
size about 15 min (``experiments/cls_quality.py``, row ``scratch``: 912 s). Measured before the
Bayes ceilings existed and not re-run: on that 192-subject cohort the hand latent's AUC is 0.73 (not
a ceiling) and the image ceiling 0.875, as is the age + sex ceiling. Synthetic cohort: no clinical
result.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

from osteo_jax.config import ProtocolConfig

_presets = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("_presets.py"))))

MODEL = "no SSL: trained from scratch"
ROI = "segmentation (mixture)"
SEGMENTS = "mixture"
PAPER = {"f1": 0.53, "auc": 0.67, "accuracy": 0.72}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.supervised_row(size, name=MODEL, mode="finetune")

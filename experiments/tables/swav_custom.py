"""Table 7: SwAV with the custom multi-crop.

Mixture segmenter -> 7 bone segments -> SwAV pretraining
(every crop keeps >= 10 % bone pixels) -> frozen backbone + linear probe.
Differs from the other Table 7 rows only in ``ssl.method`` and ``ssl.crops.custom``.

    osteo-jax evaluate --config experiments/tables/swav_custom.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables 7 --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). Paper (real data, 192 subjects): F1 0.54, AUC 0.68.

Expected, 3 seeds on 2 shared CPU cores: demo size AUC 0.63 ± 0.18 in 150 s (segments cached); cpu
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

MODEL = "SwAV, custom multi-crop"
ROI = "segmentation (mixture)"
SEGMENTS = "mixture"
PAPER = {"f1": 0.54, "auc": 0.68, "accuracy": None}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.ssl_row(size, method="swav", custom=True, name=MODEL)

"""Table 7: SupCon with the custom multi-crop.

Mixture segmenter -> 7 bone segments -> SupCon pretraining
(every crop keeps >= 10 % bone pixels) -> frozen backbone + linear probe.
Differs from the other Table 7 rows only in ``ssl.method`` and ``ssl.crops.custom``.

    osteo-jax evaluate --config experiments/tables/supcon_custom.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables 7 --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). The paper reports no number for this row (it says only that the custom
multi-crop beat the ordinary one for every method).

Expected, 3 seeds on 2 shared CPU cores: demo size AUC 0.64 ± 0.09 in 135 s (segments cached); cpu
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

MODEL = "SupCon, custom multi-crop"
ROI = "segmentation (mixture)"
SEGMENTS = "mixture"
PAPER = {"f1": None, "auc": None, "accuracy": None}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.ssl_row(size, method="supcon", custom=True, name=MODEL)

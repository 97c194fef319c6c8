"""Table 8: DeepDXA-like baseline, segments -> ResNet-18 trained end to end.

Mixture segmenter -> 7 bone segments -> ResNet-18 trained with the labels (no SSL),
as Ho et al.'s DeepDXA (segmentation + ResNet-18). At the demo and cpu sizes it is the
same configuration as ``no_ssl_scratch`` (the runner computes it once).

    osteo-jax evaluate --config experiments/tables/deepdxa.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables 8 --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). Paper (DeepDXA): F1 0.51, AUC 0.66, accuracy 0.67.

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

MODEL = "DeepDXA-like (Ho et al.)"
ROI = "segmentation (mixture)"
SEGMENTS = "mixture"
PAPER = {"f1": 0.51, "auc": 0.66, "accuracy": 0.67}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.supervised_row(size, name=MODEL, backbone="resnet18", mode="finetune")

"""Table 8: crop-based VGG baseline with an automatic ROI (as Hsieh et al.).

Boxes around the distal radius + ulna and around MC2-MC4, taken from the mixture
segmenter's prediction (an automatic landmark), cropped with the background kept ->
VGG trained end to end; subject probability = mean of its two crops.

    osteo-jax evaluate --config experiments/tables/vgg_landmark_crop.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables 8 --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). Paper (Hsieh et al., VGG16, landmark crop): F1 0.48, AUC 0.65, accuracy 0.65.

Expected, 3 seeds on 2 shared CPU cores: demo size not run yet (segments cached); cpu size not
measured. Synthetic cohort: no clinical result.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

from osteo_jax.config import ProtocolConfig

_presets = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("_presets.py"))))

MODEL = "crop VGG, landmark ROI (Hsieh et al.)"
ROI = "landmark crop (segmenter boxes, background kept)"
SEGMENTS = "landmark_crop"
PAPER = {"f1": 0.48, "auc": 0.65, "accuracy": 0.65}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.supervised_row(
        size, name=MODEL, backbone="vgg", mode="finetune", bones=_presets.CROP_NAMES
    )

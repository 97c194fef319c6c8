"""Table 8: crop-based VGG baseline with a manual ROI (as Jang et al.).

Boxes around the distal radius + ulna and around MC2-MC4, taken from a human's masks
(annotator_0), cropped from the radiograph with the background kept (no masking) ->
VGG trained end to end; subject probability = mean of its two crops.

    osteo-jax evaluate --config experiments/tables/vgg_manual_crop.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables 8 --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). Paper (Jang et al., VGG16, manual crop): F1 0.43, AUC 0.63, accuracy 0.62.

Expected, 3 seeds on 2 shared CPU cores: demo size AUC 0.54 ± 0.15 in 29 s (segments cached); cpu
size not measured. Measured before the Bayes ceilings existed and not re-run: on that 192-subject
cohort the hand latent's AUC is 0.73 (not a ceiling) and the image ceiling 0.875, as is the age +
sex ceiling. Synthetic cohort: no clinical result.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

from osteo_jax.config import ProtocolConfig

_presets = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("_presets.py"))))

MODEL = "crop VGG, manual ROI (Jang et al.)"
ROI = "manual crop (annotator boxes, background kept)"
SEGMENTS = "manual_crop"
PAPER = {"f1": 0.43, "auc": 0.63, "accuracy": 0.62}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.supervised_row(
        size, name=MODEL, backbone="vgg", mode="finetune", bones=_presets.CROP_NAMES
    )

"""Table 6: no SSL, a linear probe on the randomly initialised backbone.

Mixture segmenter -> 7 bone segments -> frozen random backbone + linear probe: what
the architecture alone gives, the floor the SSL rows should be read against.

    osteo-jax evaluate --config experiments/tables/no_ssl_probe.py --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables 6 --size demo --out OUT

``SEG``: segments cut as ``SEGMENTS`` says (``experiments/paper_tables.py`` cuts and caches
them). The paper reports no number for this row.

Expected, 3 seeds on 2 shared CPU cores: demo size not run yet (segments cached); cpu size not
measured. Synthetic cohort: no clinical result.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

from osteo_jax.config import ProtocolConfig

_presets = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("_presets.py"))))

MODEL = "no SSL: linear probe on random init"
ROI = "segmentation (mixture)"
SEGMENTS = "mixture"
PAPER = {"f1": None, "auc": None, "accuracy": None}


def get_config(size: str = "cpu") -> ProtocolConfig:
    """This row at ``size`` ("demo", "cpu" or "paper")."""
    return _presets.supervised_row(size, name=MODEL, mode="probe")

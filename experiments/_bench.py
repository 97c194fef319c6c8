"""How the benchmarks of ``experiments/`` report a result: printed, then written as JSON.

Not a script: ``bench_seg.py`` and ``bench_synth.py`` load it by path (``runpy.run_path``), as
``experiments`` is not a package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def report(result: dict, out: str | os.PathLike, *, key_width: int) -> None:
    """Prints ``result`` one ``key value`` line each, writes it to ``out`` as JSON, says so.

    Args:
      result: flat dict of JSON-serialisable values.
      out: the JSON file; its folder is created if missing.
      key_width: width the keys are padded to in the printout.
    """
    for k, v in result.items():
        print(f"{k:{key_width}s} {v}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")

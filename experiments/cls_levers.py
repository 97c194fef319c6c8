r"""Classification levers on a finished run's segmenter: one config override per row, same splits.

    .venv/bin/python experiments/cls_levers.py --run runs/demo NAME KEY=VALUE ...
    .venv/bin/python experiments/cls_levers.py --run runs/demo stored \
        "segment.intensity='stored'" "protocol.cls.threshold='youden'"
    .venv/bin/python experiments/cls_levers.py --run runs/demo --ssl-from stored stored_feat \
        "segment.intensity='stored'" "protocol.cls.aggregate='features'"

``--ssl-from ROW`` reuses the finished pretraining of row ``WORK/cls_ROW`` (copied; its SSL
settings must be the same), so the two rows differ only after SSL: a paired comparison of
the classifier settings, minutes instead of a new pretraining.

Re-cuts the segments of ``RUN/data`` with ``RUN/seg`` (the run's segmenter) when the segment
settings differ from the run's (kept under ``--work``, keyed by the settings), runs the protocol
of the run's config with the overrides (``KEY`` a dotted path into
:class:`~osteo_jax.config.ExperimentConfig`, ``VALUE`` a Python literal) into
``WORK/cls_NAME`` and scores the baselines and Bayes posteriors on its splits with the run's
``radiogrammetry.json``; prints every row's AUC and writes ``WORK/res_NAME.json``.

Measured on the demo run (2026-12-01, 192 subjects; the image model's AUC with its 95 %
interval; the earlier demo: 12-epoch segmenter with one live expert, 5 SimCLR epochs; 3 seeds x 19
test subjects; 2 contended cores, 4-7 min a row):

| row | image model AUC | accuracy |
|---|---|---|
| demo settings | 0.675 (0.50-0.85) | 0.53 |
| threshold chosen on validation (Youden) | 0.675 (0.50-0.85) | 0.53 |
| stored grey scale (*) | 0.607 (0.33-0.84) | 0.60 |
| stored + per-bone logistic head (*) | 0.709 (0.47-0.89) | 0.63 |
| stored + no SSL, fine-tuned from scratch (*) | 0.654 (0.45-0.84) | 0.70 |
| per-bone logistic head | 0.483 (0.28-0.70) | 0.37 |

Re-measured on ``runs/demo3`` (2026-12-01/02: the 24-epoch capped segmenter with 3 live experts,
20 SimCLR epochs; ``--work runs/lev``, ``runs/lev2``; each row pinned to one core, one row per
core at a time), 3 seeds x 19 test subjects and 5-fold cross-validation over all 192
(``protocol.cls.folds=5``):

| row | 3 seeds: AUC | acc. | 5 folds: AUC | acc. |
|---|---|---|---|---|
| demo settings (2 cores) | 0.757 (0.61-0.89) | 0.68 | - | - |
| Youden threshold | 0.757 (0.61-0.89) | 0.70 | 0.600 (0.51-0.69) | 0.63 |
| Youden + per-bone logistic head | 0.731 (0.57-0.85) | 0.68 | - | - |
| Youden + stored, 16x too dark (*) | 0.791 (0.66-0.91) | 0.72 | 0.646 (0.57-0.72) | 0.59 |
| the same, 2 cores (``make demo``) (*) | 0.672 (0.48-0.86) | 0.67 | - | - |
| Youden + stored (12-bit, fixed) | 0.577 (0.27-0.85) | 0.60 | 0.617 (0.52-0.71) | 0.53 |
| the same, no intensity jitter | - | - | 0.623 (0.53-0.71) | 0.56 |
| the same, fine-tuned from SSL | - | - | 0.644 (0.56-0.73) | 0.69 |

On the same 5 folds: radiogrammetry 0.729, clinical 0.861, Bayes image posterior 0.875. Paired
(5 folds, 192 subjects): stored (12-bit) - percentile +0.018 (-0.070, +0.108).

Grey levels and the feature head (2026-12-02; ``BackboneConfig.grey_levels``,
``ClsConfig.aggregate="features"``; stored 12-bit segments; the grey rows share one SSL run per
part through ``--ssl-from``; 2,000 subjects: ``--run runs/pipeline_2000 --work runs/lev2000``,
3 seeds x ~200 test subjects, 2 cores; 192: ``--run runs/demo3 --work runs/lev2``, Youden
threshold, 5 folds, one core):

| row | 2,000: AUC | 192, 5 folds: AUC |
|---|---|---|
| percentile segments, probe (the run's settings) | 0.776 (0.73-0.82) | 0.600 (0.51-0.69) |
| stored, probe | 0.770 (0.73-0.81) | 0.617 (0.52-0.71) |
| stored, feature head (same SSL as the probe) | 0.769 (0.72-0.81) | 0.605 (0.51-0.70) |
| stored, SSL with grey levels, probe without (**) | 0.768 (0.72-0.80) | 0.565 (0.48-0.67) |
| stored + grey levels, probe | 0.796 (0.74-0.84) | 0.639 (0.56-0.74) |
| stored + grey levels, feature head | 0.799 (0.73-0.85) | 0.689 (0.60-0.78) |

Paired at 2,000: grey probe - percentile probe +0.020 (+0.004, +0.035); grey feature head -
stored probe +0.029 (-0.006, +0.068); feature head - probe, both with grey levels, +0.002
(-0.011, +0.018). At 192: grey feature head - stored probe +0.072 (-0.011, +0.155). Fusion with
age and sex stays at 0.885-0.888 (clinical 0.870). On the demo's own protocol (192, 3 seeds x 19
test subjects, Youden; ``--work runs/lev2 grey_feat_3s``, 2026-12-01) the grey feature head
gives 0.735 (0.56-0.89), accuracy 0.63, against the demo settings' 0.757: the demo keeps its
settings. (**) Overriding only
``protocol.ssl.backbone`` used to leave the classifier on ``protocol.backbone``; fixed in
``pipeline.protocol.classifier_backbone``; that row measured the old behaviour.

(*) Before commit efc9025 the dataset's 12-bit PNGs were read as 16-bit, so stored-scale segments
were divided by 65535 instead of 4095 (bone at 0.01-0.04; SimCLR's loss hardly moved). Those
rows measured that, not the detector's scale.

Every difference is inside the interval of its test pool; none of these levers separates from
the demo settings at this size, so no default changed. The same settings give a different
number on a different core count: XLA's CPU reductions run in another order with another
thread count, SimCLR's loss trajectories part after ~100 steps, and the probe's AUC moved by
0.12 (paired -0.03, +0.33; one seed 0.83 against 0.55). A 57-subject 3-seed figure is a draw
of that spread; read the 5-fold rows. Synthetic data: these numbers say how well the method
recovers what the generator planted, not clinical performance.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from osteo_jax.config import ExperimentConfig, from_dict
from osteo_jax.pipeline.comparison import compare_rows
from osteo_jax.pipeline.extract import extract_segments
from osteo_jax.pipeline.protocol import run_protocol


def override(obj, path: str, value):
    """``obj`` with the dataclass field at dotted ``path`` replaced by ``value``."""
    head, *rest = path.split(".", 1)
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: override(getattr(obj, head), rest[0], value)})


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a finished osteo-jax run / demo folder")
    p.add_argument("--work", default="runs/cls_levers", help="output folder")
    p.add_argument("--bootstrap", type=int, default=300)
    p.add_argument(
        "--ssl-from",
        metavar="ROW",
        help="reuse the SSL pretraining of an earlier row WORK/cls_ROW (copied, same SSL "
        "settings required): the rows then differ only after pretraining, a paired comparison",
    )
    p.add_argument("name")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE, e.g. protocol.cls.mode='finetune'")
    args = p.parse_args(argv)
    run, work = Path(args.run), Path(args.work)
    cfg = from_dict(ExperimentConfig, json.loads((run / "config.json").read_text())["config"])
    for kv in args.overrides:
        key, value = kv.split("=", 1)
        cfg = override(cfg, key, ast.literal_eval(value))
    t0 = time.time()
    seg_dir = run / "segments"
    run_seg = json.loads((seg_dir / "segments.json").read_text())["segment"]
    if dataclasses.asdict(cfg.segment) != run_seg:
        key = json.dumps(dataclasses.asdict(cfg.segment), sort_keys=True)
        seg_dir = work / ("segments_" + hashlib.md5(key.encode()).hexdigest()[:8])
        if not (seg_dir / "segments.json").exists():
            extract_segments(
                run / "data", seg_dir, source=str(run / "seg"), cfg=cfg.segment, overwrite=True
            )
    out = work / f"cls_{args.name}"
    proto = cfg.protocol
    ssl_dir = None
    if args.ssl_from:  # earlier row's WORK/cls_ROW/<part>/ssl -> WORK/ssl_NAME/<part>
        ssl_dir = work / f"ssl_{args.name}"
        source = work / f"cls_{args.ssl_from}"
        found = source.iterdir() if source.is_dir() else ()
        parts = sorted(d.name for d in found if (d / "ssl" / "config.json").exists())
        if not parts:
            print(f"cls_levers: {source}: no finished SSL run to reuse", file=sys.stderr)
            raise SystemExit(2)
        for part in parts:
            if not (ssl_dir / part).exists():
                shutil.copytree(source / part / "ssl", ssl_dir / part)
    run_protocol(
        seg_dir, out, ssl=proto.ssl, cls=proto.cls, backbone=proto.backbone, name=args.name,
        ssl_dir=ssl_dir, progress=False, overwrite=True,
    )  # fmt: skip
    comp = compare_rows(
        out, run / "data", radiogrammetry=run / "radiogrammetry.json", segments=seg_dir,
        n_boot=args.bootstrap,
    )  # fmt: skip
    rows = {
        r: {
            "auc": v["summary"]["auc"]["mean"],
            "ci95": v["summary"]["auc"]["ci95"],
            "accuracy": v["summary"]["accuracy"]["mean"],
        }
        for r, v in comp["rows"].items()
    }
    for r, v in rows.items():
        lo, hi = v["ci95"]
        print(f"{r:62s} {v['auc']:.3f} ({lo:.2f}-{hi:.2f}) acc {v['accuracy']:.2f}")
    res = {"name": args.name, "overrides": args.overrides, "wall_s": time.time() - t0, "rows": rows}
    (work / f"res_{args.name}.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()

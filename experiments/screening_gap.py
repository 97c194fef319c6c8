r"""Issue 12's targets read off finished runs: every row against the Bayes ceilings and baselines.

    .venv/bin/python experiments/screening_gap.py --run runs/demo --target demo
    .venv/bin/python experiments/screening_gap.py --run runs/pipeline_2000 --target 2000

Reads a run folder of ``osteo-jax run`` / ``demo`` (``cls/comparison.json``, written by
:func:`osteo_jax.pipeline.comparison.compare_rows`, and ``run_summary.json``) and prints, for
each image-only row, its AUC with the 95 % interval, the gap to the cohort's image Bayes ceiling
and whether it meets the target, and for each row with age and sex the same against the image +
clinical ceiling and the paired difference to the clinical baseline. Writes the same as JSON
(``--json``, default ``RUN/screening_gap.json``). Targets (issue 12):

* ``2000`` (2,000 subjects, paper preset, r = 0.6): image-only AUC >= image ceiling - 0.03;
  fusion >= image + clinical ceiling - 0.03 and above the clinical baseline with a paired 95 %
  interval that excludes 0;
* ``192`` (paper preset, k-fold or 3 seeds): image-only AUC >= image ceiling - 0.06 and not below
  the radiogrammetry baseline;
* ``demo`` (``make demo`` within 10 min): image-only AUC >= image ceiling - 0.08 with the
  bootstrap interval's lower end above 0.5 by a clear margin (>= 0.6 here), accuracy >= the
  majority-class rate, >= 3 experts with a mean weight >= 0.05.

Measured (2026-12-01, 2 cores): see the closing note of issue 12 and README's *Reading a result*.
Synthetic data: these numbers say how well the method recovers what the generator planted; they
are not clinical performance.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from osteo_jax.data.folder import dumps_json, nulls_to_nan
from osteo_jax.eval.headline import CLINICAL_ROW, RADIO_ROW

GAPS = {"2000": 0.03, "192": 0.06, "demo": 0.08}
CLEAR_MARGIN = 0.6  # "bootstrap interval above 0.5 by a clear margin": its lower end >= this
ALIVE = 3


def _is_image_only(row: str) -> bool:
    """Rows that read no recorded age or sex (the image-age row reads ages only in training)."""
    covariates = row.rstrip(")").endswith("age, sex") or row.startswith(("fusion", CLINICAL_ROW))
    return not covariates


def read_targets(run: Path, target: str) -> dict:
    """Every row of ``run``'s comparison against the target's ceilings and baselines."""
    comp = nulls_to_nan(json.loads((run / "cls" / "comparison.json").read_text()))
    summary_path = run / "run_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    ceil = comp["ceilings"]
    gap = GAPS[target]
    prevalence = float(ceil.get("prevalence", float("nan")))
    majority = max(prevalence, 1 - prevalence)
    radio = comp["rows"].get(RADIO_ROW, {}).get("summary", {}).get("auc", {}).get("mean")
    rows = {}
    for name, row in comp["rows"].items():
        s = row["summary"]
        auc, lo, hi = s["auc"]["mean"], *s["auc"]["ci95"]
        image_only = _is_image_only(name)
        ceiling = ceil["image_ceiling_auc" if image_only else "image_clinical_ceiling_auc"]
        vs = comp["vs_clinical"].get(name) or {}
        rec = {
            "auc": auc,
            "ci95": [lo, hi],
            "accuracy": s["accuracy"]["mean"],
            "image_only": image_only,
            "ceiling": ceiling,
            "gap_to_ceiling": ceiling - auc,
            "meets_auc_target": auc >= ceiling - gap,
            "vs_clinical": {k: vs.get(k) for k in ("difference", "ci95", "excludes_zero")},
        }
        if target == "demo":
            rec["interval_clear_of_half"] = lo >= CLEAR_MARGIN
            rec["accuracy_at_least_majority"] = s["accuracy"]["mean"] >= majority
        if target == "192" and image_only and radio is not None:
            rec["not_below_radiogrammetry"] = auc >= radio
        if target == "2000" and not image_only and "Bayes" not in name:
            d = rec["vs_clinical"]
            rec["above_clinical"] = bool(d["excludes_zero"]) and (d["difference"] or 0) > 0
        rows[name] = rec
    seg = summary.get("seg_val", {})
    alive = seg.get("experts_alive")
    return {
        "run": str(run),
        "target": target,
        "gap": gap,
        "ceilings": {k: ceil[k] for k in ("image_ceiling_auc", "image_clinical_ceiling_auc")},
        "majority_rate": majority,
        "experts_alive": alive,
        "experts_target_met": None if alive is None else alive >= ALIVE,
        "wall_s": summary.get("wall_s"),
        "rows": rows,
    }


def _print(res: dict) -> None:
    c = res["ceilings"]
    print(
        f"{res['run']}: target {res['target']} (gap {res['gap']}); image ceiling "
        f"{c['image_ceiling_auc']:.3f}, image + clinical ceiling "
        f"{c['image_clinical_ceiling_auc']:.3f}; majority rate {res['majority_rate']:.2f}; "
        f"experts alive {res['experts_alive']}; wall {res['wall_s']} s"
    )
    print(f"{'row':64s} {'AUC':>6s} {'95 % CI':>13s} {'gap':>6s} met  Δ vs clinical (95 % CI)")
    for name, r in res["rows"].items():
        d = r["vs_clinical"]
        delta = (
            f"{d['difference']:+.3f} ({d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f})"
            if d.get("ci95") and not math.isnan(d["difference"])
            else "–"
        )
        print(
            f"{name:64s} {r['auc']:6.3f} {r['ci95'][0]:6.3f}-{r['ci95'][1]:.3f} "
            f"{r['gap_to_ceiling']:6.3f} {'yes' if r['meets_auc_target'] else 'no ':3s}  {delta}"
        )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a finished osteo-jax run / demo folder")
    p.add_argument("--target", required=True, choices=tuple(GAPS))
    p.add_argument("--json", default=None, help="output (default RUN/screening_gap.json)")
    args = p.parse_args(argv)
    run = Path(args.run)
    res = read_targets(run, args.target)
    _print(res)
    out = Path(args.json) if args.json else run / "screening_gap.json"
    out.write_text(dumps_json(res, indent=1) + "\n")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()

r"""Does ``predict`` give the score the headline table evaluated? The stacked row, deployed.

    .venv/bin/python experiments/stacked_predict.py --run runs/demo

Takes a finished run (``osteo-jax run`` / ``demo``) whose comparison saved stackers
(``cls/<part>/stacker.json``), runs :func:`osteo_jax.pipeline.predict.predict_images` on every
test subject's radiograph(s), and for each protocol part sets that part's own model's outputs
(``probability_models[k]``, ``probability_stacked_models[k]``) against what the comparison
scored for the same subjects (``test_predictions.csv``; the ``image model + measurements
(stacked)`` row of ``comparison.json``): the AUC of both, their Pearson r and largest absolute
difference. ``predict`` segments with its own latent draws (the pipeline's radiogrammetry with
others) and reads each file on its own, so the numbers agree closely rather than exactly.

Prints a table and writes ``--json`` (default ``RUN/stacked_predict.json``; a file this
script did not write is never replaced). Bad input (not a run, no stackers, no ``data/``, an
unreadable image) is one line and exit 2. Synthetic data: nothing here is clinical.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np

from osteo_jax.data.folder import IMAGES_CSV, dumps_json, read_csv
from osteo_jax.eval.headline import STACKED_ROW

WRITTEN_BY = "experiments/stacked_predict.py"


def _fail(message: str) -> NoReturn:
    print(f"stacked_predict: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _auc(y, p) -> float:
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y), np.asarray(p, float)
    ok = np.isfinite(p)
    return float(roc_auc_score(y[ok], p[ok])) if len(set(y[ok])) == 2 else float("nan")


def _agreement(y, evaluated, deployed) -> dict:
    a, b = np.asarray(evaluated, float), np.asarray(deployed, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return {
        "n": int(ok.sum()),
        "auc_evaluated": _auc(y, a),
        "auc_deployed": _auc(y, b),
        "pearson_r": float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan"),
        "max_abs_diff": float(np.abs(a[ok] - b[ok]).max()) if ok.any() else float("nan"),
    }


def check(run: Path) -> dict:
    """Per part: the image model and the stacked score, evaluated vs deployed (see above)."""
    from osteo_jax.pipeline.predict import PredictModel, predict_images

    cls = run / "cls"
    try:
        metrics = json.loads((cls / "cls_metrics.json").read_text())
        rows = json.loads((cls / "comparison.json").read_text())["rows"]
        images = read_csv(run / "data" / IMAGES_CSV)
    except (OSError, ValueError) as e:
        _fail(f"{run}: not a finished run with its data/ folder ({type(e).__name__}: {e})")
    if STACKED_ROW not in rows:
        _fail(f"{cls / 'comparison.json'}: no {STACKED_ROW!r} row")
    try:
        model = PredictModel(run)
    except ValueError as e:
        _fail(str(e))
    if model.stackers is None:
        _fail(model.stacker_reason)
    paths = {}
    for r in images:
        paths.setdefault(r["subject_id"], []).append(run / "data" / r["path"])
    parts, out = metrics["per_seed"], {"run": str(run), "parts": []}
    tested = sorted(
        {s for k in range(len(parts)) for s in rows[STACKED_ROW]["per_part"][k]["subject_id"]}
    )
    owned = [(s, f) for s in tested for f in paths[s]]
    print(f"predict on {len(owned)} radiographs of {len(tested)} test subjects ...", flush=True)
    res = predict_images([f for _, f in owned], model)
    by_subject: dict[str, list[dict]] = {}
    for (s, _), r in zip(owned, res, strict=True):
        by_subject.setdefault(s, []).append(r)

    def mean_of(s, key, k):
        vals = [r[key][k] for r in by_subject[s] if r.get(key) is not None]
        return float(np.mean(vals)) if vals else float("nan")

    for k, part in enumerate(parts):
        name = part.get("dir", f"seed{part['seed']}")
        stacked = rows[STACKED_ROW]["per_part"][k]
        ids, y = stacked["subject_id"], stacked["label"]
        test = {
            r["subject_id"]: float(r["probability"])
            for r in read_csv(cls / name / "test_predictions.csv")
        }
        out["parts"].append(
            {
                "part": name,
                "image_model": _agreement(
                    y, [test[s] for s in ids], [mean_of(s, "probability_models", k) for s in ids]
                ),
                "stacked": _agreement(
                    y,
                    stacked["probability"],
                    [mean_of(s, "probability_stacked_models", k) for s in ids],
                ),
            }
        )
    return out


def _print(res: dict) -> None:
    print("| part | score | n | AUC evaluated | AUC deployed | r | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for p in res["parts"]:
        for key in ("image_model", "stacked"):
            a = p[key]
            print(
                f"| {p['part']} | {key} | {a['n']} | {a['auc_evaluated']:.3f} | "
                f"{a['auc_deployed']:.3f} | {a['pearson_r']:.3f} | {a['max_abs_diff']:.3f} |"
            )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a finished run folder with stackers")
    p.add_argument("--json", default=None, help="output (default RUN/stacked_predict.json)")
    args = p.parse_args(argv)
    run = Path(args.run)
    out = Path(args.json) if args.json else run / "stacked_predict.json"
    if out.exists():  # only a file this script wrote is replaced
        try:
            ours = json.loads(out.read_text()).get("written_by") == WRITTEN_BY
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            _fail(f"{out}: exists and was not written by this script; choose another --json")
    try:
        res = check(run)
    except (OSError, ValueError, KeyError) as e:  # DatasetError is a ValueError
        _fail(f"{run}: {type(e).__name__}: {e}")
    _print(res)
    out.write_text(dumps_json({"written_by": WRITTEN_BY, **res}) + "\n")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()

r"""What a linear model reads from the same segments: a yardstick for the deep image model.

    .venv/bin/python experiments/segment_linear.py --segments runs/demo/segments \
        --cls runs/lev/cls_pct_youden_f5 --out runs/segment_linear/pct_f5

For each part (seed or fold) of a finished protocol folder (``--cls``, e.g. ``osteo-jax
evaluate --folds 5`` or a row of ``experiments/cls_levers.py``), fits on that part's training
and validation subjects a logistic regression (L2 strength chosen by inner 5-fold
cross-validation) on the first 20 principal components of the subject's 7 segments' pixels
(standardised, missing bones zero), or on another feature set (``--features``), and scores the
part's test subjects. Writes a protocol-shaped folder (``OUT/<part>/test_predictions.csv``,
``OUT/cls_metrics.json``) and ``OUT/segment_linear.json`` with the AUC (95 % interval: the
protocol's bootstrap) and the paired difference to the protocol's image model on the same
subjects (:func:`~osteo_jax.pipeline.comparison.compare_runs`). Seconds on a CPU.

Feature sets: ``pixels`` (every pixel of the 7 segments), ``profile`` (each segment's shaft
cross-section: the mean of its middle rows), ``grey`` (each bone's mean grey level).

Measured 2026-12-01 on the demo's segments (``runs/demo3``: the 24-epoch capped segmenter; 5
folds of all 192 subjects, the folds of ``experiments/cls_levers.py``'s 5-fold rows): see the
closing note of issue 12 and README's *Where the gap to the image ceiling is*. Synthetic data:
these numbers say how well a method recovers what the generator planted, not clinical
performance.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import dumps_json
from osteo_jax.data.segments import load_segments
from osteo_jax.eval.cls_stats import summarise_folds, summarise_seeds
from osteo_jax.pipeline.comparison import compare_runs

FEATURES = ("pixels", "profile", "grey")


def subject_features(images: np.ndarray, kind: str) -> np.ndarray:
    """``[n, F]`` features of ``[n, B, S, S]`` segments (one radiograph per subject)."""
    n, _, s, _ = images.shape
    if kind == "pixels":
        return images.reshape(n, -1)
    if kind == "profile":
        return images[:, :, s // 4 : 3 * s // 4, :].mean(2).reshape(n, -1)
    if kind == "grey":
        bone = images > 0
        return (images * bone).sum((2, 3)) / np.maximum(bone.sum((2, 3)), 1)
    raise ValueError(f"features must be one of {FEATURES}, got {kind!r}")


def fit_predict(x_train, y_train, x_test, seed: int) -> np.ndarray:
    """P(osteoporosis) of ``x_test`` from a PCA(20) + cross-validated logistic regression."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()]
    if x_train.shape[1] > 50:
        steps.append(PCA(20, random_state=seed))
    steps.append(LogisticRegressionCV(Cs=8, cv=5, max_iter=5000))
    model = make_pipeline(*steps).fit(x_train, y_train)
    return model.predict_proba(x_test)[:, 1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--segments", required=True, help="segments folder of the protocol run")
    p.add_argument("--cls", required=True, help="finished protocol folder (its splits)")
    p.add_argument("--out", required=True, help="output folder (written by this script)")
    p.add_argument("--features", default="pixels", choices=FEATURES)
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (DatasetError, OSError, ValueError, KeyError) as e:  # one line, exit 2
        print(f"segment_linear: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> dict:
    """The fits and the outputs of :func:`main` (errors name the file)."""
    seg, cls, out = load_segments(args.segments), Path(args.cls), Path(args.out)
    if out.exists() and not (out / "segment_linear.json").exists() and any(out.iterdir()):
        raise ValueError(f"{out}: holds files this script did not write; choose another --out")
    metrics = cls / "cls_metrics.json"
    try:
        meta = json.loads(metrics.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{metrics}: not a finished protocol folder ({e})") from e
    parts = [q.get("dir", f"seed{q['seed']}") for q in meta["per_seed"]]
    folds = int(meta["config"]["cls"].get("folds", 0))
    images = np.where(seg.valid[:, :, None, None], seg.images, 0.0)
    x_all = subject_features(images, args.features)
    row_of = {sid: i for i, sid in enumerate(seg.subject_ids)}  # one image per subject
    results = []
    for k, part in enumerate(parts):
        split = json.loads((cls / part / "split.json").read_text())
        train = [row_of[s] for s in split["train"] + split.get("val", [])]
        test = [row_of[s] for s in split["test"]]
        prob = fit_predict(x_all[train], seg.labels[train], x_all[test], seed=k)
        (out / part).mkdir(parents=True, exist_ok=True)
        with open(out / part / "test_predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["subject_id", "label", "probability"])
            for i, pr in zip(test, prob, strict=True):
                w.writerow([seg.subject_ids[i], int(seg.labels[i]), f"{pr:.6f}"])
        results.append((prob, seg.labels[test]))
    summarise = summarise_folds if folds else summarise_seeds
    summary = summarise(results, n_boot=args.bootstrap)
    (out / "cls_metrics.json").write_text(
        dumps_json({"per_seed": meta["per_seed"], "config": meta["config"], "summary": summary})
    )
    auc = summary["auc"]
    res = {
        "features": args.features,
        "segments": args.segments,
        "cls": str(cls),
        "parts": parts,
        "auc": auc["mean"],
        "auc_ci95": auc["ci95"],
        "protocol_auc": meta["summary"]["auc"]["mean"],
        "difference_vs_protocol": compare_runs(out, cls, n_boot=2000),
    }
    (out / "segment_linear.json").write_text(dumps_json(res))
    d = res["difference_vs_protocol"]
    print(
        f"linear ({args.features}): AUC {auc['mean']:.3f} ({auc['ci95'][0]:.2f}-"
        f"{auc['ci95'][1]:.2f}); protocol image model {res['protocol_auc']:.3f}; paired "
        f"difference {d['difference']:+.3f} ({d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f})"
    )
    return res


if __name__ == "__main__":
    main()

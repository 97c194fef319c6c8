r"""Cortical porosity fitted on the radiograph against the generator's truth (synthetic only).

Command (seconds; reads a ``radiogrammetry.json`` the pipeline wrote with porosity, i.e. after
commit 964f34f, measured on the *predicted* masks)::

    .venv/bin/python experiments/porosity.py --data runs/pipeline_2000/data \
        --radio runs/pipeline_2000/radiogrammetry.json --out runs/porosity

:mod:`osteo_jax.eval.radiogrammetry.porosity` fits the Beer-Lambert projection of a tube
(cortex with porosity p, marrow, soft tissue; the detector's spectrum and gain from
``dataset.json``) to the mean profile of each shaft radiogrammetry measured. Porosity is what
the synthetic radiograph shows of age (it rises 0.0011 a year after 40, per-bone SD 0.008,
``data/synth/cohort.py``), and age alone is worth AUC 0.855 on the paper cohort, which is why
the image ceiling (0.884) sits so far above the cortical index (0.79).

``--cls RUN/cls --work DIR`` also re-scores a finished protocol folder's rows with ``--radio``
(a copy without weights in ``DIR/cls``; :func:`~osteo_jax.pipeline.comparison.compare_rows`),
which adds the ``radiogrammetry + porosity`` row and lets the stacked row use it.

Prints and writes ``OUT/porosity.json``: per bone the number measured, Pearson r, bias and
error SD against ``bones.csv``; per subject r of the measured and of the true mean porosity
with age; and ``OUT/porosity.png`` (measured vs true per bone, identity line; mean porosity vs
age). The data are synthetic; nothing here is clinical.

Measured 2026-12-01 on the predicted masks of the paper cohort (0.4 mm, 512 px; the run's own
segmenter, every subject; the fit costs 0.12 s an image for 4 bones on one core, radiogrammetry
with it 20 min for the 2,000 images on one core)::

    .venv/bin/python -c "from osteo_jax.pipeline.radiogrammetry_run import radiogrammetry_of_run
    radiogrammetry_of_run('runs/pipeline_2000/data', 'runs/pipeline_2000/seg',
                          'runs/lev2000/radiogrammetry_por.json', split='all', spread_split=None)"

| bone | 2,000 subjects: r | bias | error SD | 192 (``runs/demo3``): r | error SD |
|---|---|---|---|---|---|
| MC2 | 0.955 | +0.001 | 0.009 | 0.944 | 0.010 |
| MC3 | 0.949 | +0.001 | 0.009 | 0.910 | 0.012 |
| MC4 | 0.885 | +0.002 | 0.014 | 0.893 | 0.016 |
| radius | 0.948 | +0.001 | 0.009 | 0.868 | 0.014 |

The true per-bone SD is 0.027. The mean of the 4 fitted porosities follows the true mean with
r = 0.980 (0.975 at 192) and age with r = 0.70 (the true mean: 0.73). Ignoring beam hardening
(one effective energy) reads a porosity of 0.04 as 0.17-0.19 (``tests/test_porosity.py``'s
tubes). What it buys the classification (``--cls RUN/cls --work DIR``: the run's protocol
folder re-scored with this file's porosity into a copy; same test subjects; "stacked" is
image only: the image model's score and the measurement row best by cross-validation on the
training subjects, weighed on validation;
"grey": stored segments with grey levels and the feature head):

| cohort, protocol | radiogrammetry (CI) | + porosity | image model | stacked | target |
|---|---|---|---|---|---|
| 2,000, 3 seeds x ~200 | 0.772 | **0.857** (0.81-0.89) | 0.776 | **0.855** (0.80-0.89) | 0.854 |
| 2,000, 5 folds | 0.786 | **0.866** (0.85-0.88) | 0.800 (grey) | **0.866** (0.85-0.88) | 0.854 |
| 192, 5 folds | 0.729 | **0.824** (0.76-0.88) | 0.689 (grey) | 0.801 | 0.815 |
| 192, 3 seeds x 19 (demo) | 0.769 | **0.893** (0.75-0.99) | 0.756 | **0.902** (0.78-0.99) | 0.795 |

(The stacked row's measurement is the one with the best cross-validated AUC on the training
subjects, since 2026-12-02; chosen on the 19 validation subjects it was 0.850 on the demo row.)

With 5 folds at 2,000 the fusion (image model + age, sex) is 0.889, +0.029 (+0.020, +0.038)
over clinical (0.860). Paired at 2,000, 3 seeds: porosity row - image model +0.081 (+0.049,
+0.113); the image ceiling is 0.884 (Bayes image posterior on these subjects 0.880). With age and
sex the porosity row gives 0.887 against the clinical 0.870, +0.018 (-0.006, +0.039) on 3 seeds
and +0.032 (+0.022, +0.042) on 5 folds.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np

from osteo_jax.data.folder import SUBJECTS_CSV, nulls_to_nan, read_csv, write_json
from osteo_jax.eval.radiogrammetry.measure import DEFAULT_BONES


def _pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() >= 3 else math.nan


def agreement(radio: dict, data: Path) -> dict:
    """Per-bone and per-subject agreement of the fitted porosity with the generator's truth."""
    truth = {
        (r["subject_id"], r["bone"]): float(r["porosity"]) for r in read_csv(data / "bones.csv")
    }
    age = {r["subject_id"]: float(r["age"]) for r in read_csv(data / SUBJECTS_CSV)}
    recs = radio["per_image"]
    out: dict = {"n_images": len(recs), "bones": {}, "pairs": {}}
    for b in DEFAULT_BONES:
        got = np.array([float(r.get(f"{b}_porosity", math.nan)) for r in recs])
        true = np.array([truth.get((r["subject_id"], b), math.nan) for r in recs])
        ok = np.isfinite(got) & np.isfinite(true)
        err = got[ok] - true[ok]
        out["bones"][b] = {
            "n": int(ok.sum()),
            "r": _pearson(got, true),
            "bias": float(err.mean()) if ok.any() else math.nan,
            "error_sd": float(err.std()) if ok.any() else math.nan,
            "true_sd": float(true[ok].std()) if ok.any() else math.nan,
        }
        out["pairs"][b] = (true[ok].tolist(), got[ok].tolist())
    mean_got = np.array(
        [np.nanmean([r.get(f"{b}_porosity", math.nan) for b in DEFAULT_BONES]) for r in recs]
    )
    mean_true = np.array(
        [np.mean([truth[(r["subject_id"], b)] for b in DEFAULT_BONES]) for r in recs]
    )
    ages = np.array([age[r["subject_id"]] for r in recs])
    out["subject"] = {
        "r_measured_mean_vs_true_mean": _pearson(mean_got, mean_true),
        "r_measured_mean_vs_age": _pearson(mean_got, ages),
        "r_true_mean_vs_age": _pearson(mean_true, ages),
    }
    out["age_pairs"] = (ages.tolist(), mean_got.tolist())
    return out


def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bones = list(res["bones"])
    fig, axes = plt.subplots(1, len(bones) + 1, figsize=(3.2 * (len(bones) + 1), 3.2))
    for ax, b in zip(axes, bones, strict=False):
        true, got = res["pairs"][b]
        ax.scatter(true, got, s=3, alpha=0.4)
        lo, hi = 0.0, 0.2
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        s = res["bones"][b]
        ax.set_title(f"{b}: r {s['r']:.2f}, error SD {s['error_sd']:.3f}", fontsize=9)
        ax.set_xlabel("true porosity")
        ax.set_ylabel("fitted porosity")
    ages, mean_got = res["age_pairs"]
    axes[-1].scatter(ages, mean_got, s=3, alpha=0.4)
    axes[-1].set_xlabel("age (years)")
    axes[-1].set_ylabel("mean fitted porosity")
    axes[-1].set_title(f"r with age {res['subject']['r_measured_mean_vs_age']:.2f}", fontsize=9)
    fig.suptitle("Synthetic data: fitted cortical porosity vs the generator's truth", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


MARK = ".osteo-jax-porosity"  # this script's folders: it writes into no other non-empty one


def _fail(message: str) -> NoReturn:
    print(f"porosity: {message}", file=sys.stderr)
    raise SystemExit(2)


def _claim(folder: Path) -> None:
    """Creates and marks ``folder``; refuses a non-empty one this script did not write."""
    if folder.exists() and not folder.is_dir():
        _fail(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARK).exists():
        _fail(f"{folder}: holds files this script did not write; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARK).touch()


def _read_radio(path: Path) -> dict:
    try:
        radio = nulls_to_nan(json.loads(path.read_text()))
        records = radio["per_image"]
        ok = isinstance(records, list) and all("subject_id" in r for r in records)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        _fail(f"{path}: not a readable radiogrammetry.json ({type(e).__name__}: {e})")
    if not ok:
        _fail(f"{path}: per_image must be a list of records with a subject_id")
    if not any(f"{b}_porosity" in r for r in records for b in DEFAULT_BONES):
        _fail(f"{path}: no porosity in its records (measured before commit 964f34f?)")
    return radio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="synthetic dataset folder (bones.csv)")
    parser.add_argument("--radio", required=True, help="radiogrammetry.json with porosity")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cls", help="a finished protocol folder (RUN/cls) to re-score")
    parser.add_argument("--work", help="where the re-scored copy goes (with --cls)")
    args = parser.parse_args()
    if bool(args.cls) != bool(args.work):
        _fail("--cls and --work go together")
    data, out = Path(args.data), Path(args.out)
    if not (data / "bones.csv").is_file():
        _fail(f"{data / 'bones.csv'}: not found (synthetic data only)")
    if args.cls and not (Path(args.cls) / "cls_metrics.json").is_file():
        _fail(f"{args.cls}: not a finished protocol folder (no cls_metrics.json)")
    work = Path(args.work) / "cls" if args.work else None
    if work is not None and work.exists() and not (work / MARK).exists():
        _fail(f"{work}: exists and was not written by this script; choose a new --work")
    radio = _read_radio(Path(args.radio))
    try:
        res = agreement(radio, data)
    except (OSError, KeyError, ValueError) as e:
        _fail(f"{data}: bones.csv / subjects.csv unreadable or missing a column ({e})")
    _claim(out)
    figure(res, out / "porosity.png")
    summary = {k: v for k, v in res.items() if k not in ("pairs", "age_pairs")}
    write_json(out / "porosity.json", summary)
    for b, s in res["bones"].items():
        print(
            f"{b:7s} n {s['n']:5d}  r {s['r']:.3f}  bias {s['bias']:+.4f}  "
            f"error SD {s['error_sd']:.4f}  (true SD {s['true_sd']:.4f})"
        )
    print(json.dumps(res["subject"], indent=1))
    print(f"wrote {out / 'porosity.json'} and {out / 'porosity.png'}")
    if args.cls:
        rescore(Path(args.cls), data, Path(args.radio), work)


def rescore(cls_dir: Path, data: Path, radio: Path, dst: Path) -> dict:
    """``compare_rows`` of a copy of ``cls_dir`` (weights left out) with ``radio``; prints it.

    The copy is made once and marked; a ``dst`` this script did not write is refused.
    """
    from osteo_jax.data.errors import DatasetError
    from osteo_jax.pipeline.comparison import compare_rows

    if dst.exists() and not (dst / MARK).exists():
        _fail(f"{dst}: exists and was not written by this script; choose a new --work")
    if not dst.exists():
        skip = shutil.ignore_patterns("*.msgpack", "checkpoints", "ssl", "tensorboard")
        shutil.copytree(cls_dir, dst, ignore=skip)
        (dst / MARK).touch()
    try:
        res = compare_rows(dst, data, radiogrammetry=radio)
    except (DatasetError, ValueError, KeyError) as e:
        _fail(f"{cls_dir}: cannot be re-scored with {radio} ({e})")
    for name, row in res["rows"].items():
        auc = row["summary"]["auc"]
        lo, hi = auc["ci95"]
        d = res["vs_image"].get(name)
        paired = "" if d is None else f"  vs image model {-d['difference']:+.3f}"
        if d is not None:
            paired += f" ({-d['ci95'][1]:+.3f}, {-d['ci95'][0]:+.3f})"
        print(f"{name[:64]:64s} {auc['mean']:.3f} ({lo:.2f}-{hi:.2f}){paired}")
    print(f"wrote {dst / 'comparison.json'}")
    return res


if __name__ == "__main__":
    main()

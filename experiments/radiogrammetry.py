r"""Radiogrammetry on the synthetic paper cohort: 2MCI and cortical indices from masks.

Command (CPU, 2 cores, niced; about 25-35 minutes for the 192 subjects, most of it the 16
hypotheses of the predicted masks)::

    nice -n 10 .venv/bin/python experiments/radiogrammetry.py \
        --data runs/data/paper_1024 --seg-run runs/seg_quality_ce/mixture_spread \
        --out runs/radiogrammetry

``--limit N`` measures the first N subjects only (``--limit 8``: about a minute).

What it measures, with :mod:`osteo_jax.eval.radiogrammetry` (W, M read off the radiograph's
profile at the site the mask locates): the cortical index (W - M) / W of MC2 (2MCI), MC3, MC4
and the radius, (a) with the generator's exact label masks (``masks/exact``) and (b) with the
trained mixture segmenter's prediction (argmax of the mixture mean brought back to 1024 px, the
pipeline's segmentation; plus every one of the K S hypotheses, summarised by weighted mean, SD
and 90 % interval). Against the generator's truth (``bones.csv``): Pearson r, MAE and bias per
bone, W and M errors; r of the measured 2MCI with the T-score next to the true 2MCI's. Reports
both the validation subjects of the segmenter run (``split.json``: never seen in training) and
all subjects (the training subjects' masks were fitted by the segmenter). Target: r >= 0.9 of
measured vs true 2MCI on predicted masks.

Writes ``OUT/radiogrammetry.json`` (all figures), ``OUT/measurements.csv`` (one row per subject
and bone) and ``OUT/radiogrammetry.png`` (measured vs true 2MCI with the identity line; 2MCI vs
T-score). The data are synthetic (osteo_jax's physics phantom); nothing here is clinical.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from osteo_jax.data.folder import IMAGES_CSV, SUBJECTS_CSV, mask_relpath, read_csv, read_labels
from osteo_jax.data.imageio import read_image
from osteo_jax.data.inmemory import resize_image
from osteo_jax.eval.radiogrammetry.hypotheses import measure_prediction
from osteo_jax.eval.radiogrammetry.measure import DEFAULT_BONES, measure_radiograph

_SPREAD_KEYS = ("mean", "sd", "min", "max", "lo", "hi")


def _pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def _load_rows(data: Path, limit: int | None):
    images = read_csv(data / IMAGES_CSV)[:limit]
    subjects = {r["subject_id"]: r for r in read_csv(data / SUBJECTS_CSV)}
    truth = {(r["subject_id"], r["bone"]): r for r in read_csv(data / "bones.csv")}
    return images, subjects, truth


def _predictor(seg_run: Path):
    import jax

    from osteo_jax.eval.seg_eval import make_predict_fn
    from osteo_jax.pipeline.seg_run import restore_segmenter

    model, params, cfg, step = restore_segmenter(seg_run)
    predict = make_predict_fn(model)
    # The key extract_segments uses, so these are the hypotheses the pipeline's segments see.
    key = jax.random.fold_in(jax.random.key(cfg.seed), 11)
    return predict, params, cfg, step, key


def run(args) -> dict:
    """Measures every subject and returns the records (one dict per image and bone)."""
    import jax

    data = Path(args.data)
    images, subjects, truth = _load_rows(data, args.limit)
    split = json.loads((Path(args.seg_run) / "split.json").read_text())
    val = set(split.get("val", []))
    predict, params, seg_cfg, step, key = _predictor(Path(args.seg_run))
    size, batch = seg_cfg.model.image_size, 8
    records = []
    t_exact = t_pred = 0.0
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        full = [read_image(data / r["path"], bits_stored=12)[0] for r in chunk]
        x = np.zeros((batch, size, size, 1), np.float32)
        for j, img in enumerate(full):
            x[j, ..., 0] = resize_image(img, size)
        probs, weights = predict(params, x, jax.random.fold_in(key, start))
        probs, weights = np.asarray(probs), np.asarray(weights, np.float64)
        for j, (row, img) in enumerate(zip(chunk, full, strict=True)):
            sid, spacing = row["subject_id"], float(row["pixel_spacing_mm"])
            t0 = time.perf_counter()
            exact = read_labels(data / mask_relpath("exact", row["image_id"]))
            m_exact = measure_radiograph(img, exact, spacing_mm=spacing, bones=DEFAULT_BONES)
            t1 = time.perf_counter()
            m_pred, spread = measure_prediction(
                img, probs[j], weights[j], spacing_mm=spacing, bones=DEFAULT_BONES
            )
            t2 = time.perf_counter()
            t_exact, t_pred = t_exact + t1 - t0, t_pred + t2 - t1
            for b in DEFAULT_BONES:
                tr = truth[(sid, b)]
                rec = {
                    "image_id": row["image_id"],
                    "subject_id": sid,
                    "split": "val" if sid in val else "train",
                    "t_score": float(subjects[sid]["t_score"]),
                    "bone": b,
                    "true_w_mm": float(tr["width_mm"]),
                    "true_m_mm": float(tr["medullary_mm"]),
                    "true_ci": float(tr["cortical_index"]),
                }
                for name, m in (("exact", m_exact[b]), ("pred", m_pred[b])):
                    rec.update(
                        {
                            f"{name}_w_mm": m.width_mm,
                            f"{name}_m_mm": m.medullary_mm,
                            f"{name}_ci": m.cortical_index,
                            f"{name}_reason": m.reason,
                        }
                    )
                sp = spread[b]["cortical_index"]
                rec.update({f"hyp_ci_{k}": sp[k] for k in _SPREAD_KEYS})
                rec["hyp_ci_n_valid"] = sp["n_valid"]
                rec["hyp_w_sd"] = spread[b]["width_mm"]["sd"]
                rec["hyp_m_sd"] = spread[b]["medullary_mm"]["sd"]
                records.append(rec)
        done = min(start + batch, len(images))
        print(
            f"[{done}/{len(images)}] exact {t_exact / done:.2f} s/img, "
            f"predicted + {seg_cfg.model.num_experts * seg_cfg.model.num_samples} hypotheses "
            f"{t_pred / done:.2f} s/img",
            flush=True,
        )
    meta = {
        "seg_run": str(args.seg_run),
        "seg_step": step,
        "n_hypotheses": seg_cfg.model.num_experts * seg_cfg.model.num_samples,
        "seconds_per_image_exact": t_exact / max(len(images), 1),
        "seconds_per_image_predicted": t_pred / max(len(images), 1),
    }
    return {"records": records, "meta": meta}


def summarise(records: list[dict]) -> dict:
    """Figures per subset (val, all), source (exact, pred, hypothesis mean) and bone."""
    out = {}
    for subset in ("val", "all"):
        recs = [r for r in records if subset == "all" or r["split"] == "val"]
        block = {}
        for b in DEFAULT_BONES:
            rb = [r for r in recs if r["bone"] == b]
            true = np.array([r["true_ci"] for r in rb])
            fig = {"n": len(rb)}
            for src, col in (
                ("exact", "exact_ci"),
                ("pred", "pred_ci"),
                ("hyp_mean", "hyp_ci_mean"),
            ):
                meas = np.array([r[col] for r in rb], float)
                ok = np.isfinite(meas)
                err = meas[ok] - true[ok]
                fig[src] = {
                    "n_valid": int(ok.sum()),
                    "r": _pearson(meas, true),
                    "mae": float(np.mean(np.abs(err))) if ok.any() else math.nan,
                    "bias": float(np.mean(err)) if ok.any() else math.nan,
                }
                if src != "hyp_mean":
                    for q, tq in (("w", "true_w_mm"), ("m", "true_m_mm")):
                        e = np.array([r[f"{src}_{q}_mm"] - r[tq] for r in rb], float)
                        fig[src][f"{q}_mae_mm"] = float(np.nanmean(np.abs(e)))
                        fig[src][f"{q}_bias_mm"] = float(np.nanmean(e))
            sd = np.array([r["hyp_ci_sd"] for r in rb], float)
            width = np.array([r["hyp_ci_hi"] - r["hyp_ci_lo"] for r in rb], float)
            rng = np.array([r["hyp_ci_max"] - r["hyp_ci_min"] for r in rb], float)
            lo, hi = np.array([r["hyp_ci_lo"] for r in rb]), np.array([r["hyp_ci_hi"] for r in rb])
            fig["spread"] = {
                "mean_sd": float(np.nanmean(sd)),
                "max_sd": float(np.nanmax(sd)) if np.isfinite(sd).any() else math.nan,
                "mean_interval90": float(np.nanmean(width)),
                "mean_range": float(np.nanmean(rng)),
                "truth_in_interval90": float(np.mean((true >= lo) & (true <= hi))),
                "mean_w_sd_mm": float(np.nanmean([r["hyp_w_sd"] for r in rb])),
                "mean_m_sd_mm": float(np.nanmean([r["hyp_m_sd"] for r in rb])),
            }
            block[b] = fig
        mc2 = [r for r in recs if r["bone"] == "MC2"]
        t = [r["t_score"] for r in mc2]
        block["tscore_r"] = {
            "true_2mci": _pearson([r["true_ci"] for r in mc2], t),
            "exact_2mci": _pearson([r["exact_ci"] for r in mc2], t),
            "pred_2mci": _pearson([r["pred_ci"] for r in mc2], t),
        }
        out[subset] = block
    return out


def figure(records: list[dict], summary: dict, path: Path) -> None:
    """Measured vs true 2MCI (identity line) and 2MCI vs T-score, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mc2 = [r for r in records if r["bone"] == "MC2"]
    true = np.array([r["true_ci"] for r in mc2])
    ex = np.array([r["exact_ci"] for r in mc2], float)
    pr = np.array([r["pred_ci"] for r in mc2], float)
    lo = np.array([r["hyp_ci_lo"] for r in mc2], float)
    hi = np.array([r["hyp_ci_hi"] for r in mc2], float)
    is_val = np.array([r["split"] == "val" for r in mc2])
    tsc = np.array([r["t_score"] for r in mc2])
    fig, ax = plt.subplots(1, 3, figsize=(16, 5))
    ax[0].plot([0.2, 0.85], [0.2, 0.85], "k-", lw=0.8, label="identity")
    ax[0].scatter(true, ex, s=10, c="0.6", label=f"exact masks (r {_pearson(ex, true):.4f})")
    for sel, colour, name in ((~is_val, "tab:blue", "train"), (is_val, "tab:red", "val")):
        ax[0].scatter(
            true[sel],
            pr[sel],
            s=10,
            color=colour,
            label=f"predicted masks, {name} (r {_pearson(pr[sel], true[sel]):.4f})",
        )
    ax[0].set(xlabel="true 2MCI", ylabel="measured 2MCI", title="2MCI: measured vs true")
    ax[0].legend(fontsize=8)
    # The errors are far below the scatter's scale: show them, with the hypotheses' interval.
    ax[1].axhline(0.0, color="k", lw=0.8)
    ax[1].scatter(true, ex - true, s=10, c="0.6", label="exact masks")
    for sel, colour, name in ((~is_val, "tab:blue", "train"), (is_val, "tab:red", "val")):
        ax[1].errorbar(
            true[sel],
            pr[sel] - true[sel],
            yerr=np.clip([pr[sel] - lo[sel], hi[sel] - pr[sel]], 0, None),
            fmt="o",
            ms=3,
            color=colour,
            elinewidth=0.6,
            alpha=0.8,
            label=f"predicted masks, {name} (bar: 90 % over hypotheses)",
        )
    ax[1].set(xlabel="true 2MCI", ylabel="measured - true", title="2MCI error")
    ax[1].legend(fontsize=8)
    ax[2].scatter(tsc, true, s=10, c="0.6", label=f"true 2MCI (r {_pearson(true, tsc):.2f})")
    ax[2].scatter(
        tsc,
        pr,
        s=10,
        c="tab:red",
        marker="x",
        label=f"measured, predicted masks (r {_pearson(pr, tsc):.2f})",
    )
    ax[2].axhline(0.5, color="k", ls=":", lw=0.8)
    ax[2].axvline(-2.5, color="k", ls=":", lw=0.8)
    ax[2].set(xlabel="T-score", ylabel="2MCI", title="2MCI vs T-score (all subjects)")
    ax[2].legend(fontsize=8)
    fig.suptitle("Synthetic cohort (osteo_jax phantom), not clinical data", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print(summary: dict, meta: dict) -> None:
    for subset, block in summary.items():
        n = block["MC2"]["n"]
        print(f"\n== {subset} subjects (n = {n}) ==")
        print(
            f"{'bone':7s} {'source':9s} {'valid':>6s} {'r':>7s} {'MAE':>7s} {'bias':>7s}"
            f" {'W MAE':>7s} {'M MAE':>7s}"
        )
        for b in DEFAULT_BONES:
            for src in ("exact", "pred", "hyp_mean"):
                f = block[b][src]
                extra = f" {f['w_mae_mm']:7.3f} {f['m_mae_mm']:7.3f}" if "w_mae_mm" in f else ""
                print(
                    f"{b:7s} {src:9s} {f['n_valid']:6d} {f['r']:7.4f} {f['mae']:7.4f}"
                    f" {f['bias']:+7.4f}{extra}"
                )
            s = block[b]["spread"]
            print(
                f"{'':7s} spread: mean SD {s['mean_sd']:.4f}, max SD {s['max_sd']:.4f}, "
                f"mean 90% width {s['mean_interval90']:.4f}, range {s['mean_range']:.4f}, "
                f"W SD {s['mean_w_sd_mm']:.3f} mm, M SD {s['mean_m_sd_mm']:.3f} mm"
            )
        t = block["tscore_r"]
        print(
            f"r(2MCI, T-score): true {t['true_2mci']:.3f}, exact masks {t['exact_2mci']:.3f},"
            f" predicted masks {t['pred_2mci']:.3f}"
        )
    print(
        f"\ntime per image: exact {meta['seconds_per_image_exact']:.2f} s, predicted + "
        f"{meta['n_hypotheses']} hypotheses {meta['seconds_per_image_predicted']:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="runs/data/paper_1024")
    parser.add_argument("--seg-run", default="runs/seg_quality_ce/mixture_spread")
    parser.add_argument("--out", default="runs/radiogrammetry")
    parser.add_argument("--limit", type=int, default=None, help="first N subjects only")
    args = parser.parse_args()
    out = Path(args.out)
    np.seterr(invalid="ignore")
    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
    warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = run(args)
    records, meta = res["records"], res["meta"]
    summary = summarise(records)
    meta["wall_seconds"] = time.time() - t0
    meta["n_images"] = len({r["image_id"] for r in records})
    meta["note"] = "synthetic cohort (osteo_jax phantom); nothing here is clinical"
    (out / "radiogrammetry.json").write_text(
        json.dumps({"meta": meta, "summary": summary}, indent=1, default=float)
    )
    keys = list(records[0])
    with open(out / "measurements.csv", "w") as f:
        f.write(",".join(keys) + "\n")
        for r in records:
            f.write(
                ",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                + "\n"
            )
    figure(records, summary, out / "radiogrammetry.png")
    _print(summary, meta)
    print(
        f"\nwrote {out / 'radiogrammetry.json'}, {out / 'measurements.csv'}, "
        f"{out / 'radiogrammetry.png'} ({meta['wall_seconds']:.0f} s)"
    )


if __name__ == "__main__":
    main()

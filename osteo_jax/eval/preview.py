"""Preview figure of a dataset folder: radiographs with masks, 2MCI by class, Bayes ceilings.

Works on any folder in the osteo_jax format; the 2MCI panel and the ceilings need the
synthetic generator's ``bones.csv`` and ``oracle.json`` and are left out when absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from osteo_jax.config import CLASS_NAMES  # noqa: E402
from osteo_jax.data.folder import (  # noqa: E402
    EXACT,
    SUBJECTS_CSV,
    annotators_of,
    load_example,
    read_csv,
)
from osteo_jax.data.synth.ceiling import read_ceilings  # noqa: E402

# One colour per class (background transparent).
CLASS_COLOURS = (
    "#00000000",
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
)
_ANNOTATOR_COLOURS = ("#ffe119", "#00ffff", "#ff7f00", "#bfef45", "#fabed4")


def _pick(subjects: list[dict], n: int) -> list[dict]:
    """Up to n subjects, alternating negatives and positives, in file order."""
    pos = [s for s in subjects if s.get("label") == "1"]
    neg = [s for s in subjects if s.get("label") != "1"]
    out = []
    for k in range(n):
        src = neg if k % 2 == 0 else pos
        if not src:
            src = pos or neg
        out.append(src.pop(0))
        if not pos and not neg:
            break
    return out[:n]


def dataset_preview(
    root: str | os.PathLike, out: str | os.PathLike | None = None, *, n_images: int = 8
) -> Path:
    """Writes the preview figure of a dataset folder.

    Args:
      root: dataset folder.
      out: PNG path (default ``root/preview.png``).
      n_images: radiographs in the grid.

    Returns:
      The figure's path.
    """
    root = Path(root)
    out = Path(out) if out is not None else root / "preview.png"
    subjects = read_csv(root / SUBJECTS_CSV)
    ceilings = read_ceilings(root)
    bones_path = root / "bones.csv"
    picked = _pick(list(subjects), n_images)
    cols = 4
    rows = (len(picked) + cols - 1) // cols
    fig = plt.figure(figsize=(4 * cols, 4.2 * rows + 4.2))
    gs = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [0.9])
    cmap = ListedColormap(CLASS_COLOURS)
    annotators = [a for a in annotators_of(root) if a != EXACT]
    for k, subj in enumerate(picked):
        ax = fig.add_subplot(gs[k // cols, k % cols])
        ex = load_example(root, subj["subject_id"])
        step = max(1, ex["image"].shape[0] // 384)
        img = ex["image"][::step, ::step].astype(np.float32)
        lo, hi = np.percentile(img, [1, 99.7])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear")
        if EXACT in ex:
            lab = ex[EXACT][::step, ::step]
            ax.imshow(
                np.ma.masked_equal(lab, 0),
                cmap=cmap,
                vmin=0,
                vmax=len(CLASS_NAMES) - 1,
                alpha=0.35,
                interpolation="nearest",
            )
        for m, name in enumerate(annotators):
            if name in ex:
                fg = (ex[name][::step, ::step] > 0).astype(float)
                ax.contour(fg, levels=[0.5], colors=_ANNOTATOR_COLOURS[m % 5], linewidths=0.6)
        status = "osteoporosis" if subj.get("label") == "1" else "not osteoporotic"
        t = subj.get("t_score", "")
        ax.set_title(
            f"{subj['subject_id']}  {status}" + (f"\nT = {float(t):+.2f}" if t else ""), fontsize=9
        )
        ax.set_axis_off()

    ax = fig.add_subplot(gs[rows, 0:2])
    if bones_path.exists():
        bones = read_csv(bones_path)
        label = {s["subject_id"]: s["label"] for s in subjects}
        ci = {"0": [], "1": []}
        for b in bones:
            if b["bone"] == "MC2":
                ci[label[b["subject_id"]]].append(float(b["cortical_index"]))
        bins = np.linspace(0.25, 0.8, 28)
        ax.hist(
            ci["0"],
            bins=bins,
            alpha=0.6,
            label=f"not osteoporotic (n={len(ci['0'])})",
            color="#4363d8",
        )
        ax.hist(
            ci["1"], bins=bins, alpha=0.6, label=f"osteoporosis (n={len(ci['1'])})", color="#e6194b"
        )
        ax.axvline(0.5, color="k", ls="--", lw=0.8)
        ax.set_xlabel("true 2MCI (MC2 cortical index, (W - M) / W)")
        ax.set_ylabel("subjects")
        ax.legend(fontsize=8)
        ax.set_title("2MCI drawn by the generator, by label", fontsize=10)
    else:
        ax.set_axis_off()
    ax = fig.add_subplot(gs[rows, 2:4])
    ax.set_axis_off()
    n_pos = sum(s.get("label") == "1" for s in subjects)
    lines = [
        f"subjects: {len(subjects)}   osteoporotic: {n_pos}",
        f"annotators: {', '.join(annotators) or 'none'} (+ exact map)",
    ]
    if ceilings:
        pop = ceilings["population"]
        lines += [
            "Bayes ceilings (AUC)   cohort  population",
            f"  image               {ceilings['image_ceiling_auc']:.3f}   "
            f"{pop['image_ceiling_auc']:.3f}",
            f"  age + sex           {ceilings['clinical_ceiling_auc']:.3f}   "
            f"{pop['clinical_ceiling_auc']:.3f}",
            f"  image + age + sex   {ceilings['image_clinical_ceiling_auc']:.3f}   "
            f"{pop['image_clinical_ceiling_auc']:.3f}",
            f"hand latent alone     {ceilings['hand_latent_auc']:.3f}   "
            f"{pop['hand_latent_auc']:.3f}",
            f"coupling r of hand latent to T-score: {ceilings['r']:.2f}",
        ]
    lines += ["", "SYNTHETIC DATA - method development only,", "no clinical use."]
    ax.text(0.02, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=10)
    legend = ", ".join(f"{CLASS_NAMES[c]}" for c in range(1, len(CLASS_NAMES)))
    fig.suptitle(
        f"{root.name}: radiographs with the exact label map (fill: {legend}) and "
        "annotator outlines",
        fontsize=11,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out

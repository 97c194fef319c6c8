"""Figures of the classification protocol: ROC with a bootstrap band, reliability, comparison."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from osteo_jax.eval.cls_metrics import reliability_curve, roc_curve

__all__ = ["comparison_figure", "reliability_figure", "roc_figure"]

_NOTE = "synthetic data: method development only, no clinical claim"
_LABEL_WIDTH = 44  # characters per line of a row name in the comparison figure


def roc_figure(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    *,
    title: str = "",
    ceiling_auc: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> None:
    """ROC curve of each seed's test subjects, the pooled curve and its 95 % bootstrap band.

    Args:
      per_seed: ``(probs, labels)`` per seed.
      path: PNG path.
      title: figure title.
      ceiling_auc: the synthetic cohort's image Bayes ceiling, drawn in the legend.
      n_boot: bootstrap resamples of the pooled subjects for the band.
      seed: resampling seed.
    """
    grid = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for k, (p, y) in enumerate(per_seed):
        fpr, tpr = roc_curve(p, y)
        ax.plot(fpr, tpr, lw=0.8, alpha=0.6, label=f"seed {k}")
    p_all = np.concatenate([p for p, _ in per_seed])
    y_all = np.concatenate([y for _, y in per_seed])
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_all), len(y_all))
        if y_all[idx].min() == y_all[idx].max():
            continue
        fpr, tpr = roc_curve(p_all[idx], y_all[idx])
        curves.append(np.interp(grid, fpr, tpr))
    if curves:
        lo, hi = np.percentile(np.array(curves), [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, color="0.6", alpha=0.35, label="95 % bootstrap band")
    fpr, tpr = roc_curve(p_all, y_all)
    ax.plot(fpr, tpr, color="k", lw=1.8, label="pooled over seeds")
    ax.plot([0, 1], [0, 1], ls=":", color="0.5")
    if ceiling_auc is not None:
        ax.plot([], [], " ", label=f"image Bayes ceiling AUC {ceiling_auc:.2f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or "ROC, test subjects", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.text(0.5, 0.005, _NOTE, ha="center", fontsize=6, color="0.4")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reliability_figure(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    *,
    bins: int = 10,
    title: str = "",
) -> None:
    """Reliability diagram of the pooled test subjects with the bin counts underneath."""
    p_all = np.concatenate([p for p, _ in per_seed])
    y_all = np.concatenate([y for _, y in per_seed])
    curve = reliability_curve(p_all, y_all, bins)
    centres = (np.arange(bins) + 0.5) / bins
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(4.4, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    has = curve["count"] > 0
    ax.bar(
        centres[has],
        curve["frequency"][has],
        width=1 / bins,
        edgecolor="k",
        alpha=0.6,
        label="observed frequency",
    )
    ax.plot(
        curve["confidence"][has],
        curve["frequency"][has],
        "o",
        color="C3",
        ms=4,
        label="mean probability in bin",
    )
    ax.plot([0, 1], [0, 1], ls=":", color="0.4")
    ax.set_ylabel("fraction osteoporotic")
    ax.set_title(title or "reliability, test subjects", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax2.bar(centres, curve["count"], width=1 / bins, color="0.5")
    ax2.set_xlabel("predicted probability of osteoporosis")
    ax2.set_ylabel("subjects")
    fig.text(0.5, 0.005, _NOTE, ha="center", fontsize=6, color="0.4")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def comparison_figure(comparison: dict, path: str | os.PathLike, *, title: str = "") -> str:
    """Forest plot of the headline comparison: each row's AUC with its 95 % interval.

    Args:
      comparison: :func:`osteo_jax.pipeline.comparison.compare_rows` output.
      path: PNG to write.
      title: figure title.

    Returns:
      ``str(path)``. Vertical lines mark the synthetic cohort's image and clinical Bayes
      ceilings where known; rows whose interval of the difference to the clinical row excludes
      zero are drawn filled.
    """
    names = list(comparison["rows"])
    # Long row names (the measurement rows) wrapped, so the axes keep most of the width.
    labels = [textwrap.fill(n, _LABEL_WIDTH) for n in names]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(8.5, 0.3 * lines + 0.15 * len(names) + 1.6))
    for i, name in enumerate(names):
        auc = comparison["rows"][name]["summary"]["auc"]
        lo, hi = auc["ci95"]
        real = (comparison["vs_clinical"].get(name) or {}).get("excludes_zero", False)
        color = "tab:gray" if name.startswith("Bayes") else "tab:blue"
        ax.errorbar(
            auc["mean"], i, xerr=[[auc["mean"] - lo], [hi - auc["mean"]]], fmt="o",
            color=color, mfc=color if real else "white", capsize=3,
        )  # fmt: skip
    ceilings = comparison.get("ceilings") or {}
    for key, style, words in (
        ("image_ceiling_auc", "--", "image ceiling"),
        ("clinical_ceiling_auc", ":", "age + sex ceiling"),
    ):
        if key in ceilings:
            ax.axvline(
                ceilings[key], color="k", ls=style, lw=1, label=f"{words} {ceilings[key]:.2f}"
            )
    ax.axvline(0.5, color="0.8", lw=1)
    ax.set_yticks(range(len(names)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("AUC (mean over seeds, 95 % interval); filled: differs from clinical")
    ax.set_xlim(0.3, 1.0)
    if ceilings:
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "The model beside the baselines, same test subjects", fontsize=10)
    fig.text(0.99, 0.005, _NOTE, ha="right", va="bottom", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.02, 1, 1))  # room for the note under the axis label
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)

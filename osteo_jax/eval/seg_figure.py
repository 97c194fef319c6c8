"""Figure of one image's segmentation: image, consensus, the K*S hypotheses, uncertainty."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from osteo_jax.config import CLASS_NAMES  # noqa: E402
from osteo_jax.eval.preview import CLASS_COLOURS  # noqa: E402
from osteo_jax.eval.seg_metrics import majority_consensus, uncertainty_maps  # noqa: E402


def segmentation_figure(
    rows: list[dict], out: str | os.PathLike, *, max_hypotheses: int = 16
) -> Path:
    """Writes a figure with one row per image.

    Args:
      rows: per image a dict with ``image`` ``[H, W]``, ``probs`` ``[N, H, W, C]``,
        ``weights`` ``[N]``, ``masks`` ``[M, H, W]`` and a ``title``.
      out: PNG path.
      max_hypotheses: hypotheses shown per row (the heaviest first).

    Returns:
      The figure's path.
    """
    cmap = ListedColormap(["#000000"] + list(CLASS_COLOURS[1:]))
    n_hyp = min(max_hypotheses, max(r["probs"].shape[0] for r in rows))
    cols = 4 + n_hyp
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.8 * len(rows)), squeeze=False)
    kw = dict(cmap=cmap, vmin=0, vmax=len(CLASS_NAMES) - 1, interpolation="nearest")
    for r, row in enumerate(rows):
        probs, w = row["probs"], np.asarray(row["weights"], np.float64)
        w = w / w.sum()
        ax = axes[r]
        ax[0].imshow(row["image"], cmap="gray")
        ax[0].set_title(row.get("title", ""), fontsize=7)
        ax[1].imshow(majority_consensus(row["masks"], probs.shape[-1]), **kw)
        ax[1].set_title("consensus", fontsize=7)
        ax[2].imshow(np.tensordot(w, probs, axes=1).argmax(-1), **kw)
        ax[2].set_title("mixture mean", fontsize=7)
        unc = uncertainty_maps(probs, w)
        im = ax[3].imshow(unc["mutual_information"], cmap="magma")
        ax[3].set_title("mutual information", fontsize=7)
        fig.colorbar(im, ax=ax[3], fraction=0.046, pad=0.02)
        order = np.argsort(-w, kind="stable")[:n_hyp]
        for j in range(n_hyp):
            a = ax[4 + j]
            if j < len(order):
                i = order[j]
                a.imshow(probs[i].argmax(-1), **kw)
                a.set_title(f"h{i}  α={w[i]:.3f}", fontsize=7)
        for a in ax:
            a.set_axis_off()
    fig.suptitle(
        "segmentation hypotheses (weights α), consensus of the annotators, and the "
        "mutual information between hypotheses (synthetic data)",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

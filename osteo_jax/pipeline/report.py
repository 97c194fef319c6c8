"""The report of an experiment folder: its panels that need the trained segmenter, then the rest.

:func:`osteo_jax.eval.report.write_report` lays out what the stages wrote; the segmentation and
segment panels of a few test subjects need the segmenter restored from its run, so they are
drawn here (:func:`subject_panels`) and handed to it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from osteo_jax.data.folder import read_csv  # noqa: E402
from osteo_jax.data.segments import load_segments  # noqa: E402
from osteo_jax.data.sources import FolderSource  # noqa: E402
from osteo_jax.eval.report import FIGURES, write_report  # noqa: E402
from osteo_jax.eval.seg_eval import make_predict_fn, predict_batches  # noqa: E402
from osteo_jax.eval.seg_figure import segmentation_figure  # noqa: E402
from osteo_jax.pipeline.seg_run import restore_segmenter  # noqa: E402

__all__ = ["subject_panels", "write_experiment_report"]


def subject_panels(out: Path, data: Path, n: int, fig_dir: Path) -> list[str]:
    """Segmentation and segment panels of ``n`` test subjects of seed 0; the figure files."""
    seeds = sorted((out / "cls").glob("seed*/test_segments.csv"))
    if not seeds or n <= 0:
        return []
    seg_rows = read_csv(seeds[0])
    prob = {(r["image_id"], r["bone"]): float(r["probability"]) for r in seg_rows}
    test_subjects = read_csv(seeds[0].parent / "test_predictions.csv")
    by_label = [
        [r for r in test_subjects if r["label"] == lab][: (n + 1) // 2] for lab in ("1", "0")
    ]
    picked = [r["subject_id"] for r in (by_label[0] + by_label[1])[:n]]
    subj_p = {r["subject_id"]: float(r["probability"]) for r in test_subjects}
    model, params, cfg, _ = restore_segmenter(out / "seg")
    # Decode only the picked subjects' first images (not the whole folder).
    source = FolderSource(data, cfg.model.image_size, cfg.annotators)
    records = [source[int(np.flatnonzero(source.subject_ids == s)[0])] for s in picked]
    _, probs, weights = next(
        predict_batches(
            model,
            params,
            np.stack([r["image"] for r in records]),
            jax.random.key(cfg.seed + 101),
            max(cfg.batch_size, len(records)),
            make_predict_fn(model),
        )
    )
    rows = []
    for j, rec in enumerate(records):
        rows.append(
            dict(
                image=rec["image"][..., 0],
                probs=np.asarray(probs[j]),
                weights=np.asarray(weights[j]),
                masks=rec["masks"],
                title=f"{picked[j]} p={subj_p[picked[j]]:.2f}",
            )
        )
    figs = [str(segmentation_figure(rows, fig_dir / "subjects_segmentation.png", max_hypotheses=8))]
    segs = load_segments(out / "segments")
    fig, axes = plt.subplots(
        len(picked),
        len(segs.bones),
        figsize=(1.5 * len(segs.bones), 1.7 * len(picked)),
        squeeze=False,
    )
    for r, sid in enumerate(picked):
        k = int(np.flatnonzero(segs.subject_ids == sid)[0])
        for c, b in enumerate(segs.bones):
            ax = axes[r, c]
            ax.imshow(np.asarray(segs.images[k, c], np.float32), cmap="gray", vmin=0, vmax=1)
            p = prob.get((str(segs.image_ids[k]), b))
            ax.set_title(f"{b}" + ("" if p is None else f" p={p:.2f}"), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(sid, fontsize=7)
    fig.suptitle("the 7 segments and each one's probability of osteoporosis (seed 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(fig_dir / "subjects_segments.png", dpi=110)
    plt.close(fig)
    return figs + [str(fig_dir / "subjects_segments.png")]


def write_experiment_report(
    out: str | os.PathLike, cfg, data: str | os.PathLike
) -> dict[str, Path]:
    """Writes ``out/report.md`` and ``out/report.html`` of a finished experiment folder.

    Args:
      out: an experiment folder (:func:`osteo_jax.pipeline.experiment.run_experiment`).
      cfg: its :class:`~osteo_jax.config.ExperimentConfig`.
      data: the dataset folder it ran on.

    Returns:
      ``{"md": path, "html": path}``.
    """
    out, data = Path(out), Path(data)
    fig_dir = out / FIGURES
    fig_dir.mkdir(exist_ok=True)
    panels = subject_panels(out, data, cfg.report_subjects, fig_dir)
    return write_report(out, cfg, data, panels=panels)

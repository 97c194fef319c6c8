"""The screening report of an experiment folder: ``report.md`` and ``report.html`` + figures.

:func:`write_report` reads what :func:`osteo_jax.pipeline.experiment.run_experiment` wrote
(segmenter run, segments, protocol results, radiogrammetry) and lays out, for a colleague:
the headline table (Bayes ceilings; the model beside the clinical, radiogrammetry and fusion
baselines and the Bayes posteriors, with paired Δ AUC), the paper-format table, ROC with its
bootstrap band, reliability diagram, per-bone Dice, segmentation panels of a few test subjects
(image, consensus, hypotheses with weights, uncertainty, the 7 segments with their probabilities;
drawn by :mod:`osteo_jax.pipeline.report`, which restores the segmenter, and passed in),
per-bone contribution to the subject score, and radiogrammetry (measured vs true 2MCI, 2MCI vs
T-score). The same content is written as Markdown and as self-contained-folder HTML.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from osteo_jax.config import BONE_NAMES  # noqa: E402
from osteo_jax.data.folder import nulls_to_nan, read_csv  # noqa: E402
from osteo_jax.eval.cls_figure import comparison_figure  # noqa: E402
from osteo_jax.eval.cls_stats import CI_METHOD
from osteo_jax.eval.headline import COMPARISON_JSON, ceiling_table, rows_table  # noqa: E402

__all__ = ["FIGURES", "write_report"]

FIGURES = "figures"
SYNTHETIC_NOTE = (
    "Research software. These results come from SYNTHETIC radiographs whose ground truth the "
    "generator planted; they measure how well the method recovers that signal and make no "
    "clinical claim. Do not use for diagnosis."
)


# ----------------------------------------------------------------------------- documents


class _Doc:
    """Blocks rendered to both Markdown and HTML (headings, text, tables, images)."""

    def __init__(self):
        self.blocks: list[tuple[str, object]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def img(self, rel: str, caption: str) -> None:
        self.blocks.append(("img", (rel, caption)))

    def markdown(self) -> str:
        out = []
        for kind, x in self.blocks:
            if kind == "h":
                out.append("#" * x[0] + " " + x[1])
            elif kind == "p":
                out.append(x)
            elif kind == "table":
                header, rows = x
                out.append(
                    "\n".join(
                        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                        + ["| " + " | ".join(r) + " |" for r in rows]
                    )
                )
            else:
                out.append(f"![{x[1]}]({x[0]})\n\n*{x[1]}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        body = []
        for kind, x in self.blocks:
            if kind == "h":
                body.append(f"<h{x[0]}>{e(x[1])}</h{x[0]}>")
            elif kind == "p":
                body.append(f"<p>{e(x)}</p>")
            elif kind == "table":
                header, rows = x
                head = "".join(f"<th>{e(c)}</th>" for c in header)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            else:
                body.append(
                    f'<figure><img src="{e(x[0])}" alt="{e(x[1])}">'
                    f"<figcaption>{e(x[1])}</figcaption></figure>"
                )
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
            "padding:3px 8px;text-align:left}img{max-width:100%}"
            ".note{background:#fff3cd;padding:.6em 1em;border:1px solid #e0c36a}"
        )
        body.insert(1, f'<p class="note">{e(SYNTHETIC_NOTE)}</p>')
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )


def _pm(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


# ------------------------------------------------------------------------------ figures


def _experts_words(val: dict) -> str:
    """The experts' mean weights and how many are alive, for a mixture's validation metrics."""
    keys = [k for k in val if k.startswith("alpha/expert_")]
    alphas = [val[k] for k in sorted(keys, key=lambda k: int(k.rsplit("_", 1)[1]))]
    if not alphas:
        return ""
    return (
        f" Mean expert weights {', '.join(f'{a:.2f}' for a in alphas)}: "
        f"{int(val['experts_alive'])} of {len(alphas)} experts alive (mean weight >= 0.05)."
    )


def _dice_figure(val: dict, path: Path) -> list[list[str]]:
    rows, values = [], []
    for b in BONE_NAMES:
        d = val.get(f"dice/consensus/{b}", float("nan"))
        values.append(d)
        rows.append([b, f"{d:.3f}", f"{val.get(f'iou/consensus/{b}', float('nan')):.3f}"])
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.bar(BONE_NAMES, values, color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice vs consensus")
    ax.set_title("segmentation, validation subjects")
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return rows


def _bone_contribution(cls_dir: Path, path: Path) -> list[list[str]]:
    """Per bone: mean probability in each class and the bone-alone AUC, pooled over seeds."""
    from osteo_jax.eval.cls_metrics import binary_metrics

    rows = []
    for f in sorted(cls_dir.glob("seed*/test_segments.csv")):
        rows += read_csv(f)
    if not rows:
        return []
    bones = [b for b in BONE_NAMES if any(r["bone"] == b for r in rows)] or sorted(
        {r["bone"] for r in rows}
    )
    table, pos, neg = [], [], []
    for b in bones:
        p = np.array([float(r["probability"]) for r in rows if r["bone"] == b])
        y = np.array([int(r["label"]) for r in rows if r["bone"] == b])
        auc = binary_metrics(p, y)["auc"] if 0 < y.sum() < len(y) else float("nan")
        pos.append(p[y == 1].mean() if (y == 1).any() else np.nan)
        neg.append(p[y == 0].mean() if (y == 0).any() else np.nan)
        table.append([b, f"{pos[-1]:.3f}", f"{neg[-1]:.3f}", f"{auc:.3f}", str(len(y))])
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    x = np.arange(len(bones))
    ax.bar(x - 0.2, pos, 0.4, label="osteoporotic", color="#c44e52")
    ax.bar(x + 0.2, neg, 0.4, label="normal", color="#55a868")
    ax.set_xticks(x, bones)
    ax.set_ylabel("mean segment probability")
    ax.set_title("per-bone contribution to the subject score (test subjects, all seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return table


def _radiogrammetry_figure(radio: dict, path: Path) -> bool:
    rows = radio.get("per_image", [])
    if not rows:
        return False
    ci = np.array([r["MC2_ci"] for r in rows])
    lo = np.array([r["MC2_ci_lo"] for r in rows])
    hi = np.array([r["MC2_ci_hi"] for r in rows])
    ts = np.array([r["t_score"] for r in rows])
    true = np.array([r.get("true_MC2_ci", np.nan) for r in rows])
    has_truth = np.isfinite(true).any()
    fig, axes = plt.subplots(1, 2 if has_truth else 1, figsize=(9 if has_truth else 4.5, 3.8))
    axes = np.atleast_1d(axes)
    s = radio["summary"]
    if has_truth:
        ax = axes[0]
        err = np.abs(np.stack([ci - lo, hi - ci]))
        ax.errorbar(true, ci, yerr=np.nan_to_num(err), fmt="o", ms=3, alpha=0.7, lw=0.8)
        lim = [np.nanmin([true, ci]) - 0.02, np.nanmax([true, ci]) + 0.02]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel("true 2MCI (generator)")
        ax.set_ylabel("measured 2MCI (predicted masks)")
        ax.set_title(f"r = {s.get('MC2_r', float('nan')):.3f}, MAE {s.get('MC2_mae', 0):.3f}")
    ax = axes[-1]
    ax.scatter(ts, ci, s=10, label="measured")
    if has_truth:
        ax.scatter(ts, true, s=10, marker="x", alpha=0.6, label="true")
        ax.legend(fontsize=7)
    ax.set_xlabel("T-score")
    ax.set_ylabel("2MCI")
    ax.set_title(f"2MCI vs T-score (r = {s.get('MC2_vs_tscore_r', float('nan')):.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------- report


def write_report(
    out: str | os.PathLike, cfg, data: str | os.PathLike, *, panels: Sequence[str] = ()
) -> dict[str, Path]:
    """Writes ``out/report.md`` and ``out/report.html`` (figures under ``out/figures``).

    Args:
      out: an experiment folder (:func:`osteo_jax.pipeline.experiment.run_experiment`).
      cfg: its :class:`~osteo_jax.config.ExperimentConfig`.
      data: the dataset folder it ran on.
      panels: figure files of the test subjects' segmentation (a name with
        ``"segmentation"``) and segments, drawn by the caller, which holds the trained
        segmenter (:func:`osteo_jax.pipeline.report.subject_panels`).

    Returns:
      ``{"md": path, "html": path}``.
    """
    out, data = Path(out), Path(data)
    fig_dir = out / FIGURES
    fig_dir.mkdir(exist_ok=True)
    metrics = json.loads((out / "cls" / "cls_metrics.json").read_text())
    metrics["summary"] = nulls_to_nan(metrics["summary"])  # strict JSON holds NaN as null
    doc = _Doc()
    doc.h(1, f"Screening report: {cfg.name}")
    doc.p(SYNTHETIC_NOTE if (data / "oracle.json").exists() else SYNTHETIC_NOTE.split(".")[0])
    n_subj = len({r["subject_id"] for r in read_csv(data / "subjects.csv")})
    cls_cfg = cfg.protocol.cls
    protocol = (
        f"{cls_cfg.folds}-fold cross-validation over subjects (each tested once)"
        if cls_cfg.folds
        else f"subject-wise stratified split "
        f"{'/'.join(str(round(100 * f)) for f in cls_cfg.split)}, "
        f"{len(metrics['per_seed'])} seeds"
    )
    doc.p(
        f"Dataset: {data} ({n_subj} subjects). Protocol: {protocol}, checkpoint by validation "
        "macro-F1."
    )

    comparison_path = out / "cls" / COMPARISON_JSON
    if comparison_path.exists():
        comparison = json.loads(comparison_path.read_text())
        doc.h(2, "Headline: the model against the ceilings and the baselines")
        header, rows = ceiling_table(comparison.get("ceilings"))
        if rows:
            doc.p(
                "Bayes ceilings of the synthetic cohort: the AUC of the generator's exact "
                "posterior of the label given everything it drew that changes pixels (image), "
                "given age and sex, and given both. An image-only model is read against the "
                "first, a model that also sees age and sex against the third; the hand latent's "
                "AUC is shown for reference and is not a ceiling."
            )
            doc.table(header, rows)
        header, rows, footer = rows_table(comparison, metrics["table_row"]["model"])
        doc.table(header, rows)
        doc.p(footer)
        comparison_figure(comparison, fig_dir / "comparison.png")
        doc.img(f"{FIGURES}/comparison.png", "AUC of every row with its 95 % interval")

    doc.h(2, "Classification (paper format)")
    s, row = metrics["summary"], metrics["table_row"]
    doc.table(
        ["model", "ROI", "backbone", "F1", "AUC", "accuracy", "sensitivity", "specificity"],
        [[row["model"], row["roi"], row["backbone"], _pm(s["f1_positive"]), _pm(s["auc"]),
          _pm(s["accuracy"]), _pm(s["sensitivity"]), _pm(s["specificity"])]],
    )  # fmt: skip
    doc.p(f"95 % intervals in cls/cls_metrics.json: {metrics.get('ci_method', CI_METHOD)}.")
    doc.img("cls/roc.png", "ROC per seed and pooled, with the bootstrap band")
    doc.img("cls/reliability.png", "Reliability diagram of the test probabilities")

    doc.h(2, "Segmentation")
    val_path = out / "seg" / "val_metrics.json"
    if val_path.exists():
        val = nulls_to_nan(json.loads(val_path.read_text()))
        dice_rows = _dice_figure(val, fig_dir / "dice_per_bone.png")
        doc.p(
            f"Validation subjects of the segmenter: Dice vs consensus "
            f"{val.get('dice/consensus/mean', float('nan')):.3f}, GED {val['ged']:.3f}, "
            f"HM-IoU {val['hm_iou']:.3f}, ECE {val['ece']:.3f}." + _experts_words(val)
        )
        doc.table(["bone", "Dice", "IoU"], dice_rows)
        doc.img(f"{FIGURES}/dice_per_bone.png", "Dice per bone against the annotators' consensus")
    for f in panels:
        caption = (
            "Test subjects: radiograph (subject probability), consensus, mixture mean, mutual "
            "information, and the heaviest hypotheses with their weights α"
            if "segmentation" in f
            else "The 7 segments cut from the prediction, with each one's probability"
        )
        doc.img(os.path.relpath(f, out), caption)

    doc.h(2, "Per-bone contribution to the subject score")
    contrib = _bone_contribution(out / "cls", fig_dir / "bone_contribution.png")
    if contrib:
        doc.p(
            "The subject's probability is the mean of its segments' probabilities; per bone, "
            "the mean segment probability in each class and the AUC of that bone alone."
        )
        doc.table(["bone", "mean p (osteoporotic)", "mean p (normal)", "AUC alone", "n"], contrib)
        doc.img(f"{FIGURES}/bone_contribution.png", "Per-bone contribution")

    radio_path = out / "radiogrammetry.json"
    if radio_path.exists():
        radio = nulls_to_nan(json.loads(radio_path.read_text()))  # numeric records
        s = radio["summary"]
        doc.h(2, "Radiogrammetry")
        doc.p(
            "Cortical index (W - M) / W at mid-shaft, W and M read from width profiles of the "
            "radiograph across the predicted bone; spread over the segmentation hypotheses. "
            f"{s['n_images']} images measured ({s['split']} subjects); the agreement with the "
            f"true index below is over the segmenter's {s.get('eval_split', s['split'])} "
            "subjects, which it did not train on."
        )
        tab = []
        for b in ("MC2", "MC3", "MC4", "radius"):
            if f"{b}_r" in s:
                tab.append([b, f"{s[f'{b}_r']:.3f}", f"{s[f'{b}_mae']:.4f}", str(s[f"{b}_n"])])
        if tab:
            doc.table(["bone", "r vs true index", "MAE", "n"], tab)
        if "MC2_vs_tscore_r" in s:
            doc.p(
                f"2MCI vs T-score: r = {s['MC2_vs_tscore_r']:.2f}; mean spread (SD) of the 2MCI "
                f"over hypotheses {s['MC2_mean_hypothesis_sd']:.4f}."
            )
        if _radiogrammetry_figure(radio, fig_dir / "radiogrammetry.png"):
            doc.img(f"{FIGURES}/radiogrammetry.png", "Measured vs true 2MCI; 2MCI vs T-score")
    summary = out / "run_summary.json"
    if summary.exists():
        stages = json.loads(summary.read_text()).get("stages", {})
        if stages:
            doc.h(2, "Run")
            doc.table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in stages.items()])
    md, page = out / "report.md", out / "report.html"
    md.write_text(doc.markdown())
    page.write_text(doc.html(f"osteo_jax report: {cfg.name}"))
    return {"md": md, "html": page}

"""The headline table: Bayes ceilings, then every row beside the baselines with paired Δ AUC.

Pure formatting of :func:`osteo_jax.pipeline.comparison.compare_rows` output
(``comparison.json``), shared by ``comparison.md``, the report and the CLI.
"""

from __future__ import annotations

from osteo_jax.eval.thresholds import DEFAULT_THRESHOLD, threshold_words

__all__ = [
    "ABSORPTIOMETRY_ROW",
    "CLINICAL_ROW",
    "IMAGE_AGE_ROW",
    "COMPARISON_JSON",
    "COMPARISON_MD",
    "IMAGE_ROW",
    "POROSITY_ROW",
    "RADIO_ROW",
    "STACKED_ROW",
    "ceiling_table",
    "delta_cell",
    "headline_table",
    "rows_table",
]

# Written by the comparison stage into the protocol folder.
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
IMAGE_ROW = "image model"
CLINICAL_ROW = "clinical"
RADIO_ROW = "radiogrammetry (measured CI)"
ABSORPTIOMETRY_ROW = "radiogrammetry + absorptiometry (CI, grey levels, areas)"
POROSITY_ROW = "radiogrammetry + porosity (CI, cortical porosity fitted on a calibrated detector)"
IMAGE_AGE_ROW = "radiogrammetry + image age (CI; age regressed on grey levels)"
# Image only: the image model's score and the measurement row best by train CV, stacked on val.
STACKED_ROW = "image model + measurements (stacked)"

_CEILINGS = (
    ("image_ceiling_auc", "image (every label-bearing quantity the image shows)"),
    ("clinical_ceiling_auc", "age + sex"),
    ("image_clinical_ceiling_auc", "image + age + sex"),
    ("hand_latent_auc", "hand bone-health latent alone (not a ceiling)"),
)


def _pm(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def delta_cell(paired: dict | None, digits: int = 3) -> str:
    """A paired difference as ``+0.012 (-0.030, +0.055)``, `` *`` when its interval excludes 0."""
    if paired is None:
        return "–"
    lo, hi = paired["ci95"]
    mark = " *" if paired["excludes_zero"] else ""
    return f"{paired['difference']:+.{digits}f} ({lo:+.{digits}f}, {hi:+.{digits}f}){mark}"


def ceiling_table(ceilings: dict | None) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of the synthetic cohort's ceilings; no rows for real data."""
    header = ["Bayes ceiling (AUC)", "this cohort", "population"]
    if not ceilings:
        return header, []
    pop = ceilings.get("population", {})
    return header, [
        [words, f"{ceilings[key]:.3f}", "–" if pop.get(key) is None else f"{pop[key]:.3f}"]
        for key, words in _CEILINGS
    ]


def rows_table(
    comparison: dict, model: str | None = None
) -> tuple[list[str], list[list[str]], str]:
    """``(header, rows, footer)``: AUC, interval, Δ vs clinical and vs the image model, F1, ….

    Args:
      comparison: ``compare_rows`` output.
      model: the image model's name (appended to its row label).
    """
    header = [
        "row", "AUC", "95 % CI", "Δ AUC vs clinical (95 % CI)",
        "Δ AUC image model − row (95 % CI)", "F1", "accuracy", "sensitivity", "specificity",
    ]  # fmt: skip
    rows = []
    for name, row in comparison["rows"].items():
        s = row["summary"]
        lo, hi = s["auc"]["ci95"]
        rows.append(
            [
                f"{name}: {model}" if name == IMAGE_ROW and model else name,
                _pm(s["auc"]),
                f"{lo:.2f}–{hi:.2f}",
                delta_cell(comparison["vs_clinical"].get(name)),
                delta_cell(comparison["vs_image"].get(name)),
                _pm(s["f1_positive"]),
                _pm(s["accuracy"]),
                _pm(s["sensitivity"]),
                _pm(s["specificity"]),
            ]
        )
    how = (
        f"{comparison['folds']}-fold cross-validation, pooled, ± std over folds"
        if comparison.get("folds")
        else "mean ± std over seeds"
    )
    footer = (
        f"All rows on the same test subjects ({how}). 95 % CI: {comparison['ci_method']}. "
        f"Δ: paired difference on the same subjects ({comparison['paired_method']}); * = the "
        f"interval excludes 0. {_threshold_sentence(comparison)} "
        "Baselines are logistic regressions fitted on the training subjects (fusion and the "
        "stacked image model + measurements, which weighs the image model's score against that "
        "of the measurement baseline with the best cross-validated AUC on the training "
        "subjects: on the validation subjects), never on a test subject. "
        "Bayes posterior rows: the generator's "
        "exact posteriors on the same test subjects (the ceilings, measured like any row)."
    )
    for name, why in comparison.get("skipped", {}).items():
        footer += f" No {name} row: {why}."
    return header, rows, footer


def _threshold_sentence(comparison: dict) -> str:
    """The threshold rule of the rows, and the rows that keep 0.5 (no validation scores)."""
    words = threshold_words(comparison.get("threshold_rule", "fixed"))
    fixed = comparison.get("fixed_threshold_rows") or []
    if fixed:
        words += (
            f"; threshold {DEFAULT_THRESHOLD} for {', '.join(fixed)} (fitted on the validation "
            "subjects: no out-of-sample validation scores)"
        )
    return words + "."


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def headline_table(comparison: dict, metrics: dict | None = None) -> str:
    """Markdown: the ceilings (synthetic data), then the rows table and its footer.

    Args:
      comparison: ``compare_rows`` output (or ``comparison.json``).
      metrics: the protocol's ``cls_metrics.json`` (names the image model's row).
    """
    lines = []
    header, rows = ceiling_table(comparison.get("ceilings"))
    if rows:
        lines += _markdown(header, rows) + [""]
    model = (metrics or {}).get("table_row", {}).get("model")
    header, rows, footer = rows_table(comparison, model)
    lines += _markdown(header, rows) + ["", footer]
    return "\n".join(lines) + "\n"

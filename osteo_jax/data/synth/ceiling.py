"""Bayes ceilings of the synthetic cohort: the best AUC any classifier can reach on it.

Three ceilings, each the AUC over a cohort's subjects of an exact posterior of the label
(:func:`osteo_jax.data.synth.posterior.posteriors`, whose module derives what enters it and why):

* ``image_ceiling_auc``: given the image's label-bearing latent quantities; an image-only classifier
  cannot beat it in expectation. It exceeds the hand latent's AUC because the image also shows
  age (through porosity and BV/TV) and sex (through hand size), and h only through the noisy h_b.
* ``clinical_ceiling_auc``: given age and sex only (what a clinical logistic regression uses).
* ``image_clinical_ceiling_auc``: given both (the ceiling of a fusion model).

At ``r = 0`` the bone latents carry nothing about T, yet the image ceiling stays above 0.5 by
exactly what the image tells of age and sex; the image + clinical ceiling then equals the
clinical one. ``hand_latent_auc`` (formerly ``oracle_auc``) is the AUC of ``-h``: a number
about the coupling ``r``, not a ceiling.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from osteo_jax.config import CohortConfig
from osteo_jax.data.folder import read_csv, rows_from, write_csv, write_json
from osteo_jax.data.synth import cohort as _c
from osteo_jax.data.synth.posterior import posteriors

__all__ = [
    "CEILINGS_CSV",
    "CEILINGS_JSON",
    "CEILING_KEYS",
    "ceilings",
    "population_ceilings",
    "read_ceilings",
    "read_posteriors",
    "write_ceilings",
]

# Files of a synthetic dataset folder: the ceilings, and each subject's Bayes posteriors.
CEILINGS_JSON = "oracle.json"
CEILINGS_CSV = "ceiling.csv"
POPULATION_SUBJECTS = 200_000

# Keys of :func:`ceilings`, in the order tables print them.
CEILING_KEYS = (
    "image_ceiling_auc",
    "clinical_ceiling_auc",
    "image_clinical_ceiling_auc",
    "hand_latent_auc",
)


def ceilings(cohort: _c.Cohort, cfg: CohortConfig = CohortConfig()) -> dict[str, float]:
    """AUCs of the exact posteriors over a cohort's subjects, and the hand latent's AUC.

    Returns:
      ``{"image_ceiling_auc", "clinical_ceiling_auc", "image_clinical_ceiling_auc",
      "hand_latent_auc"}``.
    """
    post = posteriors(cohort, cfg)
    return {
        "image_ceiling_auc": _c.roc_auc(post["image"], cohort.label),
        "clinical_ceiling_auc": _c.roc_auc(post["clinical"], cohort.label),
        "image_clinical_ceiling_auc": _c.roc_auc(post["image_clinical"], cohort.label),
        "hand_latent_auc": _c.hand_latent_auc(cohort),
    }


def population_ceilings(
    cfg: CohortConfig = CohortConfig(), n: int = POPULATION_SUBJECTS, seed: int = 1_000_003
) -> dict[str, float]:
    """The ceilings of the population: :func:`ceilings` on ``n`` feature-only subjects.

    A 192-subject cohort's own ceilings scatter by a few hundredths around these. Only the
    features are drawn (no rendering): 200,000 subjects take about 5 s on 2 cores, once per
    process and cohort config (cached; ``cfg.n_subjects`` does not matter).
    """
    return dict(_population_ceilings(dataclasses.replace(cfg, n_subjects=n), seed))


@functools.lru_cache(maxsize=8)
def _population_ceilings(cfg: CohortConfig, seed: int) -> tuple[tuple[str, float], ...]:
    return tuple(ceilings(_c.sample_cohort(cfg, seed=seed), cfg).items())


def write_ceilings(root, cohort: _c.Cohort, cfg: CohortConfig) -> dict:
    """Writes the ceilings (``oracle.json``) and each subject's posteriors (``ceiling.csv``).

    ``oracle.json`` holds the ceilings of this cohort and of the population; ``ceiling.csv``
    each subject's three Bayes posteriors. Returns the JSON's content.

    The posteriors let any protocol score "the Bayes posterior" as a row on exactly its own test
    subjects, the sharpest ruler a classifier can be read against.
    """
    from pathlib import Path

    root = Path(root)
    post = posteriors(cohort, cfg)
    record = {
        **ceilings(cohort, cfg),
        "population": {**population_ceilings(cfg), "n_subjects": POPULATION_SUBJECTS},
        "r": cohort.r,
        "prevalence": cohort.prevalence,
        "n_subjects": len(cohort),
        "n_osteoporotic": int(cohort.label.sum()),
        "preset": cfg.preset,
        "note": "AUCs of the exact posterior of the label given the image's label-bearing latent "
        "quantities (image_ceiling_auc), given age and sex (clinical_ceiling_auc) and given both "
        "(image_clinical_ceiling_auc), on this cohort and on 200,000 subjects of the same model "
        "(population); hand_latent_auc is the AUC of the bone-health latent alone, not a "
        "ceiling. See osteo_jax/data/synth/ceiling.py.",
    }
    write_json(root / CEILINGS_JSON, record)
    write_csv(
        root / CEILINGS_CSV,
        rows_from(
            {
                "subject_id": cohort.subject_id,
                "p_image": np.round(post["image"], 6),
                "p_clinical": np.round(post["clinical"], 6),
                "p_image_clinical": np.round(post["image_clinical"], 6),
            }
        ),
    )
    return record


def read_ceilings(root) -> dict | None:
    """The ceilings of a dataset folder: ``oracle.json``'s content, or None for real data.

    Folders written before the ceilings existed (an ``oracle.json`` holding only the hand
    latent's AUC) get them recomputed in memory from the generator config in ``dataset.json``
    (a few seconds; nothing is written into the folder).
    """
    import json
    from pathlib import Path

    root = Path(root)
    path = root / CEILINGS_JSON
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if all(k in record for k in CEILING_KEYS) and (root / CEILINGS_CSV).exists():
        return record
    return _recomputed(str(root.resolve()))[0]


def read_posteriors(root) -> dict[str, dict[str, float]] | None:
    """``{"image" | "clinical" | "image_clinical": {subject_id: P(label = 1 | ...)}}``.

    None for a folder without the generator's ``oracle.json`` (real data).
    """
    from pathlib import Path

    root = Path(root)
    if read_ceilings(root) is None:
        return None
    if not (root / CEILINGS_CSV).exists():
        return _recomputed(str(root.resolve()))[1]
    rows = read_csv(root / CEILINGS_CSV)
    return {
        k: {r["subject_id"]: float(r[f"p_{k}"]) for r in rows}
        for k in ("image", "clinical", "image_clinical")
    }


@functools.lru_cache(maxsize=4)
def _recomputed(root: str) -> tuple[dict, dict]:
    """Ceilings and posteriors of an older synthetic folder, from its ``dataset.json``."""
    import json
    from pathlib import Path

    from osteo_jax.config import SynthConfig, from_dict

    meta = json.loads((Path(root) / "dataset.json").read_text())
    synth = from_dict(SynthConfig, meta["generator"]["config"])
    cohort = _c.sample_cohort(synth.cohort, seed=synth.seed)
    post = posteriors(cohort, synth.cohort)
    record = {
        **ceilings(cohort, synth.cohort),
        "population": {**population_ceilings(synth.cohort), "n_subjects": POPULATION_SUBJECTS},
        "r": cohort.r,
        "preset": synth.cohort.preset,
    }
    ids = cohort.subject_id.tolist()
    return record, {k: dict(zip(ids, map(float, v), strict=True)) for k, v in post.items()}

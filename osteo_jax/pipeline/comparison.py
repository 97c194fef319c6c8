"""The ruler a classification result is read against: baselines and Bayes posteriors, same splits.

After :func:`~osteo_jax.pipeline.protocol.run_protocol` has written its parts (``seed<k>/`` or
``fold<i>/``: ``split.json``, ``val_predictions.csv``, ``test_predictions.csv``), this stage
scores on exactly the same test subjects of every part:

* ``image model``: the protocol's own subject probabilities;
* ``fusion``: the image score plus the covariates, stacked on the validation subjects;
* ``clinical``: logistic regression on the covariates (default age and sex), fitted on train;
* ``radiogrammetry``: on the cortical indices measured from the predicted masks (when a
  ``radiogrammetry.json`` over all subjects is given), alone and with the covariates; where
  the file has them, also with the absorptiometry grey levels and areas
  (:mod:`osteo_jax.eval.radiogrammetry.absorptiometry`), alone and with the covariates, and
  with an "image age" regressed from the grey levels on the train subjects' recorded ages
  (:func:`~osteo_jax.eval.baselines.image_age_scores`: image only at prediction);
* ``image model + measurements (stacked)``: image only, the image model's score and that of
  the measurement baseline with the highest 5-fold cross-validated AUC on the training subjects
  (both out-of-sample on validation and test; the image-age row is not a candidate), weighed
  on the validation subjects. Each part's two regressions are saved as its ``stacker.json``
  (:class:`~osteo_jax.eval.stacker.ImageStacker`), which ``predict`` and ``screen`` apply to a
  new radiograph;
* ``Bayes posterior (...)``: on a synthetic cohort, the generator's exact posteriors
  (``ceiling.csv``): the ceilings evaluated on the same test subjects.

The threshold of F1, accuracy, sensitivity and specificity follows the protocol's
``ClsConfig.threshold`` rule, chosen per part and row on that row's validation-subject scores:
the image model's ``val_predictions.csv``, the train-fitted baselines' validation predictions,
the posteriors of the validation subjects. Fusion is fitted on the validation subjects, so it
has no out-of-sample validation scores: it keeps 0.5 (listed in ``fixed_threshold_rows`` and
said under the table). A part whose validation subjects hold one class uses 0.5.

Each row is summarised like the protocol (mean ± std over seeds with the hierarchical
bootstrap interval, or the pooled folds), and compared with the clinical row and with the image
model by a paired bootstrap on the same subjects (``paired_difference``). Writes
``comparison.json`` and ``comparison.md`` into the protocol folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import read_csv, rows_from, write_csv, write_json
from osteo_jax.data.synth.ceiling import read_ceilings, read_posteriors
from osteo_jax.eval.baselines import (
    SCORE_EPS,
    BaselineScores,
    clinical_scores,
    cross_validated_auc,
    fusion_scores,
    image_age_scores,
    radiogrammetry_scores,
    score_logit,
)
from osteo_jax.eval.cls_stats import (
    CI_METHOD,
    FOLD_CI_METHOD,
    PAIRED_METHOD,
    paired_difference,
    summarise_folds,
    summarise_seeds,
)
from osteo_jax.eval.headline import (
    ABSORPTIOMETRY_ROW,
    CLINICAL_ROW,
    COMPARISON_JSON,
    COMPARISON_MD,
    IMAGE_AGE_ROW,
    IMAGE_ROW,
    POROSITY_ROW,
    RADIO_ROW,
    STACKED_ROW,
    headline_table,
)
from osteo_jax.eval.radiogrammetry.absorptiometry import ABSORPTIOMETRY_KEYS
from osteo_jax.eval.stacker import STACKER_FILE, ImageStacker, LinearLogistic
from osteo_jax.eval.subject_features import (
    DEFAULT_COVARIATES,
    SubjectFeatures,
    radiogrammetry_features,
    read_covariates,
    read_labels,
)
from osteo_jax.eval.thresholds import DEFAULT_THRESHOLD, choose_threshold

__all__ = ["compare_rows", "compare_runs"]


def _read_predictions(path: Path) -> dict[str, tuple[int, float]]:
    return {r["subject_id"]: (int(r["label"]), float(r["probability"])) for r in read_csv(path)}


def _pooled(pairs: list[tuple]) -> list[tuple]:
    """The folds of a k-fold protocol as one test set (each subject once)."""
    return [tuple(np.concatenate(x) for x in zip(*pairs, strict=True))]


def _best_by_training_cv(candidates: list[BaselineScores]) -> BaselineScores:
    """The candidate with the highest cross-validated AUC on its training subjects.

    (:func:`~osteo_jax.eval.baselines.cross_validated_auc`; the last of equals, and the last
    candidate where none can be cross-validated.) The training subjects outnumber a validation
    part several times over: at 192 subjects a part holds 17-19 validation subjects and ~5
    positives, whose AUC ranked the candidates by chance.
    """
    aucs = np.array([cross_validated_auc(c) for c in candidates])
    if not np.isfinite(aucs).any():
        return candidates[-1]
    aucs = np.where(np.isfinite(aucs), aucs, -np.inf)
    return candidates[len(aucs) - 1 - int(np.argmax(aucs[::-1]))]


def _scores_of(baseline: BaselineScores, ids: list[str]) -> dict[str, float]:
    """``{subject: probability}`` of a baseline fitted on train for (validation) ``ids``."""
    return dict(zip(ids, baseline.probability(ids).tolist(), strict=True))


def _val_predictions(cls_dir: Path, part: dict, segments) -> dict[str, tuple[int, float]]:
    """The image model's validation-subject probabilities of one part (computed if absent)."""
    from osteo_jax.pipeline.protocol import VAL_PREDICTIONS

    path = cls_dir / part["dir"] / VAL_PREDICTIONS
    if path.exists():
        return _read_predictions(path)
    if segments is None:
        raise ValueError(
            f"{path}: missing (a protocol folder from before validation predictions were "
            "saved); pass its segments folder to compute them"
        )
    import flax.serialization

    from osteo_jax.config import BackboneConfig, from_dict
    from osteo_jax.data.segments import load_segments
    from osteo_jax.eval.aggregate import AGGREGATE_FILE, aggregate_subjects, load_head
    from osteo_jax.eval.cls_metrics import subject_scores
    from osteo_jax.pipeline.protocol import MODEL_FILE
    from osteo_jax.train.cls_loop import predict_segments

    metrics = json.loads((cls_dir / "cls_metrics.json").read_text())
    backbone = from_dict(BackboneConfig, metrics["config"]["backbone"])
    seg = load_segments(segments).select_bones(tuple(metrics["config"]["cls"]["bones"]))
    val = set(json.loads((cls_dir / part["dir"] / "split.json").read_text())["val"])
    subset = seg.take(np.flatnonzero(np.isin(seg.subject_ids, sorted(val))))
    params = flax.serialization.msgpack_restore((cls_dir / part["dir"] / MODEL_FILE).read_bytes())
    probs = predict_segments(params, backbone, subset)
    _, y = subject_scores(probs, subset)
    head_file = cls_dir / part["dir"] / AGGREGATE_FILE  # the protocol's head, if it fitted one
    head = load_head(head_file) if head_file.exists() else None
    _, p = aggregate_subjects(probs, subset.valid, subset.subject_ids, head)
    subjects = np.unique(subset.subject_ids)
    write_csv(path, rows_from({"subject_id": subjects, "label": y, "probability": np.round(p, 6)}))
    return _read_predictions(path)


def _porosity_features(radiogrammetry, skipped: dict[str, str]) -> SubjectFeatures | None:
    """The cortical indices with the fitted porosities, or None (the reason in ``skipped``).

    Without a detector calibration (any real dataset) every porosity is NaN, and the row would
    only repeat the radiogrammetry row: it is left out.
    """
    try:
        feats = radiogrammetry_features(radiogrammetry, porosity=True)
    except ValueError as err:  # a file measured before the porosity fit existed
        skipped[POROSITY_ROW] = str(err)
        return None
    cols = [i for i, n in enumerate(feats.names) if n.endswith("_porosity")]
    if not np.isfinite(feats.values[:, cols]).any():
        skipped[POROSITY_ROW] = "no porosity measured (the dataset records no detector calibration)"
        return None
    return feats


def compare_rows(
    cls_dir: str | Path,
    data: str | Path,
    *,
    radiogrammetry: str | Path | None = None,
    covariates: Sequence[str] = DEFAULT_COVARIATES,
    segments: str | Path | None = None,
    n_boot: int = 1000,
) -> dict:
    """Scores the baselines and Bayes posteriors on the protocol's splits; writes the tables.

    Args:
      cls_dir: a finished :func:`~osteo_jax.pipeline.protocol.run_protocol` folder.
      data: the dataset folder the segments were cut from (``subjects.csv`` for labels and
        covariates; ``oracle.json`` / ``ceiling.csv`` when synthetic).
      radiogrammetry: ``radiogrammetry.json`` measured on all subjects (``split="all"``); None
        leaves the radiogrammetry rows out.
      covariates: ``subjects.csv`` columns of the clinical baseline (and of fusion); empty
        leaves the clinical row out and makes fusion a recalibration of the image score.
      segments: the segments folder, needed only for protocol folders written before
        validation predictions were saved.
      n_boot: bootstrap resamples of the intervals and the paired differences.

    Returns:
      ``{"rows": {name: {"summary", "per_part"}}, "vs_clinical": {name: paired},
      "vs_image": {name: paired}, "ceilings", "ci_method", "paired_method", "folds",
      "skipped": {row: why}, "threshold_rule", "fixed_threshold_rows"}`` (fusion is skipped
      where a validation part has fewer than 2 subjects of a class; each ``per_part`` entry
      holds its ``threshold``), also written to ``cls_dir/comparison.json``; the headline
      table to ``comparison.md``.

    Raises:
      DatasetError: a covariate column is missing from ``subjects.csv`` (named).
    """
    cls_dir, data = Path(cls_dir), Path(data)
    metrics = json.loads((cls_dir / "cls_metrics.json").read_text())
    folds = int(metrics["config"]["cls"].get("folds", 0))
    labels = read_labels(data)
    cov = read_covariates(data, tuple(covariates)) if covariates else None
    radio = radiogrammetry_features(radiogrammetry) if radiogrammetry else None
    posteriors = read_posteriors(data)
    rule = metrics["config"]["cls"].get("threshold", "fixed")
    rows: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]] = {}
    skipped: dict[str, str] = {}  # rows that cannot be fitted on some part, and why
    radio_abs = radio_por = None
    if radiogrammetry:
        try:
            radio_abs = radiogrammetry_features(radiogrammetry, absorptiometry=True)
        except ValueError as err:  # a file measured before absorptiometry existed
            skipped[ABSORPTIOMETRY_ROW] = str(err)
        radio_por = _porosity_features(radiogrammetry, skipped)
    ages = None
    if radio_abs is not None:
        try:
            ages = read_covariates(data, ("age",))
        except DatasetError as err:  # no recorded age to train the image-age regression on
            skipped[IMAGE_AGE_ROW] = str(err)
    fixed_rows: set[str] = set()  # rows without out-of-sample validation scores: 0.5

    def add(name: str, ids: list[str], probs: np.ndarray, val: dict | None = None) -> None:
        """Adds a part of a row; its threshold by ``rule`` on ``val`` ({subject: p}), if any."""
        y = np.array([labels[s] for s in ids])
        t = DEFAULT_THRESHOLD
        if val is None:
            fixed_rows.add(name)
        else:
            val_y = np.array([labels[s] for s in val])
            if len(np.unique(val_y)) == 2:  # one class: 0.5, as in the protocol
                t = choose_threshold(np.array(list(val.values())), val_y, rule)
        rows.setdefault(name, []).append((np.asarray(ids), np.asarray(probs, np.float64), y, t))

    for part in metrics["per_seed"]:
        part.setdefault("dir", f"seed{part['seed']}")
        split = json.loads((cls_dir / part["dir"] / "split.json").read_text())
        test_ids, val_ids = sorted(split["test"]), sorted(split["val"])
        test = _read_predictions(cls_dir / part["dir"] / "test_predictions.csv")
        val = _val_predictions(cls_dir, part, segments)
        fitted = []
        add(IMAGE_ROW, test_ids, [test[s][1] for s in test_ids], {s: val[s][1] for s in val_ids})
        image_scores = {s: p for s, (_, p) in {**val, **test}.items()}
        fusion_name = f"fusion (image + {', '.join(covariates)})" if cov else "image, recalibrated"
        try:
            fusion = fusion_scores(split, labels, image_scores, cov)
        except ValueError as err:  # e.g. a tiny validation part with one subject of a class
            skipped[fusion_name] = f"{part['dir']}: {err}"
        else:
            fitted.append(fusion)  # fitted on val: no out-of-sample validation scores
            add(fusion_name, test_ids, fusion.probability(test_ids))
        if cov is not None:
            clinical = clinical_scores(split, labels, cov)
            fitted.append(clinical)
            add(
                f"{CLINICAL_ROW} ({', '.join(covariates)})",
                test_ids,
                clinical.probability(test_ids),
                _scores_of(clinical, val_ids),
            )
        measured = []  # image-only measurement baselines, candidates of the stacked row
        for feats, row in (
            (radio, RADIO_ROW),
            (radio_abs, ABSORPTIOMETRY_ROW),
            (radio_por, POROSITY_ROW),
        ):
            if feats is None:
                continue
            alone = radiogrammetry_scores(split, labels, feats)
            fitted.append(alone)
            add(row, test_ids, alone.probability(test_ids), _scores_of(alone, val_ids))
            measured.append((row, alone))
            if cov is not None:
                with_cov = radiogrammetry_scores(split, labels, feats, cov)
                fitted.append(with_cov)
                add(
                    f"{row.split(' (')[0]} + {', '.join(covariates)}",
                    test_ids,
                    with_cov.probability(test_ids),
                    _scores_of(with_cov, val_ids),
                )
        if radio_abs is not None and ages is not None:
            image_age = image_age_scores(
                split, labels, radio_abs, ages, age_features=ABSORPTIOMETRY_KEYS
            )
            fitted.append(image_age)
            add(
                IMAGE_AGE_ROW,
                test_ids,
                image_age.probability(test_ids),
                _scores_of(image_age, val_ids),
            )
            # Not a candidate of the stacked row: its ridge regression of age is not part of
            # the saved stacker that predict applies.
        stacker_file = cls_dir / part["dir"] / STACKER_FILE
        if measured:
            row_of = {id(b): row for row, b in measured}
            best = _best_by_training_cv([b for _, b in measured])
            # Image-only stacking: the image model's score and the measurement baseline's
            # (out-of-sample on val and test: it was fitted on train), weighed on val.
            r_ids = val_ids + test_ids
            r_logit = score_logit(best.probability(r_ids))[:, None]
            try:
                stacked = fusion_scores(
                    split,
                    labels,
                    image_scores,
                    SubjectFeatures(np.asarray(r_ids), r_logit, ("measurements_logit",)),
                )
            except ValueError as err:
                skipped[STACKED_ROW] = f"{part['dir']}: {err}"
            else:
                fitted.append(stacked)
                add(STACKED_ROW, test_ids, stacked.probability(test_ids))
                ImageStacker(
                    row=row_of[id(best)],
                    measurement=LinearLogistic.from_pipeline(best.model, best.feature_names),
                    stack=LinearLogistic.from_pipeline(stacked.model, stacked.feature_names),
                    eps=SCORE_EPS,
                ).save(stacker_file)
                stacker_file = None
        if stacker_file is not None:  # no stacked score here: an older stacker of ours goes
            stacker_file.unlink(missing_ok=True)
        for b in fitted:  # the test subjects are never fitted on (also tested)
            seen = set(b.fit_subjects) & set(test_ids)
            if seen:
                raise AssertionError(f"{b.name} baseline was fitted on test subjects {seen}")
        if posteriors is not None:
            for key, words in (
                ("image", "Bayes posterior: image"),
                ("clinical", "Bayes posterior: age, sex"),
                ("image_clinical", "Bayes posterior: image + age, sex"),
            ):
                post = posteriors[key]
                val_post = {s: post[s] for s in val_ids} if set(val_ids) <= set(post) else None
                add(words, test_ids, [post[s] for s in test_ids], val_post)

    for name, why in skipped.items():
        rows.pop(name, None)
        print(f"comparison: no {name} row ({why})")
    summarise = summarise_folds if folds else summarise_seeds
    out: dict = {
        "rows": {},
        "vs_clinical": {},
        "vs_image": {},
        "ceilings": read_ceilings(data),
        "ci_method": FOLD_CI_METHOD if folds else CI_METHOD,
        "paired_method": PAIRED_METHOD + (" (pooled folds)" if folds else ""),
        "folds": folds,
        "covariates": list(covariates),
        "skipped": skipped,
        "threshold_rule": rule,
        "fixed_threshold_rows": sorted(n for n in fixed_rows if n in rows)
        if rule != "fixed"
        else [],
    }
    for name, parts in rows.items():
        out["rows"][name] = {
            "summary": summarise(
                [(p, y) for _, p, y, _ in parts], n_boot=n_boot, thresholds=[t for *_, t in parts]
            ),
            "per_part": [
                {
                    "subject_id": ids.tolist(),
                    "probability": p.tolist(),
                    "label": y.tolist(),
                    "threshold": t,
                }
                for ids, p, y, t in parts
            ],
        }

    def paired(a: str, b: str) -> dict:
        pairs = [
            (pa, pb, ya) for (_, pa, ya, _), (_, pb, _, _) in zip(rows[a], rows[b], strict=True)
        ]
        return paired_difference(_pooled(pairs) if folds else pairs, n_boot=max(n_boot, 1000))

    clinical = next((n for n in rows if n.startswith(CLINICAL_ROW)), None)
    for name in rows:
        if clinical and name != clinical:
            out["vs_clinical"][name] = paired(name, clinical)
        if name != IMAGE_ROW:
            out["vs_image"][name] = paired(IMAGE_ROW, name)
    write_json(cls_dir / COMPARISON_JSON, out)
    (cls_dir / COMPARISON_MD).write_text(headline_table(out, metrics))
    return out


def compare_runs(cls_dir_a: str | Path, cls_dir_b: str | Path, *, n_boot: int = 2000) -> dict:
    """Paired AUC difference of two protocol runs on the same splits (run ``a`` minus ``b``).

    For an ablation: two :func:`~osteo_jax.pipeline.protocol.run_protocol` folders of the same
    dataset, seeds (or folds) and split rule, e.g. the full pipeline and the same pipeline with
    one component changed. Each part's ``test_predictions.csv`` of the two runs are matched by
    subject, and the difference is :func:`~osteo_jax.eval.cls_stats.paired_difference` (pooled
    over the folds of a k-fold protocol, each subject once, as :func:`compare_rows` does).

    Args:
      cls_dir_a: a finished protocol folder (``cls_metrics.json``, ``<part>/``): the minuend.
      cls_dir_b: the other run, same parts and test subjects: the subtrahend.
      n_boot: bootstrap resamples.

    Returns:
      ``paired_difference`` output (``difference``, ``ci95``, ``p_value``, ``excludes_zero``,
      ...) plus ``"parts"``: the part folders compared.

    Raises:
      ValueError: the runs do not have the same parts, or a part's test subjects or their
        labels differ (the folder and part are named).
    """
    dirs = (Path(cls_dir_a), Path(cls_dir_b))
    metas = [json.loads((d / "cls_metrics.json").read_text()) for d in dirs]
    parts = [[p.get("dir", f"seed{p['seed']}") for p in m["per_seed"]] for m in metas]
    if parts[0] != parts[1]:
        raise ValueError(
            f"{dirs[0]} has parts {parts[0]} but {dirs[1]} has {parts[1]}: not the same protocol"
        )
    pairs = []
    for part in parts[0]:
        a, b = (_read_predictions(d / part / "test_predictions.csv") for d in dirs)
        if set(a) != set(b):
            raise ValueError(
                f"{dirs[0] / part} and {dirs[1] / part} test different subjects "
                f"({len(set(a) ^ set(b))} differ): not the same split"
            )
        ids = sorted(a)
        if any(a[s][0] != b[s][0] for s in ids):
            raise ValueError(f"{dirs[0] / part} and {dirs[1] / part} disagree on labels")
        pairs.append(
            (
                np.array([a[s][1] for s in ids]),
                np.array([b[s][1] for s in ids]),
                np.array([a[s][0] for s in ids]),
            )
        )
    if int(metas[0]["config"]["cls"].get("folds", 0)):
        pairs = _pooled(pairs)
    return {**paired_difference(pairs, n_boot=n_boot), "parts": parts[0]}

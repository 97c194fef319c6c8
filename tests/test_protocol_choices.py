"""The protocol with a validation-chosen threshold and the logistic aggregation head: what it
records and writes is reproduced from its saved files (models, heads, predictions)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from osteo_jax.config import BackboneConfig, ClsConfig
from osteo_jax.config.labels import BONE_NAMES
from osteo_jax.data.folder import read_csv
from osteo_jax.data.segments import SegmentSet
from osteo_jax.eval.aggregate import FeatureHead, LogisticHead, aggregate_subjects
from osteo_jax.eval.cls_metrics import binary_metrics
from osteo_jax.eval.thresholds import choose_threshold
from osteo_jax.pipeline.predict import PredictModel
from osteo_jax.pipeline.protocol import load_heads, load_models, run_protocol
from osteo_jax.train.cls_loop import predict_segments, segment_features

S = 16
BACKBONE = BackboneConfig(depth=18, width=8)


def _segments(n=40):
    rng = np.random.default_rng(0)
    nb = len(BONE_NAMES)
    labels = (np.arange(n) % 3 == 0).astype(np.int64)
    images = rng.random((n, nb, S, S)).astype(np.float32) * 0.5
    images[:, 0] += 0.4 * labels[:, None, None]  # the first bone carries the label
    valid = np.ones((n, nb), bool)
    valid[1, 3] = valid[5, 0] = False
    return SegmentSet(
        images=images,
        valid=valid,
        image_ids=np.array([f"I{i:02d}" for i in range(n)]),
        subject_ids=np.array([f"S{i:02d}" for i in range(n)]),
        labels=labels,
        t_scores=np.full(n, np.nan),
        bones=BONE_NAMES,
        meta={"data": "<test>"},
    )


@pytest.mark.slow
@pytest.mark.e2e  # a real protocol run (~11 s idle)
@pytest.mark.parametrize(
    "aggregate, head_type", [("logistic", LogisticHead), ("features", FeatureHead)]
)
def test_threshold_and_head_are_chosen_saved_and_reused(tmp_path, aggregate, head_type):
    seg = _segments()
    cls = ClsConfig(
        epochs=2, batch_size=32, seeds=(0,), split=(0.5, 0.25, 0.25), bootstrap=20,
        threshold="youden", aggregate=aggregate,
    )  # fmt: skip
    out = tmp_path / "cls"
    res = run_protocol(seg, out, ssl=None, cls=cls, backbone=BACKBONE, progress=False)
    part = res["per_seed"][0]
    val = read_csv(out / "seed0" / "val_predictions.csv")
    test = read_csv(out / "seed0" / "test_predictions.csv")
    pv, yv = (np.array([float(r[k]) for r in val]) for k in ("probability", "label"))
    pt, yt = (np.array([float(r[k]) for r in test]) for k in ("probability", "label"))
    t = choose_threshold(pv, yv.astype(int), "youden")
    assert part["threshold"] == t and t != 0.5
    got, want = part["test"], binary_metrics(pt, yt.astype(int), t)
    for k in ("accuracy", "sensitivity", "specificity", "f1_macro"):
        assert got[k] == pytest.approx(want[k]), k
    assert res["summary"]["accuracy"]["per_seed"][0] == pytest.approx(want["accuracy"])
    assert "maximum Youden's J" in res["table"]
    assert json.loads((out / "cls_metrics.json").read_text())["threshold_rule"] == "youden"

    # The saved head and model reproduce the validation probabilities.
    models, backbone, bones, metrics = load_models(out)
    (head,) = load_heads(out, metrics)
    assert isinstance(head, head_type) and head.bones == bones == BONE_NAMES
    ids = [r["subject_id"] for r in val]
    sub = seg.take(np.flatnonzero(np.isin(seg.subject_ids, ids)))
    probs = predict_segments(models[0], backbone, sub)
    feats = segment_features(models[0]["backbone"], backbone, sub)
    subjects, p = aggregate_subjects(probs, sub.valid, sub.subject_ids, head, features=feats)
    assert subjects.tolist() == ids
    np.testing.assert_allclose(p, pv, atol=1e-6)

    # predict's classify applies the same head to each segment set (one image = one subject).
    model = PredictModel.__new__(PredictModel)
    model.models, model.heads, model.backbone, model.bones = models, [head], backbone, bones
    model.cfg = SimpleNamespace(segment=SimpleNamespace(roi="bones"))
    sets = [SimpleNamespace(images=sub.images[i], valid=sub.valid[i]) for i in range(len(sub))]
    np.testing.assert_allclose(model.classify(sets)[:, 0], pv, atol=1e-6)


@pytest.mark.slow
@pytest.mark.e2e  # SSL (1 epoch) + probe on 40 tiny segments
def test_the_classifier_is_the_pretrained_backbone_with_its_grey_levels(tmp_path):
    """With SSL the classifier is ssl.backbone, not ProtocolConfig.backbone (here width 8)."""
    from osteo_jax.config import CropConfig, SSLConfig

    pretrained = BackboneConfig(depth=18, width=4, grey_levels=True)
    ssl = SSLConfig(
        backbone=pretrained,
        crops=CropConfig(global_size=12, local_size=8, n_local=0),
        batch_size=16,
        epochs=1,
        projector_hidden=16,
        projector_out=8,
    )
    cls = ClsConfig(
        epochs=2, batch_size=32, seeds=(0,), split=(0.5, 0.25, 0.25), bootstrap=20,
        aggregate="features",
    )  # fmt: skip
    out = tmp_path / "cls"
    run_protocol(_segments(), out, ssl=ssl, cls=cls, backbone=BACKBONE, progress=False)
    models, backbone, _, metrics = load_models(out)
    assert backbone == pretrained
    (head,) = load_heads(out, metrics)
    # 4 * 8 pooled channels, then the mean and 5 percentiles of the segment's grey levels.
    assert head.coef.shape == (len(BONE_NAMES), 4 * 8 + 6)
    assert models[0]["classifier"]["fc"]["kernel"].shape == (4 * 8 + 6, 2)

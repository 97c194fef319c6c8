"""End to end through the real CLI: synth -> segment -> evaluate (tiny config, one seed)."""

import dataclasses
import json

import numpy as np
import pytest

from osteo_jax.cli import main
from osteo_jax.config import (
    BackboneConfig,
    ClsConfig,
    CropConfig,
    ProtocolConfig,
    SegmentConfig,
    SSLConfig,
)
from osteo_jax.data.segments import load_segments

TINY = ProtocolConfig(
    name="tiny",
    ssl=SSLConfig(
        backbone=BackboneConfig(width=8),
        crops=CropConfig(global_size=12, local_size=8, n_local=2),
        batch_size=8,
        epochs=1,
        projector_hidden=16,
        projector_out=8,
    ),
    cls=ClsConfig(epochs=2, batch_size=16, seeds=(0,), bootstrap=20),
    backbone=BackboneConfig(width=8),
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "data"
    args = ["--subjects", "12", "--size", "128", "--seed", "1", "--workers", "1"]
    assert main(["synth", *args, "--out", str(out)]) == 0
    return out


@pytest.mark.e2e  # ~75 s: segments then the 3-seed protocol through the CLI
def test_segment_then_evaluate(dataset, tmp_path, capsys):
    seg_dir = tmp_path / "segments"
    assert (
        main(
            [
                "segment",
                "--data",
                str(dataset),
                "--source",
                "exact",
                "--size",
                "16",
                "--out",
                str(seg_dir),
            ]
        )
        == 0
    )
    seg = load_segments(seg_dir)
    assert seg.images.shape == (12, 7, 16, 16) and seg.valid.all()
    labels = {
        r.split(",")[0]: r.split(",")[5]
        for r in (dataset / "subjects.csv").read_text().splitlines()[1:]
    }
    assert [int(labels[s]) for s in seg.subject_ids] == seg.labels.tolist()

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"config": dataclasses.asdict(TINY)}))
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--segments", str(seg_dir), "--out", str(out), "--config", str(cfg)]) == 0
    )
    printed = capsys.readouterr().out
    assert "SYNTHETIC DATA" in printed and "| tiny |" in printed
    # The baselines and the Bayes posteriors on the same test subjects, printed and written.
    assert "| clinical (age, sex) |" in printed and "Bayes posterior: image" in printed
    for name in (
        "comparison.json",
        "comparison.md",
        "cls_metrics.json",
        "table.md",
        "roc.png",
        "reliability.png",
        "seed0/split.json",
        "seed0/test_predictions.csv",
    ):
        assert (out / name).is_file(), name
    result = json.loads((out / "cls_metrics.json").read_text())
    split = json.loads((out / "seed0" / "split.json").read_text())
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(seg.subject_ids.tolist())
    acc = result["summary"]["accuracy"]["per_seed"][0]
    assert 0.0 <= acc <= 1.0 and np.isfinite(acc)
    # The SSL run saw only the training subjects' segments: 7 per training image.
    ssl_cfg = json.loads((out / "seed0" / "ssl" / "config.json").read_text())
    assert ssl_cfg["config"]["method"] == "simclr"

    # Re-running resumes from the checkpoints and reproduces the same numbers.
    assert (
        main(["evaluate", "--segments", str(seg_dir), "--out", str(out), "--config", str(cfg)]) == 0
    )
    again = json.loads((out / "cls_metrics.json").read_text())
    assert again["summary"]["auc"]["per_seed"] == result["summary"]["auc"]["per_seed"]

    # k-fold instead of seeds: every subject tested exactly once.
    folds = tmp_path / "folds"
    argv = ["evaluate", "--segments", str(seg_dir), "--out", str(folds), "--config", str(cfg)]
    assert main([*argv, "--folds", "2"]) == 0
    tested = []
    for k in range(2):
        tested += json.loads((folds / f"fold{k}" / "split.json").read_text())["test"]
    assert sorted(tested) == sorted(set(seg.subject_ids.tolist()))
    assert json.loads((folds / "comparison.json").read_text())["folds"] == 2


def test_segment_rejects_an_unknown_source(dataset, tmp_path, capsys):
    out = tmp_path / "segments"
    assert main(["segment", "--data", str(dataset), "--source", "nope", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err
    assert not out.exists()


def test_a_registered_segment_source_is_used_by_name(dataset, tmp_path, monkeypatch):
    from osteo_jax.pipeline import extract

    def half_source(source, ctx):  # a new source: one function in the registry
        if source != "half":
            return None

        def cut(rows, images):
            return [(np.full((1, ctx.cfg.size, ctx.cfg.size), 0.5), np.ones(1, bool))] * len(rows)

        return extract.SegmentSource("half", ("image",), cut, {"note": "test"})

    monkeypatch.setitem(extract.SEGMENT_SOURCES, "half", half_source)
    out = extract.extract_segments(
        dataset, tmp_path / "half", source="half", cfg=SegmentConfig(size=8), workers=1
    )
    seg = load_segments(out)
    assert seg.images.shape[1:] == (1, 8, 8) and np.all(seg.images == 0.5) and seg.valid.all()
    assert json.loads((out / "segments.json").read_text())["note"] == "test"

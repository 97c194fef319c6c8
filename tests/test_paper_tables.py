"""The paper-table rows (experiments/tables.py), the crop baselines' segments and the formatter."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from osteo_jax.config import (
    ROI_REGIONS,
    BackboneConfig,
    ClsConfig,
    ProtocolConfig,
    SegmentConfig,
    from_dict,
)
from osteo_jax.data.segments import cut_segments

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables():
    return _load(EXPERIMENTS / "paper_tables.py")


ROW_SPECS = EXPERIMENTS / "tables.py"
specs = _load(ROW_SPECS)
ROWS = sorted(specs.ROWS)
TABLE7 = [
    f"{m}_{c}" for m in ("simclr", "vicreg", "supcon", "swav") for c in ("custom", "ordinary")
]


# --------------------------------------------------------------- crops without a mask


def _hand_case():
    """40 x 40 image with a smooth background; radius and ulna rectangles in the label map."""
    r, c = np.mgrid[0:40, 0:40]
    image = (0.2 + 0.01 * r + 0.005 * c).astype(np.float32)
    labels = np.zeros((40, 40), np.uint8)
    labels[10:20, 8:16] = 1  # radius
    labels[10:20, 20:28] = 2  # ulna
    image[labels > 0] += 0.3
    return image, labels


def test_crop_keeps_the_background_exactly():
    image, labels = _hand_case()
    # Union box rows 10-19, cols 8-27: a 20 px square (box frame) from row 5, col 8; with 20
    # output pixels every segment pixel centre is an image pixel centre, so the crop is exact.
    cfg = SegmentConfig(
        size=20,
        frame="box",
        dilate_mm=0.0,
        margin=0.0,
        min_area_mm2=1.0,
        roi="wrist",
        background="keep",
    )
    seg = cut_segments(image, labels, spacing_mm=1.0, cfg=cfg)
    assert seg.images.shape == (1, 20, 20) and seg.images.dtype == np.float32
    assert seg.valid.tolist() == [True]
    np.testing.assert_allclose(seg.images[0], image[5:25, 8:28], rtol=1e-5)
    background = labels[5:25, 8:28] == 0
    assert background.sum() > 200 and (seg.images[0][background] > 0.2).all()
    assert seg.area_mm2[0] == 160.0  # radius + ulna, 80 px each at 1 mm


def test_masked_crop_zeroes_the_same_background():
    image, labels = _hand_case()
    cfg = SegmentConfig(
        size=20, frame="box", dilate_mm=0.0, margin=0.0, min_area_mm2=1.0, roi="wrist"
    )
    seg = cut_segments(image, labels, spacing_mm=1.0, cfg=cfg)
    bone = labels[5:25, 8:28] > 0
    assert (seg.images[0][~bone] == 0).all()
    np.testing.assert_allclose(seg.images[0][bone], image[5:25, 8:28][bone], rtol=1e-5)


def test_default_roi_is_one_segment_per_bone():
    image, labels = _hand_case()
    cfg = SegmentConfig(size=8, dilate_mm=0.0, min_area_mm2=1.0)
    seg = cut_segments(image, labels, spacing_mm=1.0, cfg=cfg)
    assert seg.images.shape == (7, 8, 8)
    assert seg.valid.tolist() == [True, True] + [False] * 5
    assert [n for n, _ in ROI_REGIONS["bones"]] == [
        "radius",
        "ulna",
        "MC1",
        "MC2",
        "MC3",
        "MC4",
        "MC5",
    ]


def test_bad_roi_or_background_raise():
    # Checked when the config is built, before any segment is cut.
    with pytest.raises(ValueError, match=r"SegmentConfig\.roi must be one of .*'knee'"):
        SegmentConfig(roi="knee")
    with pytest.raises(ValueError, match=r"SegmentConfig\.background must be one of"):
        SegmentConfig(background="blur")


# --------------------------------------------------------------------------- row configs


def test_every_table_row_has_a_config(tables):
    named = {n for spec in tables.TABLES.values() for n in spec["rows"]}
    assert named - set(specs.PAPER_ONLY) == set(ROWS)
    assert tables.row_specs.ROWS.keys() == specs.ROWS.keys()


@pytest.mark.parametrize("name", ROWS)
@pytest.mark.parametrize("size", ["demo", "cpu", "paper"])
def test_row_config_loads(name, size):
    row = specs.ROWS[name]
    cfg = row.config(size)
    assert isinstance(cfg, ProtocolConfig) and cfg.name == row.model and row.name == name
    assert specs.get_config(f"{name},{size}") == cfg
    assert cfg.cls.seeds == (0, 1, 2) and cfg.cls.split == (0.8, 0.1, 0.1)
    assert set(dataclasses.asdict(row.paper)) == {"f1", "auc", "accuracy"}
    assert row.segments in specs.SEGMENT_SOURCES
    seg = specs.segment_config(row.segments, size)
    assert seg.size == specs.preset(size)["segment"]
    if cfg.ssl is not None:
        assert cfg.ssl.crops.global_size <= seg.size
        assert cfg.ssl.backbone == cfg.backbone and cfg.cls.mode == "probe"
    # JSON round trip (what a run folder's config.json holds)
    assert from_dict(ProtocolConfig, dataclasses.asdict(cfg)) == cfg


@pytest.mark.parametrize("name", ROWS)
def test_row_keeps_its_paper_numbers_and_figures(name):
    row = specs.ROWS[name]
    assert row.table.startswith(("Table 6: ", "Table 7: ", "Table 8: ", "Ablation: "))
    assert row.pipeline.endswith(".") and row.paper_source
    if all(v is None for v in dataclasses.asdict(row.paper).values()):
        assert "no number" in row.paper_source
    assert row.demo is None or row.demo.startswith("AUC ")


def test_default_size_is_what_the_cli_loads():
    from osteo_jax.config import load_config

    cpu = specs.get_config("simclr_custom,cpu")
    assert specs.get_config("simclr_custom") == cpu == specs.get_config()
    assert load_config(f"{ROW_SPECS}:simclr_custom", ProtocolConfig) == cpu
    assert load_config(ROW_SPECS, ProtocolConfig) == cpu  # no argument: the full pipeline
    for size in ("demo", "paper"):  # --config tables.py:row,size reaches every size
        got = load_config(f"{ROW_SPECS}:simclr_custom,{size}", ProtocolConfig)
        assert got == specs.ROWS["simclr_custom"].config(size)


def test_unknown_row_size_or_field_value_raise():
    with pytest.raises(ValueError, match=r"no row 'simclr' .*simclr_custom"):
        specs.get_config("simclr,cpu")
    with pytest.raises(ValueError, match=r"size must be one of .*'gpu'"):
        specs.get_config("simclr_custom,gpu")
    with pytest.raises(ValueError, match="segments must be one of"):
        specs.Row(name="x", model="x", table="x", pipeline="x", segments="knee")
    with pytest.raises(ValueError, match="classifier must be"):
        specs.Row(name="x", model="x", table="x", pipeline="x", classifier="svm")


@pytest.mark.parametrize("size", ["demo", "cpu", "paper"])
def test_table7_rows_differ_only_in_method_and_crop(size):
    def strip(cfg):
        d = dataclasses.asdict(cfg)
        del d["name"], d["ssl"]["method"], d["ssl"]["crops"]["custom"]
        return repr(d)

    cfgs = {n: specs.ROWS[n].config(size) for n in TABLE7}
    assert len({strip(c) for c in cfgs.values()}) == 1
    assert {(c.ssl.method, c.ssl.crops.custom) for c in cfgs.values()} == {
        (m, c) for m in ("simclr", "vicreg", "supcon", "swav") for c in (True, False)
    }


def test_baseline_rows():
    rows = specs.ROWS
    for name in ("vgg_manual_crop", "vgg_landmark_crop"):
        cfg = rows[name].config("paper")
        assert cfg.ssl is None and cfg.cls.mode == "finetune"
        assert cfg.backbone.arch == "vgg" and cfg.backbone.depth == 16
        assert cfg.cls.bones == ("wrist", "metacarpals")
        seg = specs.segment_config(rows[name].segments, "paper")
        assert seg.background == "keep" and seg.roi == "wrist+metacarpals"
    assert specs.SEGMENT_SOURCES[rows["vgg_manual_crop"].segments] == "annotator_0"
    deepdxa = rows["deepdxa"].config("paper")
    assert deepdxa.ssl is None and deepdxa.backbone.depth == 18
    assert rows["no_ssl_scratch"].config("paper").backbone.depth == 50
    # at the small sizes DeepDXA and "no SSL" are one configuration (the runner runs it once)
    a, b = rows["deepdxa"].config("demo"), rows["no_ssl_scratch"].config("demo")
    assert dataclasses.replace(a, name="") == dataclasses.replace(b, name="")
    assert rows["no_ssl_probe"].config("cpu").cls.mode == "probe"
    assert rows["raw_simclr"].segments == "raw" and rows["unet_simclr"].segments == "unet"
    assert BackboneConfig() == BackboneConfig(arch="resnet", norm="group")
    assert ClsConfig().bones[0] == "radius"


def test_describe_gives_the_cells_the_runner_prints(tables):
    rec = tables.describe(specs.ROWS["simclr_custom"], "demo")
    assert rec["config"] == specs.get_config("simclr_custom,demo")
    assert (rec["method"], rec["crop"], rec["classifier"]) == ("SimCLR", "custom", "linear probe")
    assert rec["paper"] == {"f1": 0.68, "auc": 0.85, "accuracy": 0.82}
    rec = tables.describe(specs.ROWS["vgg_manual_crop"], "demo")
    assert (rec["method"], rec["crop"], rec["classifier"]) == ("none", "–", "end to end")
    assert rec["model"] == "crop VGG, manual ROI (Jang et al.)" and rec["segments"] == "manual_crop"
    assert rec["roi"] == "manual crop (annotator boxes, background kept)"


# ----------------------------------------------------------------------------- formatter


def test_format_table(tables):
    def stat(mean, std, ci95=None):
        return {"mean": mean, "std": std} | ({} if ci95 is None else {"ci95": ci95})

    records = [
        {
            "method": "SimCLR",
            "crop": "custom",
            "summary": {
                "f1_positive": stat(0.6, 0.05),
                "auc": stat(0.755, 0.021, [0.712, 0.798]),
                "accuracy": stat(0.7, 0.0),
            },
            "paper": {"f1": 0.68, "auc": 0.85, "accuracy": 0.82},
            "image_ceiling_auc": 0.8747,
            "clinical_auc": stat(0.851, 0.04, [0.78, 0.91]),
            "vs_clinical": {"difference": -0.094, "ci95": [-0.181, 0.012], "excludes_zero": False},
            "bayes_image_auc": stat(0.866, 0.031, [0.80, 0.92]),
            "vs_full": {"difference": -0.0504, "ci95": [-0.101, -0.002], "excludes_zero": True},
        },
        {
            "method": "SwAV",
            "crop": "custom",
            "summary": None,
            "paper": {"f1": 0.54, "auc": 0.68, "accuracy": None},
            "image_ceiling_auc": None,
        },
    ]
    text = tables.format_table(
        "Table 7", (("SSL method", "method"), ("multi-crop", "crop")), records
    )
    assert text == (
        "### Table 7\n"
        "\n"
        "| SSL method | multi-crop | F1 | AUC | AUC 95 % CI | accuracy | clinical (age, sex) AUC "
        "| Δ AUC vs clinical (95 % CI) | Bayes posterior: image AUC "
        "| Δ AUC vs full pipeline (95 % CI) | paper F1 / AUC / acc. | image ceiling AUC |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        "| SimCLR | custom | 0.60 ± 0.05 | 0.76 ± 0.02 | 0.71–0.80 | 0.70 ± 0.00 | 0.85 ± 0.04 "
        "| -0.09 (-0.18, +0.01) | 0.87 ± 0.03 | -0.050 (-0.101, -0.002) * | 0.68 / 0.85 / 0.82 "
        "| 0.87 |\n"
        "| SwAV | custom | not reproduced | – | – | – | – | – | – | – | 0.54 / 0.68 / – | – |\n"
        "\n" + tables.FOOTER + "\n"
    )
    from osteo_jax.eval.cls_stats import CI_METHOD, PAIRED_METHOD

    assert CI_METHOD in tables.FOOTER and PAIRED_METHOD in tables.FOOTER
    assert "oracle" not in text.lower()
    # an interval that excludes 0 is marked
    delta = {"difference": 0.12, "ci95": [0.03, 0.2], "excludes_zero": True}
    assert tables.delta_cell(delta, 2) == "+0.12 (+0.03, +0.20) *"


CEILINGS = {
    "image_ceiling_auc": 0.8747,
    "clinical_ceiling_auc": 0.8750,
    "image_clinical_ceiling_auc": 0.8984,
    "hand_latent_auc": 0.7274,
    "population": {
        "image_ceiling_auc": 0.8612,
        "clinical_ceiling_auc": 0.8703,
        "image_clinical_ceiling_auc": 0.8931,
        "hand_latent_auc": 0.7960,
        "n_subjects": 200000,
    },
    "r": 0.6,
    "n_subjects": 192,
    "n_osteoporotic": 59,
}


def test_synthetic_note_says_so(tables):
    note = tables.synthetic_note(CEILINGS)
    assert note.startswith("SYNTHETIC DATA") and "192 subjects (59 osteoporotic)" in note
    # the image ceiling of the cohort and of the population, and the hand latent as no ceiling
    assert "0.87 (population 0.86)" in note and "0.73 (population 0.80), is not a ceiling" in note
    assert "0.90 (population 0.89)" in note and "200,000" in note
    assert "oracle" not in note.lower()


def test_ceilings_table_and_row_baselines():
    helpers = _load(EXPERIMENTS / "cls_quality.py")
    table = helpers.ceilings_table(CEILINGS).splitlines()
    assert table[0] == "| Bayes ceiling (AUC) | this cohort | population |"
    assert len(table) == 2 + 4 and "| 0.875 | 0.861 |" in table[2]
    assert "not a ceiling" in table[5] and "| 0.727 | 0.796 |" in table[5]

    def summary(auc):
        return {"auc": {"mean": auc, "std": 0.01, "ci95": [auc - 0.1, auc + 0.1], "per_seed": []}}

    paired = {"difference": -0.1, "ci95": [-0.2, 0.0], "excludes_zero": False, "p_value": 0.1}
    comparison = {
        "rows": {
            "image model": {"summary": summary(0.75)},
            "clinical (age, sex)": {"summary": summary(0.85)},
            "Bayes posterior: image": {"summary": summary(0.87)},
        },
        "vs_clinical": {"image model": paired},
        "vs_image": {},
        "ci_method": "hierarchical bootstrap",
    }
    base = helpers.row_baselines(comparison)
    assert base["clinical_auc"] == {"mean": 0.85, "std": 0.01, "ci95": [0.85 - 0.1, 0.85 + 0.1]}
    assert base["bayes_image_auc"]["mean"] == 0.87 and base["vs_clinical"] is paired
    assert base["comparison_ci_method"] == "hierarchical bootstrap"
    # real data without covariates: no clinical or Bayes rows
    comparison["rows"] = {"image model": {"summary": summary(0.75)}}
    comparison["vs_clinical"] = {}
    base = helpers.row_baselines(comparison)
    assert base["clinical_auc"] is None and base["bayes_image_auc"] is None
    assert base["vs_clinical"] is None

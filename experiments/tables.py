r"""The rows of the paper's Tables 6, 7, 8 and its ablations: one row spec each, and their sizes.

Every row is a :class:`Row` in :data:`ROWS`: what it runs (how it differs from the paper's full
pipeline: SSL method, multi-crop, classifier, backbone, segment source), the paper's numbers and
the figures measured here. ``get_config("ROW[,SIZE]")`` builds its
:class:`~osteo_jax.config.ProtocolConfig` at a size; ``experiments/paper_tables.py`` runs them::

    osteo-jax evaluate --config experiments/tables.py:simclr_custom,cpu --segments SEG --out OUT
    .venv/bin/python experiments/paper_tables.py --tables 7,8 --size demo --out OUT

``SEG``: segments cut as the row's ``segments`` says (:func:`segment_config`;
``experiments/paper_tables.py`` cuts and caches them). ``SIZE`` is

* ``"demo"``: ResNet-18 / VGG-11 of width 4, 32 px segments, 3 SSL epochs with 2 global and
  2 local views (CPU minutes);
* ``"cpu"`` (the default): ResNet-18 / VGG-16 of width 8, 64 px segments, 10 SSL epochs, as
  ``experiments/cls_quality.py``;
* ``"paper"``: the paper's ResNet-50 (width 64, ImageNet stem, bfloat16) and VGG-16, 128 px
  segments, 200 SSL epochs at batch 256 (a GPU).

Only sizes differ between sizes: every row keeps its method, ROI and classifier.

Expected figures (:attr:`Row.demo`, :attr:`Row.cpu`): 3 seeds on 2 shared CPU cores, segments
cached. The demo figures were measured before the Bayes ceilings existed and not re-run: on
that 192-subject cohort the hand latent's AUC is 0.73 (not a ceiling) and the image ceiling
0.875, as is the age + sex ceiling. Synthetic cohort: no clinical result.
"""

# No ``from __future__ import annotations``: the CLI loads this file by path without registering
# it in ``sys.modules``, where ``dataclasses`` cannot resolve string annotations.

import dataclasses

from osteo_jax.config import (
    BackboneConfig,
    ClsConfig,
    CropConfig,
    ProtocolConfig,
    SegmentConfig,
    SSLConfig,
)

SIZES = ("demo", "cpu", "paper")
DEFAULT_SIZE = "cpu"

_PRESETS = {
    "demo": {
        "segment": 32,
        "backbone": BackboneConfig(depth=18, width=4),
        "resnet18": BackboneConfig(depth=18, width=4),
        "vgg": BackboneConfig(arch="vgg", depth=11, width=4),
        "crops": CropConfig(global_size=24, local_size=12, n_local=2),
        "ssl_epochs": 3,
        "ssl_batch": 64,
        "probe_epochs": 30,
        "supervised_epochs": 10,
    },
    "cpu": {
        "segment": 64,
        "backbone": BackboneConfig(depth=18, width=8),
        "resnet18": BackboneConfig(depth=18, width=8),
        "vgg": BackboneConfig(arch="vgg", depth=16, width=8),
        "crops": CropConfig(global_size=48, local_size=24),
        "ssl_epochs": 10,
        "ssl_batch": 64,
        "probe_epochs": 60,
        "supervised_epochs": 20,
    },
    "paper": {
        "segment": 128,
        "backbone": BackboneConfig(depth=50, width=64, stem="imagenet", dtype="bfloat16"),
        "resnet18": BackboneConfig(depth=18, width=64, stem="imagenet", dtype="bfloat16"),
        "vgg": BackboneConfig(arch="vgg", depth=16, width=64, dtype="bfloat16"),
        "crops": CropConfig(global_size=96, local_size=48),
        "ssl_epochs": 200,
        "ssl_batch": 256,
        "probe_epochs": 100,
        "supervised_epochs": 50,
    },
}
BACKBONES = ("backbone", "resnet18", "vgg")  # the presets' backbones a row may name

# The crop-based baselines' regions (config.ROI_REGIONS): one plain crop of the distal radius +
# ulna and one of the central metacarpals per hand; a subject's probability is their mean.
CROP_ROI = "wrist+metacarpals"
CROP_NAMES = ("wrist", "metacarpals")

# Segment sources: the segmenter (a train-seg run, given to the runner), a mask folder of the
# dataset, or "raw". Crops take their box from a human's masks ("manual": annotator_0) or
# from the segmenter's prediction ("landmark": an automatic ROI), and keep the background.
SEGMENT_SOURCES = {
    "mixture": "mixture",
    "unet": "unet",
    "raw": "raw",
    "manual_crop": "annotator_0",
    "landmark_crop": "mixture",
}

SSL_LABELS = {"simclr": "SimCLR", "vicreg": "VICReg", "supcon": "SupCon", "swav": "SwAV"}


def preset(size: str) -> dict:
    """The size preset ``size`` (one of :data:`SIZES`)."""
    if size not in _PRESETS:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return _PRESETS[size]


def segment_config(key: str, size: str) -> SegmentConfig:
    """How the segments of source ``key`` (:data:`SEGMENT_SOURCES`) are cut at ``size``."""
    if key not in SEGMENT_SOURCES:
        raise ValueError(f"segment source must be one of {tuple(SEGMENT_SOURCES)}, got {key!r}")
    cfg = SegmentConfig(size=preset(size)["segment"])
    if key.endswith("_crop"):
        cfg = dataclasses.replace(cfg, roi=CROP_ROI, background="keep", frame="box", margin=0.1)
    return cfg


@dataclasses.dataclass(frozen=True)
class Reported:
    """What the paper reports for a row (real data, 192 subjects); None where it reports none."""

    f1: float | None = None
    auc: float | None = None
    accuracy: float | None = None


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the paper's tables: what it runs, what the paper reported, what we measured.

    The defaults are the paper's full pipeline: mixture segments, SimCLR with the custom
    multi-crop, frozen backbone + linear probe.

    Attributes:
      name: the row's key (``--config experiments/tables.py:NAME[,SIZE]``).
      model: the model cell of the tables (the config's ``name``).
      table: where the paper reports it (``"Table 6"``, ``"Table 7"``, ``"Table 8"``,
        ``"Ablation"``) and what the row is, in one line.
      pipeline: what the row runs, from radiograph to subject probability.
      paper: the paper's F1, AUC and accuracy.
      paper_source: what the paper's numbers are (whose method, how derived; or why none).
      roi: the ROI cell of the tables.
      segments: the segment source, a key of :data:`SEGMENT_SOURCES`.
      ssl: the SSL method (a key of :data:`SSL_LABELS`), or None: no pretraining.
      custom_crop: the paper's custom multi-crop (every crop keeps >= 10 % bone pixels) or the
        ordinary one (crops drawn at random, as DINO's); SSL rows only.
      classifier: ``"probe"`` (frozen backbone + linear layer) or ``"finetune"`` (trained end to
        end: from scratch where there is no SSL).
      backbone: the size preset's backbone: ``"backbone"`` (the SSL rows' ResNet),
        ``"resnet18"`` or ``"vgg"``.
      bones: the segments a subject contributes (None: all 7 bones).
      demo: measured at the demo size (AUC mean ± std, wall time); None: not run yet.
      cpu: measured or estimated at the cpu size; None: not measured.
    """

    name: str
    model: str
    table: str
    pipeline: str
    paper: Reported = Reported()
    paper_source: str = "real data, 192 subjects"
    roi: str = "segmentation (mixture)"
    segments: str = "mixture"
    ssl: str | None = "simclr"
    custom_crop: bool = True
    classifier: str = "probe"
    backbone: str = "backbone"
    bones: tuple[str, ...] | None = None
    demo: str | None = None
    cpu: str | None = None

    def __post_init__(self):
        if self.segments not in SEGMENT_SOURCES:
            raise ValueError(f"{self.name}: segments must be one of {tuple(SEGMENT_SOURCES)}")
        if self.ssl is not None and self.ssl not in SSL_LABELS:
            raise ValueError(f"{self.name}: ssl must be None or one of {tuple(SSL_LABELS)}")
        if self.classifier not in ("probe", "finetune"):
            raise ValueError(f"{self.name}: classifier must be 'probe' or 'finetune'")
        if self.backbone not in BACKBONES:
            raise ValueError(f"{self.name}: backbone must be one of {BACKBONES}")

    def config(self, size: str = DEFAULT_SIZE) -> ProtocolConfig:
        """This row's protocol at ``size`` (one of :data:`SIZES`)."""
        p = preset(size)
        backbone = p[self.backbone]
        if self.classifier == "finetune":
            cls = ClsConfig(
                mode="finetune",
                epochs=p["supervised_epochs"],
                learning_rate=1e-3,
                backbone_lr_scale=1.0,
            )
        else:
            cls = ClsConfig(mode="probe", epochs=p["probe_epochs"])
        if self.bones is not None:
            cls = dataclasses.replace(cls, bones=tuple(self.bones))
        ssl = None
        if self.ssl is not None:
            ssl = SSLConfig(
                method=self.ssl,
                backbone=backbone,
                crops=dataclasses.replace(p["crops"], custom=self.custom_crop),
                batch_size=p["ssl_batch"],
                epochs=p["ssl_epochs"],
            )
        return ProtocolConfig(name=self.model, ssl=ssl, cls=cls, backbone=backbone)


# Figures shared by several rows: an SSL row and a from-scratch row at the cpu size.
_SSL_CPU = "about 8 min (experiments/cls_quality.py, row full: 492 s)"
_SCRATCH_CPU = "about 15 min (experiments/cls_quality.py, row scratch: 912 s)"
_NO_NUMBER = (
    "the paper reports no number for this row (it says only that the custom multi-crop beat "
    "the ordinary one for every method)"
)


def _table7(method: str, custom: bool, paper: Reported, demo: str, **changes) -> Row:
    """A row of Table 7: mixture segments -> ``method`` with one multi-crop -> linear probe."""
    label, crop = SSL_LABELS[method], ("custom" if custom else "ordinary")
    views = "every crop keeps >= 10 % bone pixels" if custom else "crops drawn at random"
    row = Row(
        name=f"{method}_{crop}",
        model=f"{label}, {crop} multi-crop",
        table=f"Table 7: {label} with the {crop} multi-crop",
        pipeline=(
            f"Mixture segmenter -> 7 bone segments -> {label} pretraining ({views}) -> frozen "
            "backbone + linear probe. Differs from the other Table 7 rows only in ssl.method "
            "and ssl.crops.custom."
        ),
        paper=paper,
        ssl=method,
        custom_crop=custom,
        demo=demo,
        cpu=_SSL_CPU,
    )
    return dataclasses.replace(row, **changes)


def _vgg_crop(roi: str, *, source: str, boxes: str, paper: Reported, **changes) -> Row:
    """A crop-based VGG baseline of Table 8: two boxes per hand, background kept, end to end.

    Args:
      roi: ``"manual"`` (boxes from a human's masks) or ``"landmark"`` (from the segmenter).
      source: whose method the row stands for.
      boxes: where the boxes come from, in words.
      paper: the paper's numbers for ``source``.
      **changes: other :class:`Row` fields.
    """
    manual = roi == "manual"
    return Row(
        name=f"vgg_{roi}_crop",
        model=f"crop VGG, {roi} ROI ({source})",
        table=(
            "Table 8: crop-based VGG baseline with "
            + ("a manual" if manual else "an automatic")
            + f" ROI (as {source})"
        ),
        pipeline=(
            f"Boxes around the distal radius + ulna and around MC2-MC4, taken from {boxes}, "
            "cropped from the radiograph with the background kept (no masking) -> VGG trained "
            "end to end; subject probability = mean of its two crops."
        ),
        paper=paper,
        paper_source=f"{source}, VGG16, {roi} crop",
        roi=f"{roi} crop ({'annotator' if manual else 'segmenter'} boxes, background kept)",
        segments=f"{roi}_crop",
        ssl=None,
        classifier="finetune",
        backbone="vgg",
        bones=CROP_NAMES,
        **changes,
    )


# Also the base of DeepDXA, which differs only in its backbone.
_NO_SSL_SCRATCH = Row(
    name="no_ssl_scratch",
    model="no SSL: trained from scratch",
    table="Table 6: no SSL, the backbone trained end to end from random initialisation",
    pipeline=(
        "Mixture segmenter -> 7 bone segments -> the SSL rows' backbone trained with "
        "the labels only (supervised from scratch; no pretraining, hence no multi-crop). "
        'Also the ablations\' "no SSL, no custom multi-crop" row.'
    ),
    paper=Reported(0.53, 0.67, 0.72),
    paper_source="no SSL and no custom multi-crop",
    ssl=None,
    classifier="finetune",
    demo="AUC 0.61 ± 0.09 in 138 s",
    cpu=_SCRATCH_CPU,
)

ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        # Table 8: earlier methods against the full pipeline (simclr_custom, in Table 7).
        _vgg_crop(
            "manual",
            source="Jang et al.",
            boxes="a human's masks (annotator_0)",
            paper=Reported(0.43, 0.63, 0.62),
            demo="AUC 0.54 ± 0.15 in 29 s",
        ),
        _vgg_crop(
            "landmark",
            source="Hsieh et al.",
            boxes="the mixture segmenter's prediction (an automatic landmark)",
            paper=Reported(0.48, 0.65, 0.65),
        ),
        dataclasses.replace(
            _NO_SSL_SCRATCH,
            name="deepdxa",
            model="DeepDXA-like (Ho et al.)",
            table="Table 8: DeepDXA-like baseline, segments -> ResNet-18 trained end to end",
            pipeline=(
                "Mixture segmenter -> 7 bone segments -> ResNet-18 trained with the labels (no "
                "SSL), as Ho et al.'s DeepDXA (segmentation + ResNet-18). At the demo and cpu "
                "sizes it is the same configuration as no_ssl_scratch (the runner computes it "
                "once)."
            ),
            paper=Reported(0.51, 0.66, 0.67),
            paper_source="DeepDXA",
            backbone="resnet18",
        ),
        # Table 7: SSL method x multi-crop.
        _table7("simclr", False, Reported(0.65, 0.82, 0.79), "AUC 0.67 ± 0.09 in 157 s"),
        _table7(
            "simclr",
            True,
            Reported(0.68, 0.85, 0.82),
            "AUC 0.67 ± 0.11 in 144 s",
            model="SimCLR, custom multi-crop (paper)",
            table="Table 7: SimCLR with the custom multi-crop, the paper's full pipeline",
            pipeline=(
                "Mixture segmenter -> 7 bone segments -> SimCLR pretraining (every crop keeps "
                ">= 10 % bone pixels) -> frozen backbone + linear probe. Also the reference row "
                "of Tables 6 and 8 and of the ablations."
            ),
        ),
        _table7("vicreg", False, Reported(0.59, 0.78, 0.74), "AUC 0.73 ± 0.10 in 141 s"),
        _table7("vicreg", True, Reported(), "AUC 0.69 ± 0.03 in 144 s", paper_source=_NO_NUMBER),
        _table7("supcon", False, Reported(0.56, 0.74, 0.72), "AUC 0.64 ± 0.10 in 141 s"),
        _table7("supcon", True, Reported(), "AUC 0.64 ± 0.09 in 135 s", paper_source=_NO_NUMBER),
        _table7("swav", False, Reported(0.51, 0.66, 0.70), "AUC 0.65 ± 0.13 in 134 s"),
        _table7("swav", True, Reported(0.54, 0.68), "AUC 0.63 ± 0.18 in 150 s"),
        # Table 6: without SSL.
        Row(
            name="no_ssl_probe",
            model="no SSL: linear probe on random init",
            table="Table 6: no SSL, a linear probe on the randomly initialised backbone",
            pipeline=(
                "Mixture segmenter -> 7 bone segments -> frozen random backbone + linear probe: "
                "what the architecture alone gives, the floor the SSL rows should be read "
                "against."
            ),
            paper_source="the paper reports no number for this row",
            ssl=None,
        ),
        _NO_SSL_SCRATCH,
        # Ablations of the full pipeline.
        Row(
            name="raw_simclr",
            model="raw image instead of segments",
            table=(
                "Ablation: the raw radiograph instead of bone segments (SimCLR, custom multi-crop)"
            ),
            pipeline=(
                "The whole radiograph resized to the segment size -> SimCLR -> linear probe. "
                "Every pixel of a raw image is > 0, so the custom rule accepts every crop."
            ),
            paper=Reported(0.56, 0.78),
            paper_source="F1 -0.12 and AUC -0.07 from the full pipeline, i.e. F1 0.56, AUC 0.78",
            roi="raw image",
            segments="raw",
            demo="AUC 0.62 ± 0.12 in 98 s",
            cpu=_SSL_CPU,
        ),
        Row(
            name="unet_simclr",
            model="single U-Net instead of the mixture",
            table="Ablation: a single-decoder U-Net segmenter instead of the mixture",
            pipeline=(
                "Segments cut with the single deterministic U-Net's prediction -> SimCLR "
                "(custom multi-crop) -> linear probe."
            ),
            paper=Reported(0.62, 0.80),
            roi="segmentation (single U-Net)",
            segments="unet",
            demo="AUC 0.70 ± 0.13 in 155 s",
            cpu=_SSL_CPU,
        ),
    )
}

# Rows the paper reports that this package does not reproduce (kept in the layout): their cells.
PAPER_ONLY = {
    "wang": {
        "model": "Wang et al. (not reproduced)",
        "roi": "landmark crop",
        "backbone": "VGG16 + Transformer",
        "method": "none",
        "crop": "–",
        "classifier": "end to end",
        "paper": {"f1": 0.46, "auc": 0.64, "accuracy": 0.64},
        "missing": "not reproduced",
    },
}


def row(name: str) -> Row:
    """The row ``name`` (a key of :data:`ROWS`)."""
    if name not in ROWS:
        raise ValueError(f"no row {name!r} in experiments/tables.py; rows: {', '.join(ROWS)}")
    return ROWS[name]


def get_config(arg: str = "simclr_custom") -> ProtocolConfig:
    """The protocol of one row at one size.

    Args:
      arg: ``"ROW"`` or ``"ROW,SIZE"``: a key of :data:`ROWS` and one of :data:`SIZES`
        (default ``"cpu"``); e.g. ``"simclr_custom,demo"``. Default: the paper's full
        pipeline at the cpu size.

    Returns:
      The row's :class:`~osteo_jax.config.ProtocolConfig`.
    """
    name, _, size = arg.partition(",")
    return row(name.strip()).config(size.strip() or DEFAULT_SIZE)

"""Sizes and segment sources shared by the row configs of ``experiments/tables/``.

Not a row itself: every row file loads it by path (``runpy.run_path``), because the CLI loads
a row file by path too (``osteo-jax evaluate --config experiments/tables/<row>.py``), where
``experiments`` is not importable. A row's ``get_config(size)`` builds its
:class:`~osteo_jax.config.ProtocolConfig` from these presets; ``size`` is

* ``"demo"``: ResNet-18 / VGG-11 of width 4, 32 px segments, 3 SSL epochs with 2 global and
  2 local views (CPU minutes);
* ``"cpu"`` (the default): ResNet-18 / VGG-16 of width 8, 64 px segments, 10 SSL epochs, as
  ``experiments/cls_quality.py``;
* ``"paper"``: the paper's ResNet-50 (width 64, ImageNet stem, bfloat16) and VGG-16, 128 px
  segments, 200 SSL epochs at batch 256 (a GPU).

Only sizes differ between sizes: every row keeps its method, ROI and classifier.
"""

from __future__ import annotations

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


def ssl_row(size: str, *, method: str, custom: bool, name: str) -> ProtocolConfig:
    """Segments -> SSL ``method`` (custom or ordinary multi-crop) -> linear probe."""
    p = preset(size)
    ssl = SSLConfig(
        method=method,
        backbone=p["backbone"],
        crops=dataclasses.replace(p["crops"], custom=custom),
        batch_size=p["ssl_batch"],
        epochs=p["ssl_epochs"],
    )
    cls = ClsConfig(mode="probe", epochs=p["probe_epochs"])
    return ProtocolConfig(name=name, ssl=ssl, cls=cls, backbone=p["backbone"])


def supervised_row(
    size: str,
    *,
    name: str,
    backbone: str = "backbone",
    mode: str = "finetune",
    bones: tuple[str, ...] | None = None,
) -> ProtocolConfig:
    """No SSL: the backbone trained end to end (``finetune``) or a probe on random init.

    Args:
      size: the size preset.
      name: model name in the table.
      backbone: ``"backbone"`` (the SSL rows' ResNet), ``"resnet18"`` or ``"vgg"``.
      mode: ``"finetune"`` (supervised from scratch) or ``"probe"`` (frozen random features).
      bones: segments a subject contributes (default all 7).
    """
    p = preset(size)
    if mode == "finetune":
        cls = ClsConfig(
            mode="finetune",
            epochs=p["supervised_epochs"],
            learning_rate=1e-3,
            backbone_lr_scale=1.0,
        )
    else:
        cls = ClsConfig(mode="probe", epochs=p["probe_epochs"])
    if bones is not None:
        cls = dataclasses.replace(cls, bones=tuple(bones))
    return ProtocolConfig(name=name, ssl=None, cls=cls, backbone=p[backbone])

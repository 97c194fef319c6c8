"""Configuration of the evaluation protocol: multi-crop, backbone, SSL, classifier, one row."""

from __future__ import annotations

import dataclasses

from osteo_jax.config.choices import (
    AGGREGATES,
    BACKBONE_ARCHS,
    CLASS_WEIGHTS,
    CLS_MODES,
    DTYPES,
    NORMS,
    RESNET_STEMS,
    SSL_METHODS,
    THRESHOLD_RULES,
    check_choice,
    check_positive,
)
from osteo_jax.config.labels import BONE_NAMES


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """Multi-crop views for self-supervised learning (``data/augment.py``).

    Attributes:
      n_global: global views per segment.
      n_local: local (small) views per segment.
      global_size: output side of a global view, pixels.
      local_size: output side of a local view, pixels.
      global_scale: area fraction range of a global view.
      local_scale: area fraction range of a local view.
      custom: the paper's customised multi-crop: every view keeps at least
        ``min_bone_fraction`` bone (non-zero) pixels; False is ordinary multi-crop.
      min_bone_fraction: see ``custom``.
      intensity_jitter: the views' brightness, contrast and gamma are jittered (SimCLR's
        photometric views, ``data/photometric.py``). False keeps each view's grey levels
        (blur and noise only), so the features need not be invariant to a bone's brightness,
        which on a calibrated detector is its density.
    """

    n_global: int = 2
    n_local: int = 4
    global_size: int = 48
    local_size: int = 24
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    custom: bool = True
    min_bone_fraction: float = 0.10
    intensity_jitter: bool = True

    def __post_init__(self):
        check_positive(self, "n_global", "global_size", "local_size")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """The backbone: a ResNet (``models/resnet.py``) or a VGG-style CNN (``models/vgg.py``).

    Attributes:
      depth: ResNet 18, 34 or 50 (paper: 50); VGG 11, 13, 16 or 19 (the baselines: 16).
      width: channels of the first stage (64 in the standard ResNets and VGGs; 16 on CPU).
      stem: ResNet only: ``"small"`` (3 x 3 conv, no pooling: for 32-128 px segments) or
        ``"imagenet"``.
      dtype: computation, ``"auto"`` (bfloat16 on a GPU / TPU, float32 on the CPU;
        ``config/precision.py``), ``"float32"`` or ``"bfloat16"``; parameters stay float32.
      arch: ``"resnet"`` or ``"vgg"`` (the crop-based baselines of the paper's Table 8).
      norm: ``"group"`` (GroupNorm after every convolution) or, VGG only, ``"none"`` (the
        original VGG: convolutions with biases, no normalisation).
      grey_levels: append each segment's grey-level statistics (its mean and the 10th, 25th,
        50th, 75th and 90th percentiles of its pixels) to the pooled features. A GroupNorm CNN
        with bias-free convolutions cannot see a brightness factor (features of ``x`` and
        ``c * x`` are equal up to the norm's epsilon), and a bone's density darkens or
        brightens it close to multiplicatively; these 6 numbers carry that level. Only
        meaningful with ``SegmentConfig.intensity="stored"``: percentile segments have had
        their level normalised away.
    """

    depth: int = 18
    width: int = 16
    stem: str = "small"
    dtype: str = "auto"
    arch: str = "resnet"
    norm: str = "group"
    grey_levels: bool = False

    def __post_init__(self):
        check_choice(self, "arch", BACKBONE_ARCHS)
        check_choice(self, "stem", RESNET_STEMS)
        check_choice(self, "norm", NORMS)
        check_choice(self, "dtype", DTYPES)
        check_positive(self, "depth", "width")
        if self.arch == "resnet" and self.norm != "group":
            raise ValueError(
                f"BackboneConfig.norm: the ResNet backbone supports only 'group', got {self.norm!r}"
            )

    @property
    def label(self) -> str:
        """Table label, e.g. ``"ResNet-18 (width 16)"`` or ``"VGG-16 (width 8)"``."""
        name = "VGG" if self.arch == "vgg" else "ResNet"
        grey = " + grey levels" if self.grey_levels else ""
        return f"{name}-{self.depth} (width {self.width}){grey}"


@dataclasses.dataclass(frozen=True)
class SSLConfig:
    """Self-supervised pretraining of the backbone on bone segments (``train/ssl_loop.py``).

    Attributes:
      method: ``"simclr"`` (paper's best), ``"vicreg"``, ``"supcon"`` (uses labels), ``"swav"``.
      backbone: the ResNet.
      crops: multi-crop views.
      projector_hidden: hidden width of the projector MLP.
      projector_out: embedding size.
      projector_layers: MLP depth (SimCLR 2, VICReg 3).
      temperature: NT-Xent / SupCon temperature (DESIGN: 0.2); SwAV uses ``swav_temperature``.
      num_prototypes: SwAV prototypes.
      swav_temperature: SwAV softmax temperature.
      swav_epsilon: SwAV Sinkhorn regularisation.
      swav_iters: SwAV Sinkhorn iterations.
      batch_size: segments per step.
      epochs: passes over the training segments.
      learning_rate: LARS base rate at batch 256 (scaled linearly with ``batch_size``).
      weight_decay: LARS weight decay (not applied to biases and norm scales).
      warmup_epochs: linear warm-up, then cosine decay.
      seed: initialisation, shuffling and augmentation.
      checkpoint_every: steps between checkpoints (and at the end).
      max_steps: stop early (None: all epochs).
    """

    method: str = "simclr"
    backbone: BackboneConfig = BackboneConfig()
    crops: CropConfig = CropConfig()
    projector_hidden: int = 256
    projector_out: int = 64
    projector_layers: int = 2
    temperature: float = 0.2
    num_prototypes: int = 32
    swav_temperature: float = 0.1
    swav_epsilon: float = 0.05
    swav_iters: int = 3
    batch_size: int = 64
    epochs: int = 20
    learning_rate: float = 1.2
    weight_decay: float = 1e-6
    warmup_epochs: float = 2.0
    seed: int = 0
    checkpoint_every: int = 200
    max_steps: int | None = None

    def __post_init__(self):
        check_choice(self, "method", SSL_METHODS)
        check_positive(self, "batch_size", "epochs", "learning_rate", "checkpoint_every")


@dataclasses.dataclass(frozen=True)
class ClsConfig:
    """Segment classifier and the evaluation protocol (``train/cls_loop.py``, ``eval/``).

    Attributes:
      mode: ``"probe"`` (frozen backbone, linear head: the paper's figure) or ``"finetune"``
        (backbone trained too: the paper's abstract; also "supervised from scratch" when no
        SSL checkpoint is given).
      bones: which segments a subject contributes (default all 7).
      epochs: passes over the training segments.
      batch_size: segments per step.
      learning_rate: peak AdamW rate of the head (fine-tuning uses ``backbone_lr_scale`` of it
        for the backbone).
      backbone_lr_scale: see ``learning_rate``.
      weight_decay: AdamW weight decay.
      class_weight: ``"balanced"`` weights the cross-entropy by inverse class frequency (the
        cohort is ~30 % osteoporotic and the checkpoint is picked by macro-F1); None: plain.
      split: train/val/test fractions of subjects (stratified by label).
      seeds: the protocol's seeds (split, init, shuffling).
      folds: 0 = the paper's protocol (``split`` once per seed); k >= 2 = stratified k-fold
        cross-validation over subjects instead (each subject tested once; validation a
        stratified ``split[1] / (split[0] + split[1])`` of the rest; fold assignment from
        ``seeds[0]``): lower-variance estimates on small cohorts.
      bootstrap: bootstrap resamples for the 95 % confidence intervals.
      threshold: decision threshold of F1, accuracy, sensitivity and specificity:
        ``"fixed"`` (0.5), or chosen per seed / fold on its validation subjects by
        ``"youden"`` (max sensitivity + specificity - 1) or ``"f1"`` (max macro-F1)
        (``eval/thresholds.py``); AUC and ECE do not depend on it.
      aggregate: subject score from its segments: ``"mean"`` (of the valid segments'
        probabilities), ``"logistic"`` (a logistic regression over the per-bone logits) or
        ``"features"`` (a logistic regression over the per-bone backbone features side by side,
        its L2 strength cross-validated); heads are fitted per seed / fold on the training
        subjects (``eval/aggregate.py``).
    """

    mode: str = "probe"
    bones: tuple[str, ...] = BONE_NAMES
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 3e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    class_weight: str | None = "balanced"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seeds: tuple[int, ...] = (0, 1, 2)
    folds: int = 0
    bootstrap: int = 1000
    threshold: str = "fixed"
    aggregate: str = "mean"

    def __post_init__(self):
        check_choice(self, "mode", CLS_MODES)
        check_choice(self, "class_weight", CLASS_WEIGHTS)
        check_choice(self, "threshold", THRESHOLD_RULES)
        check_choice(self, "aggregate", AGGREGATES)
        check_positive(self, "epochs", "batch_size", "learning_rate")
        if not self.seeds:
            raise ValueError("ClsConfig.seeds must name at least one seed")
        if self.folds < 0 or self.folds == 1:
            raise ValueError(f"ClsConfig.folds must be 0 or >= 2, got {self.folds!r}")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(
                f"ClsConfig.split must be three non-negative fractions summing to 1, "
                f"got {self.split!r}"
            )


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """One row of the paper's tables: pretraining (or none) + classifier + protocol.

    Attributes:
      name: model name in the table.
      ssl: pretraining settings; None: no SSL (the backbone starts random).
      cls: classifier and protocol settings.
      backbone: the backbone when ``ssl`` is None (else ``ssl.backbone`` is used).
      covariates: ``subjects.csv`` columns of the clinical baseline and of the fusion row
        (numeric, or categorical such as ``sex``); empty: no clinical row.
    """

    name: str = "SimCLR + linear probe"
    ssl: SSLConfig | None = SSLConfig()
    cls: ClsConfig = ClsConfig()
    backbone: BackboneConfig = BackboneConfig()
    covariates: tuple[str, ...] = ("age", "sex")

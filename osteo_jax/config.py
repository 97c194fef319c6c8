"""Typed, frozen configuration for every stage of osteo_jax.

Every number that shapes data, a model or a run is a field here with a default; an ablation is
``dataclasses.replace(cfg, field=value)`` (nested: ``replace(cfg, cohort=replace(cfg.cohort,
r=0.9))``). Below the CLI, functions take these typed configs or plain keyword arguments, never
an untyped dict.

The synthetic-cohort numbers come from ``DATA_PHYSICS.md`` (shared project notes); the comments
say which line each one encodes.
"""

from __future__ import annotations

import dataclasses
import typing

# Label ids of the 8-class map: background, then the 7 bones that become segments.
CLASS_NAMES: tuple[str, ...] = ("background", "radius", "ulna", "MC1", "MC2", "MC3", "MC4", "MC5")
BONE_NAMES: tuple[str, ...] = CLASS_NAMES[1:]

WHO_CATEGORIES: tuple[str, ...] = ("normal", "osteopenia", "osteoporosis")

# Regions of interest a segment set can be cut into (``SegmentConfig.roi``): name -> the
# ``(segment name, bones whose masks make its box)`` pairs. ``"bones"`` is the paper's one
# segment per bone; the others are the crop-based baselines' regions (the paper's Table 8:
# manual / landmark crops), one box around several bones.
ROI_REGIONS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "bones": tuple((b, (b,)) for b in BONE_NAMES),
    "wrist": (("wrist", ("radius", "ulna")),),
    "metacarpals": (("metacarpals", ("MC2", "MC3", "MC4")),),
    "wrist+metacarpals": (
        ("wrist", ("radius", "ulna")),
        ("metacarpals", ("MC2", "MC3", "MC4")),
    ),
}


@dataclasses.dataclass(frozen=True)
class CohortConfig:
    """Who is in the cohort and how their bone health couples to the image.

    Attributes:
      preset: ``"paper"`` (192 subjects, 59 osteoporotic, 169 F / 23 M, ages mostly 40-79) or
        ``"screening"`` (women aged 50+, 20 % osteoporosis, 50 % osteopenia).
      n_subjects: cohort size; ``None`` takes the preset's (paper 192, screening 1000). Class
        counts scale with it.
      r: correlation of the hand-level bone-health latent with the latent T-score
        (0.55-0.61 ~ hip/spine DXA, 0.9 ~ wrist DXA).
      bone_coupling: correlation of each bone's own latent with the hand-level latent.
      osteopenia: ``"merge_into_normal"`` (binary label = osteoporosis vs the rest) or
        ``"exclude"`` (osteopenic subjects are not drawn at all).
      prevalence: fraction of osteoporotic subjects; ``None`` takes the preset's.
      osteopenia_fraction: fraction of osteopenic subjects under ``merge_into_normal``;
        ``None`` takes the preset's (paper: whatever the age/sex model gives).
      ci_mean: cortical index (W - M) / W of a bone whose latent is 0.
      ci_slope: change of the cortical index per unit (1 SD) of the bone latent.
      ci_range: physical clip of the cortical index.
      narrow_w_fraction: fraction of subjects whose low cortical index comes from a narrower
        outer width W with normal M, instead of endosteal resorption (wider M, same W).
      ci_reference: the cortical index at which both thinning modes give the nominal bone.
    """

    preset: str = "paper"
    n_subjects: int | None = None
    r: float = 0.6
    bone_coupling: float = 0.9
    osteopenia: str = "merge_into_normal"
    prevalence: float | None = None
    osteopenia_fraction: float | None = None
    ci_mean: float = 0.555
    ci_slope: float = 0.11
    ci_range: tuple[float, float] = (0.25, 0.80)
    narrow_w_fraction: float = 0.25
    ci_reference: float = 0.60


@dataclasses.dataclass(frozen=True)
class PhysicsConfig:
    """Image formation: geometry of the detector, X-ray spectrum, noise and quantisation.

    Attributes:
      size: output image side in pixels.
      fov_mm: field of view (square) in mm; pixel spacing is ``fov_mm / size`` (0.2 mm at 1024).
      energies_kev: centres of the spectrum's energy bins.
      spectrum: relative photon fluence per bin (a 50-60 kVp hand exposure, mean ~32 keV).
      mu_cortical: linear attenuation of cortical bone (rho 1.92) per bin, cm^-1.
      mu_soft: linear attenuation of soft tissue (rho 1.06) per bin, cm^-1.
      mu_adipose: linear attenuation of adipose tissue / fatty marrow per bin, cm^-1.
      blur_sigma_px: detector point-spread (Gaussian sigma, pixels).
      photons_open: expected quanta per pixel in the open beam (sets the Poisson noise).
      electronic_sigma: Gaussian electronic noise, in quanta.
      dn_per_neper: stored value per unit of log attenuation (log amplifier gain).
      dn_open: stored value of the open beam (MONOCHROME2: bone bright, air dark).
      bits_stored: output bit depth (values in ``[0, 2**bits_stored - 1]``, stored in uint16).
      noise: draw quantum and electronic noise; ``False`` gives the expected image.
    """

    size: int = 1024
    fov_mm: float = 204.8
    energies_kev: tuple[float, ...] = (25.0, 30.0, 35.0, 40.0)
    spectrum: tuple[float, ...] = (0.20, 0.35, 0.30, 0.15)
    mu_cortical: tuple[float, ...] = (4.14, 2.56, 1.74, 1.28)
    mu_soft: tuple[float, ...] = (0.546, 0.402, 0.328, 0.285)
    mu_adipose: tuple[float, ...] = (0.368, 0.291, 0.251, 0.228)
    blur_sigma_px: float = 0.65
    photons_open: float = 5000.0
    electronic_sigma: float = 3.0
    dn_per_neper: float = 800.0
    dn_open: float = 200.0
    bits_stored: int = 12
    noise: bool = True

    @property
    def pixel_spacing_mm(self) -> float:
        """Detector pixel spacing in mm (square pixels)."""
        return self.fov_mm / self.size


@dataclasses.dataclass(frozen=True)
class AnnotatorConfig:
    """The M annotators whose masks give the segmenter its multimodal targets.

    Attributes:
      n_annotators: M, masks per image besides the exact map.
      bias_px: per-annotator boundary offset in pixels at 1024 px (positive dilates);
        ``None`` spreads M values evenly over ``[+1, -1]``.
      jitter_px: range of the smooth boundary jitter amplitude, pixels at 1024 px.
      short_propensity: per annotator, the chance of the "stop short" convention on an image
        (excludes the metacarpal bases and the radial / ulnar styloids); ``None`` spreads M
        values over ``[0.15, 0.85]``.
    """

    n_annotators: int = 3
    bias_px: tuple[float, ...] | None = None
    jitter_px: tuple[float, float] = (1.0, 3.0)
    short_propensity: tuple[float, ...] | None = None

    def biases(self) -> tuple[float, ...]:
        """Per-annotator boundary offsets in pixels at 1024 px."""
        if self.bias_px is not None:
            return tuple(self.bias_px)
        if self.n_annotators == 1:
            return (0.0,)
        step = 2.0 / (self.n_annotators - 1)
        return tuple(1.0 - i * step for i in range(self.n_annotators))

    def propensities(self) -> tuple[float, ...]:
        """Per-annotator probability of the stop-short convention."""
        if self.short_propensity is not None:
            return tuple(self.short_propensity)
        if self.n_annotators == 1:
            return (0.5,)
        step = 0.7 / (self.n_annotators - 1)
        return tuple(0.15 + i * step for i in range(self.n_annotators))


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Everything the synthetic radiograph generator needs.

    Attributes:
      cohort: who is drawn and how bone health maps to geometry.
      physics: image formation.
      annotators: the annotator masks.
      seed: one seed determines the whole dataset.
    """

    cohort: CohortConfig = CohortConfig()
    physics: PhysicsConfig = PhysicsConfig()
    annotators: AnnotatorConfig = AnnotatorConfig()
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SegConfig:
    """The segmenter (``models/mixture.py``).

    Attributes:
      features: U-Net channels per level, finest first ((32, 64, 128, 256) on a GPU; the CPU
        default is half as wide).
      num_classes: classes of the label map.
      num_experts: K decoders.
      num_samples: S latents per decoder.
      latent_dim: L.
      form: ``"mixture"`` (paper), ``"mose"`` (shared decoder, learned priors) or ``"unet"``
        (single deterministic decoder).
      mode: decoder execution, ``"auto"`` | ``"vmap"`` | ``"scan"``.
      head_hidden: hidden channels of the 1 x 1 head.
      router_hidden: router width.
      image_size: square input side the images are resized to.
      dtype: ``"float32"`` or ``"bfloat16"`` computation.
    """

    features: tuple[int, ...] = (16, 32, 64, 128)
    num_classes: int = len(CLASS_NAMES)
    num_experts: int = 4
    num_samples: int = 4
    latent_dim: int = 6
    form: str = "mixture"
    mode: str = "auto"
    head_hidden: int = 32
    router_hidden: int = 64
    image_size: int = 128
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class OTConfig:
    """The relaxed optimal-transport loss (``losses/ot.py``).

    Attributes:
      cost: pairwise cost, ``"iou"`` (1 - soft IoU, foreground mean) or ``"ce"``.
      ce_weight: with ``cost="iou"``, add this times the cross-entropy cost. The IoU cost
        ignores the background class, and a model can get stuck labelling the background with
        a saturated bone class (seen with the single U-Net); a small CE term anchors every
        pixel. 0 gives MoSE's pure IoU cost.
      epsilon: entropic regularisation, absolute (costs lie in [0, 1]). 0.01 keeps the plan
        soft while hypotheses are nearly tied, so every expert receives gradient early on (at
        1e-3 the plan is nearly hard and the first expert to win takes every annotation: the
        other decoders never train and the router collapses onto one expert). The solver
        reaches the exact optimum within 1 % at 1e-3 (tests/test_ot.py).
      epsilon_start: Sinkhorn anneals epsilon geometrically from this value to ``epsilon``
        over the first half of the iterations (None: no annealing; then 1e-3 needs ~1000).
      num_iters: fixed Sinkhorn iterations (so the solve vmaps over the batch).
      gamma_start: initial capacity per hypothesis; ``None`` (default) starts at 1/N (N = K S
        hypotheses), where the plan must give every hypothesis an equal share of the
        annotations, so every decoder trains before the cap relaxes. MoSE's 0.5 lets the
        first decoder to win take every annotation: on the synthetic cohort the router then
        put all its weight on one expert by step ~80 (experiments/seg_quality.py,
        ``mixture_gamma05``).
      gamma_end: final capacity.
      gamma_ramp_start: step at which gamma starts to grow.
      gamma_ramp_steps: steps over which it grows linearly to ``gamma_end``.
      kl_weight: lambda of the KL(row mass || alpha) term (MoSE: 1, 10 when M = 1).
      balanced: the ablation where the plan's rows equal alpha and the router learns through
        d OT / d alpha.
    """

    cost: str = "iou"
    ce_weight: float = 0.1
    epsilon: float = 0.01
    epsilon_start: float | None = None
    num_iters: int = 200
    gamma_start: float | None = None
    gamma_end: float = 1.0
    gamma_ramp_start: int = 200
    gamma_ramp_steps: int = 400
    kl_weight: float = 1.0
    balanced: bool = False


@dataclasses.dataclass(frozen=True)
class SegTrainConfig:
    """Segmenter training (``train/loop.py``).

    Attributes:
      seg: the model.
      ot: the loss.
      batch_size: images per step (global, across devices).
      epochs: passes over the training split.
      learning_rate: peak AdamW learning rate (warm-up then cosine decay).
      warmup_steps: linear warm-up steps.
      weight_decay: AdamW weight decay.
      val_fraction: fraction of subjects held out for validation (split by subject).
      annotators: annotator folders used as targets (None: every ``annotator_*`` folder, else
        ``exact``).
      seed: seed of initialisation, split, shuffling and latents.
      checkpoint_every: steps between checkpoints (and always at the end of an epoch).
      max_steps: stop after this many steps (None: run all epochs).
    """

    seg: SegConfig = SegConfig()
    ot: OTConfig = OTConfig()
    batch_size: int = 8
    epochs: int = 20
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    annotators: tuple[str, ...] | None = None
    seed: int = 0
    checkpoint_every: int = 100
    max_steps: int | None = None


def from_dict(cls, data: dict):
    """Rebuilds a (nested) config dataclass from ``dataclasses.asdict`` output (e.g. JSON).

    Lists become tuples where the field is a tuple; unknown keys raise ``ValueError`` so a
    stale or mistyped config file fails loudly.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        target = next(
            (t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None
        )
        if target is not None and isinstance(value, dict):
            value = from_dict(target, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """How bone segments are cut from a radiograph and its label map (``data/segments.py``).

    Attributes:
      size: side of the square segment in pixels (DESIGN default 128; 64 is enough on CPU).
      frame: ``"aligned"``: the crop box follows the bone's principal axis (long axis vertical)
        and is stretched to fill the square, so every bone's shaft spans the segment; width
        ratios such as the cortical index survive the anisotropic stretch. ``"box"``: the
        axis-aligned square bounding box (the paper's wording, "cropped using the
        segmentation"), aspect ratio kept.
      dilate_mm: the bone mask is dilated by this much before the background is zeroed, so
        the periosteal edge is never cut off.
      margin: extra fraction of the box side added on every side.
      min_area_mm2: a bone whose largest connected component is smaller than this is flagged
        missing (its segment is all zeros and ``valid`` is False).
      roi: which segments are cut: ``"bones"`` (one per bone, the paper's 7) or another key of
        ``ROI_REGIONS`` (one box around several bones per segment, e.g. ``"wrist"``: distal
        radius + ulna), for the crop-based baselines.
      background: ``"zero"``: everything outside the dilated mask is zeroed (the paper's
        segments); ``"keep"``: a plain crop of the radiograph, background and neighbouring
        bones kept (every pixel inside the image is then > 0, so the custom multi-crop rule
        no longer measures bone).
    """

    size: int = 128
    frame: str = "aligned"
    dilate_mm: float = 0.8
    margin: float = 0.05
    min_area_mm2: float = 20.0
    roi: str = "bones"
    background: str = "zero"


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
    """

    n_global: int = 2
    n_local: int = 4
    global_size: int = 48
    local_size: int = 24
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    custom: bool = True
    min_bone_fraction: float = 0.10


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """The backbone: a ResNet (``models/resnet.py``) or a VGG-style CNN (``models/vgg.py``).

    Attributes:
      depth: ResNet 18, 34 or 50 (paper: 50); VGG 11, 13, 16 or 19 (the baselines: 16).
      width: channels of the first stage (64 in the standard ResNets and VGGs; 16 on CPU).
      stem: ResNet only: ``"small"`` (3 x 3 conv, no pooling: for 32-128 px segments) or
        ``"imagenet"``.
      dtype: ``"float32"`` or ``"bfloat16"`` computation.
      arch: ``"resnet"`` or ``"vgg"`` (the crop-based baselines of the paper's Table 8).
      norm: ``"group"`` (GroupNorm after every convolution) or, VGG only, ``"none"`` (the
        original VGG: convolutions with biases, no normalisation).
    """

    depth: int = 18
    width: int = 16
    stem: str = "small"
    dtype: str = "float32"
    arch: str = "resnet"
    norm: str = "group"

    @property
    def label(self) -> str:
        """Table label, e.g. ``"ResNet-18 (width 16)"`` or ``"VGG-16 (width 8)"``."""
        name = "VGG" if self.arch == "vgg" else "ResNet"
        return f"{name}-{self.depth} (width {self.width})"


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


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The whole pipeline in one config: ``osteo-jax run --config`` and ``osteo-jax demo``.

    radiographs (given, or synthesised from ``synth``) → segmenter (``seg``) → bone segments
    (``segment``) → the evaluation protocol (``protocol``: SSL, classifier, 3 seeds) →
    radiogrammetry → report.

    Attributes:
      name: experiment name (report title).
      synth: the synthetic cohort made when no dataset folder is given; None: a dataset
        folder is required.
      seg: segmenter training.
      segment: how segments are cut from the segmenter's prediction.
      protocol: pretraining, classifier and evaluation protocol.
      report_subjects: subjects drawn in the report's segmentation panels.
      hypotheses: segmentation hypotheses (the heaviest of the mixture's ``K x S``; 0 = all)
        over which the report's radiogrammetry measures the 2MCI's spread.
    """

    name: str = "osteo_jax experiment"
    synth: SynthConfig | None = SynthConfig()
    seg: SegTrainConfig = SegTrainConfig()
    segment: SegmentConfig = SegmentConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    report_subjects: int = 4
    hypotheses: int = 0

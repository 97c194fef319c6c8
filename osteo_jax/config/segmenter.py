"""Configuration of the segmenter, its training and the segments cut from its prediction."""

from __future__ import annotations

import dataclasses

from osteo_jax.config.choices import (
    DECODER_MODES,
    DTYPES,
    KL_REDUCTIONS,
    OT_COSTS,
    OT_PLANS,
    SEG_FORMS,
    SEGMENT_BACKGROUNDS,
    SEGMENT_FRAMES,
    SEGMENT_INTENSITIES,
    check_choice,
    check_positive,
)
from osteo_jax.config.labels import CLASS_NAMES, ROI_REGIONS


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
      dtype: computation, ``"auto"`` (bfloat16 on a GPU / TPU, float32 on the CPU;
        ``config/precision.py``), ``"float32"`` or ``"bfloat16"``; parameters and optimizer
        state are float32 whatever it is.
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
    dtype: str = "auto"

    def __post_init__(self):
        check_choice(self, "form", SEG_FORMS)
        check_choice(self, "mode", DECODER_MODES)
        check_choice(self, "dtype", DTYPES)
        check_positive(self, "num_classes", "num_experts", "num_samples", "image_size")


@dataclasses.dataclass(frozen=True)
class OTConfig:
    """The relaxed optimal-transport loss (``losses/ot.py``).

    Attributes:
      cost: pairwise cost, ``"iou"`` (1 - soft IoU, foreground mean) or ``"ce"``.
      ce_weight: with ``cost="iou"``, add this times the cross-entropy cost. The IoU cost
        ignores the background class, and a model can get stuck labelling the background with
        a saturated bone class (seen with the single U-Net); a small CE term anchors every
        pixel. 0 gives MoSE's pure IoU cost.
      plan: ``"sinkhorn"``: the entropic capped plan (``losses/ot.py``), as soft or as exact
        as ``epsilon`` makes it; ``"mose"``: MoSE's greedy coupling (``losses/greedy.py``),
        a vertex that can cost more than the optimum when the caps bind (ablation).
      epsilon: entropic regularisation, absolute (costs lie in [0, 1]). 0.01 (no annealing)
        gives a soft plan: on random 16 x 3-4 costs it cost up to 28 % (median 3 %) more than
        the exact optimum, spreading an annotation over hypotheses within a few hundredths of
        each other. 5e-4 with ``epsilon_start = 0.1`` and 300 iterations (``capped_plan``'s
        defaults) is within 0.45 % of it (``experiments/ot_fidelity.py``).
      epsilon_start: Sinkhorn anneals epsilon geometrically from this value to ``epsilon``
        over the first half of the iterations (None: no annealing; plain 1e-3 has rows up to
        0.08 over the cap after 1000 iterations).
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
      kl_weight: lambda of the KL(row mass || alpha) term.
      kl_reduction: ``"sum"`` of the KL over the N hypotheses, or ``"mean"`` (``sum / N``,
        the scale of MoSE's ``F.kl_div``). MoSE's lambda = 1 (10 when M = 1) is
        ``kl_weight = 1`` with ``"mean"``, or ``kl_weight = 1 / N`` with ``"sum"``; the
        default, 1 with ``"sum"``, weighs the KL N times (16 times at K = S = 4) more.
      balanced: the ablation where the plan's rows equal alpha and the router learns through
        d OT / d alpha (needs ``plan="sinkhorn"``).
      expert_gamma: capacity per expert: the real-annotation mass of each expert's S hypotheses
        together is at most this (``losses/expert_cap.py``), fixed for the whole run (the
        ``gamma`` ramp is not applied to it; while ``S gamma <= expert_gamma`` it cannot bind).
        A cap per hypothesis cannot keep several experts alive (one expert's S samples meet any
        ``gamma >= 1 / S``); this one forces at least ``ceil(1 / expert_gamma)`` experts to
        share the mass. ``None`` (default): no such cap. Needs ``plan="sinkhorn"``, not
        ``balanced``, a value in (0, 1] and ``K expert_gamma >= 1`` (checked by
        ``SegTrainConfig``, which knows K).
    """

    cost: str = "iou"
    ce_weight: float = 0.1
    plan: str = "sinkhorn"
    epsilon: float = 0.01
    epsilon_start: float | None = None
    num_iters: int = 200
    gamma_start: float | None = None
    gamma_end: float = 1.0
    gamma_ramp_start: int = 200
    gamma_ramp_steps: int = 400
    kl_weight: float = 1.0
    kl_reduction: str = "sum"
    balanced: bool = False
    expert_gamma: float | None = None

    def __post_init__(self):
        check_choice(self, "cost", OT_COSTS)
        check_choice(self, "plan", OT_PLANS)
        check_choice(self, "kl_reduction", KL_REDUCTIONS)
        check_positive(self, "epsilon", "num_iters")
        if self.balanced and self.plan != "sinkhorn":
            raise ValueError("OTConfig.balanced needs plan='sinkhorn' (it differentiates the plan)")
        if self.expert_gamma is not None:
            if not 0 < self.expert_gamma <= 1:
                raise ValueError(
                    f"OTConfig.expert_gamma must be in (0, 1] or None, got {self.expert_gamma!r}"
                )
            if self.plan != "sinkhorn" or self.balanced:
                raise ValueError(
                    "OTConfig.expert_gamma needs plan='sinkhorn' and balanced=False (the capped "
                    f"entropic plan); got plan={self.plan!r}, balanced={self.balanced!r}"
                )


@dataclasses.dataclass(frozen=True)
class SegTrainConfig:
    """Segmenter training (``train/seg_loop.py``).

    Attributes:
      model: the segmenter.
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
      validate_every: epochs between validations (the last epoch is always validated). Only
        how often the run is scored: training and its numbers do not depend on it, and a run
        may resume with another value.
      expert_parallel: size of the ``"expert"`` mesh axis: the K decoders (parameters,
        optimizer state, compute) are split over this many devices, the batch over the rest
        (a ``data x expert`` mesh; 1: data parallel only). Must divide K and the device count.
        A run may resume with another value (same numbers).
    """

    model: SegConfig = SegConfig()
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
    validate_every: int = 1
    expert_parallel: int = 1

    def __post_init__(self):
        check_positive(
            self,
            "batch_size",
            "epochs",
            "learning_rate",
            "checkpoint_every",
            "validate_every",
            "expert_parallel",
        )
        if not 0 <= self.val_fraction < 1:
            raise ValueError(
                f"SegTrainConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}"
            )
        eg, k = self.ot.expert_gamma, self.model.num_experts
        if eg is not None and (self.model.form == "unet" or k * eg < 1 - 1e-6):
            raise ValueError(
                "OTConfig.expert_gamma needs a mixture (form != 'unet') with K * expert_gamma >= 1 "
                f"(the experts must hold all the mass); got form={self.model.form!r}, K = {k}, "
                f"expert_gamma = {eg}"
            )


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
      intensity: the grey levels the segments are cut from: ``"percentile"`` stretches each
        radiograph between its own 0.5 and 99.5 percentiles (contrast alike across exposures,
        absolute density lost); ``"stored"`` keeps the file's values on the detector's fixed
        scale (``read_image``: stored value / (2^bits - 1), or the DICOM VOI window), so a
        segment's brightness still measures attenuation (cortical porosity, trabecular
        density) where every image comes from one calibrated detector, as in the synthetic
        cohort.
    """

    size: int = 128
    frame: str = "aligned"
    dilate_mm: float = 0.8
    margin: float = 0.05
    min_area_mm2: float = 20.0
    roi: str = "bones"
    background: str = "zero"
    intensity: str = "percentile"

    def __post_init__(self):
        check_choice(self, "frame", SEGMENT_FRAMES)
        check_choice(self, "intensity", SEGMENT_INTENSITIES)
        check_choice(self, "roi", ROI_REGIONS)
        check_choice(self, "background", SEGMENT_BACKGROUNDS)
        check_positive(self, "size")

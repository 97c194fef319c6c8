"""Configuration of the synthetic cohort generator (``data/synth/``).

The numbers come from ``DATA_PHYSICS.md`` (shared project notes); the comments say which line
each one encodes.
"""

from __future__ import annotations

import dataclasses


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

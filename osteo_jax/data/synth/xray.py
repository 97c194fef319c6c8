"""Image formation: Beer-Lambert projection, detector blur, quantum and electronic noise, 12 bits.

For each energy bin e with fluence weight w_e the transmitted fraction is
``T = sum_e w_e exp(-(mu_bone,e t_bone + mu_soft,e t_soft + mu_adipose,e t_adipose))`` (path
lengths t in cm). Several bins give beam hardening: thick bone looks less dense per mm than thin
bone, as on a real 50-60 kVp exposure. The detector counts ``N0 T`` quanta (Poisson), its
scintillator blurs them (Gaussian PSF), electronics add Gaussian noise, and a log amplifier stores
``dn_open + dn_per_neper * ln(N0 / counts)`` in 12 bits: air dark, bone bright (MONOCHROME2).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from osteo_jax.config import PhysicsConfig


def transmission(
    bone_mm: np.ndarray, soft_mm: np.ndarray, adipose_mm: np.ndarray, cfg: PhysicsConfig
) -> np.ndarray:
    """Fraction of the open-beam fluence that reaches each pixel (before blur and noise).

    Args:
      bone_mm: ``[H, W]`` path length through bone mineral (cortical bone density), mm.
      soft_mm: ``[H, W]`` path length through soft tissue, mm.
      adipose_mm: ``[H, W]`` path length through fatty marrow, mm.
      cfg: physics configuration (spectrum and attenuation tables, cm^-1).

    Returns:
      ``[H, W]`` float32 transmission in (0, 1].
    """
    w = np.asarray(cfg.spectrum, np.float64)
    w = w / w.sum()
    out = np.zeros(bone_mm.shape, np.float32)
    for we, mb, ms, ma in zip(w, cfg.mu_cortical, cfg.mu_soft, cfg.mu_adipose, strict=True):
        # mm -> cm: mu [cm^-1] * t [mm] / 10.
        att = np.float32(mb / 10) * bone_mm
        att += np.float32(ms / 10) * soft_mm
        att += np.float32(ma / 10) * adipose_mm
        np.exp(-att, out=att)
        out += np.float32(we) * att
    return out


def effective_mu(thickness_mm: float, material: str, cfg: PhysicsConfig) -> float:
    """Effective attenuation (cm^-1) of a slab of one material under the configured spectrum.

    ``-ln(T) / t``: equals the tabulated mu for a single energy bin, and falls with thickness
    for a polychromatic beam (beam hardening).
    """
    table = {"bone": cfg.mu_cortical, "soft": cfg.mu_soft, "adipose": cfg.mu_adipose}[material]
    w = np.asarray(cfg.spectrum, np.float64)
    w = w / w.sum()
    t = float(np.sum(w * np.exp(-np.asarray(table) * thickness_mm / 10)))
    return -np.log(t) / (thickness_mm / 10)


def expose(trans: np.ndarray, cfg: PhysicsConfig, rng: np.random.Generator | None) -> np.ndarray:
    """Detector: counts, blur, noise, log amplifier and quantisation.

    Args:
      trans: ``[H, W]`` transmission from :func:`transmission`.
      cfg: physics configuration.
      rng: noise source; ignored (may be None) when ``cfg.noise`` is False.

    Returns:
      ``[H, W]`` uint16 stored values in ``[0, 2**bits_stored - 1]``.
    """
    n0 = np.float32(cfg.photons_open)
    counts = trans * n0
    if cfg.noise:
        counts = rng.poisson(counts).astype(np.float32)
    counts = ndimage.gaussian_filter(counts, cfg.blur_sigma_px, mode="nearest")
    if cfg.noise and cfg.electronic_sigma > 0:
        counts += rng.standard_normal(counts.shape, dtype=np.float32) * np.float32(
            cfg.electronic_sigma
        )
    np.maximum(counts, np.float32(1.0), out=counts)
    value = np.float32(cfg.dn_open) + np.float32(cfg.dn_per_neper) * np.log(n0 / counts)
    top = 2**cfg.bits_stored - 1
    return np.clip(np.rint(value), 0, top).astype(np.uint16)


def to_attenuation(image: np.ndarray, cfg: PhysicsConfig) -> np.ndarray:
    """Inverse of the log amplifier: stored values back to ``-ln(T)`` (nepers)."""
    return (image.astype(np.float64) - cfg.dn_open) / cfg.dn_per_neper

"""Rasterises a hand :class:`~osteo_jax.data.synth.phantom.Scene`: path-length maps and label maps.

Each primitive is evaluated only inside its own bounding box, in its own frame (axial s,
radial t), so a 1024 x 1024 hand costs a few million pixel operations. Outputs:

* path lengths along the beam (mm) through bone mineral, fatty marrow and soft tissue, which
  :mod:`osteo_jax.data.synth.xray` turns into a radiograph by Beer-Lambert;
* the exact 8-class label map and M annotator maps with bounded boundary offsets (bias + smooth
  jitter) and the discrete "stop short" convention (metacarpal bases, styloids excluded);
* the region where the two conventions differ (so tests can separate jitter from ambiguity).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from osteo_jax.data.synth.phantom import Capsule, Ellipsoid, LongBone, Scene

_MARGIN_MM = 2.0
_TEX_SIZE = 256


@dataclasses.dataclass(frozen=True)
class AnnotatorDraw:
    """One annotator's choices for one image.

    Attributes:
      bias_mm: boundary offset (positive dilates).
      jitter_mm: amplitude bound of the smooth boundary jitter.
      short: the stop-short convention (bases and styloids excluded).
      cut_frac: where a short annotator cuts a metacarpal, as a fraction of its base flare.
      seed: seed of this annotator's jitter waves.
    """

    bias_mm: float
    jitter_mm: float
    short: bool
    cut_frac: float
    seed: int


@dataclasses.dataclass(frozen=True)
class Raster:
    """Rasterised scene.

    Attributes:
      bone: ``[H, W]`` path length through bone mineral (cortical + trabecular), mm.
      adipose: ``[H, W]`` path length through fatty marrow, mm.
      soft: ``[H, W]`` path length through soft tissue, mm.
      exact: ``[H, W]`` uint8 exact label map.
      annotators: ``[M, H, W]`` uint8 annotator label maps.
      ambiguous: ``[H, W]`` bool, where the annotation conventions can differ.
    """

    bone: np.ndarray
    adipose: np.ndarray
    soft: np.ndarray
    exact: np.ndarray
    annotators: np.ndarray
    ambiguous: np.ndarray


def texture_tiles(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two periodic noise tiles (zero mean, unit SD): trabecular (anisotropic) and pores (fine).

    Trabeculae run mostly along the bone axis, so the trabecular tile keeps low frequencies
    along its first axis (the bone axis when sampled) and band-passes across it.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E7]))
    f = np.fft.fftfreq(_TEX_SIZE)
    fs, ft = np.meshgrid(f, f, indexing="ij")
    tiles = []
    for ks, kt, band in ((0.05, 0.16, 0.05), (0.25, 0.25, 0.08)):
        radial = np.sqrt((fs / ks) ** 2 + (ft / kt) ** 2)
        filt = np.exp(-0.5 * ((radial - 1.0) / (band / min(ks, kt))) ** 2)
        noise = np.fft.ifft2(np.fft.fft2(rng.standard_normal((_TEX_SIZE, _TEX_SIZE))) * filt).real
        tiles.append(((noise - noise.mean()) / noise.std()).astype(np.float32))
    return tiles[0], tiles[1]


class _Grid:
    """Pixel-centre coordinates (mm, x right, y up, origin at the image centre)."""

    def __init__(self, size: int, spacing: float):
        self.size, self.sp = size, spacing

    def box(self, corners: np.ndarray):
        """Clipped pixel box around mm corners, and its (x, y) coordinates; None if empty."""
        cols = corners[:, 0] / self.sp + self.size / 2 - 0.5
        rows = self.size / 2 - corners[:, 1] / self.sp - 0.5
        r0, r1 = max(int(np.floor(rows.min())), 0), min(int(np.ceil(rows.max())) + 1, self.size)
        c0, c1 = max(int(np.floor(cols.min())), 0), min(int(np.ceil(cols.max())) + 1, self.size)
        if r0 >= r1 or c0 >= c1:
            return None
        x = ((np.arange(c0, c1) + 0.5 - self.size / 2) * self.sp)[None, :]
        y = ((self.size / 2 - np.arange(r0, r1) - 0.5) * self.sp)[:, None]
        return (slice(r0, r1), slice(c0, c1)), x, y


def _sample(tile: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = tile.shape[0]
    return tile[np.floor(a).astype(np.int64) % n, np.floor(b).astype(np.int64) % n]


def _jitter_table(rng: np.random.Generator, s_grid: np.ndarray, amp: float, scale: float):
    """Smooth 1-D jitter along a bone, |j| <= amp: three sinusoids, weights summing to 1."""
    lam = rng.uniform(8.0, 30.0, 3) * scale
    phase = rng.uniform(0.0, 2 * np.pi, 3)
    w = rng.uniform(0.2, 1.0, 3)
    w = w / w.sum()
    return amp * (
        w[:, None] * np.sin(2 * np.pi * s_grid[None, :] / lam[:, None] + phase[:, None])
    ).sum(0)


def rasterize(
    scene: Scene,
    *,
    size: int,
    spacing: float,
    annotators: tuple[AnnotatorDraw, ...],
    rng: np.random.Generator,
    tex_seed: int = 0,
) -> Raster:
    """Path-length and label maps of a scene.

    Args:
      scene: the subject's primitives (mm).
      size: image side in pixels.
      spacing: pixel spacing in mm.
      annotators: one :class:`AnnotatorDraw` per annotator mask.
      rng: source of texture offsets and anisotropy for this image.
      tex_seed: seed of the shared texture tiles.

    Returns:
      A :class:`Raster`.
    """
    grid = _Grid(size, spacing)
    shape = (size, size)
    bone = np.zeros(shape, np.float32)
    adipose = np.zeros(shape, np.float32)
    soft_delta = np.zeros(shape, np.float32)
    envelope = np.zeros(shape, np.float32)
    exact = np.zeros(shape, np.uint8)
    ann = np.zeros((len(annotators),) + shape, np.uint8)
    ambiguous = np.zeros(shape, bool)
    trab_tile, pore_tile = _TILES.get(tex_seed) or _TILES.setdefault(
        tex_seed, texture_tiles(tex_seed)
    )

    for cap in scene.tissue:
        _tissue(grid, cap, envelope)
    for ell in scene.carpals:
        _carpal(grid, ell, bone, adipose, soft_delta, trab_tile, rng)
    kmax = max([abs(a.bias_mm) + a.jitter_mm for a in annotators], default=0.0)
    for b in scene.bones:
        out = _long_bone(
            grid, b, bone, adipose, soft_delta, trab_tile, pore_tile, rng, _MARGIN_MM + kmax
        )
        if out is None or b.label == 0:
            continue
        sl, s, d, d_short, side = out
        exact[sl][d < 0.0] = b.label
        is_mc = b.label >= 3
        cut_hi = 1.05 * b.base_len + kmax
        if is_mc:
            ambiguous[sl] |= (d < kmax) & (s < cut_hi)
        else:
            ambiguous[sl] |= (d < kmax) & ~(d_short < -kmax)
        s_grid = np.linspace(-_MARGIN_MM - kmax, b.length + _MARGIN_MM + kmax, 256)
        for m, a in enumerate(annotators):
            arng = np.random.default_rng([a.seed, b.label])
            scale = max(b.length, 20.0) / 60.0
            jr = _jitter_table(arng, s_grid, a.jitter_mm, scale)
            ju = _jitter_table(arng, s_grid, a.jitter_mm, scale)
            k = a.bias_mm + np.where(side, np.interp(s, s_grid, jr), np.interp(s, s_grid, ju))
            if a.short and is_mc:
                mask = (d < k) & (s >= a.cut_frac * b.base_len)
            elif a.short:
                mask = d_short < k
            else:
                mask = d < k
            ann[m][sl][mask] = b.label

    soft = np.maximum(envelope + soft_delta, 0.0)
    return Raster(bone, adipose, soft, exact, ann, ambiguous)


_TILES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _tissue(grid: _Grid, cap: Capsule, envelope: np.ndarray) -> None:
    pad = np.array([[-1, -1], [1, 1], [-1, 1], [1, -1]]) * cap.radius
    box = grid.box(np.concatenate([cap.p0 + pad, cap.p1 + pad]))
    if box is None:
        return
    sl, x, y = box
    seg = cap.p1 - cap.p0
    t = np.clip(((x - cap.p0[0]) * seg[0] + (y - cap.p0[1]) * seg[1]) / (seg @ seg), 0.0, 1.0)
    d2 = (x - cap.p0[0] - t * seg[0]) ** 2 + (y - cap.p0[1] - t * seg[1]) ** 2
    thick = cap.thickness * np.sqrt(np.maximum(1.0 - d2 / cap.radius**2, 0.0))
    np.maximum(envelope[sl], thick.astype(np.float32), out=envelope[sl])


def _carpal(grid, ell: Ellipsoid, bone, adipose, soft_delta, tile, rng) -> None:
    e2 = np.array([-ell.e1[1], ell.e1[0]])
    r = max(ell.a, ell.b)
    box = grid.box(ell.centre + np.array([[-r, -r], [r, r]]))
    if box is None:
        return
    sl, x, y = box
    xi = (x - ell.centre[0]) * ell.e1[0] + (y - ell.centre[1]) * ell.e1[1]
    eta = (x - ell.centre[0]) * e2[0] + (y - ell.centre[1]) * e2[1]
    sh = 0.6
    out = 2 * ell.depth * np.sqrt(np.maximum(1 - (xi / ell.a) ** 2 - (eta / ell.b) ** 2, 0.0))
    inn = (
        2
        * (ell.depth - sh)
        * np.sqrt(np.maximum(1 - (xi / (ell.a - sh)) ** 2 - (eta / (ell.b - sh)) ** 2, 0.0))
    )
    off = rng.uniform(0, _TEX_SIZE, 2)
    tex = np.clip(1.0 + 0.7 * _sample(tile, xi / 0.3 + off[0], eta / 0.3 + off[1]), 0.0, None)
    cort = out - inn
    bone[sl] += (cort * (1 - ell.porosity) + inn * ell.bvtv * tex).astype(np.float32)
    adipose[sl] += (inn * (1 - ell.bvtv * tex)).clip(0.0).astype(np.float32)
    soft_delta[sl] += (cort * ell.porosity - out).astype(np.float32)


def _long_bone(grid, b: LongBone, bone, adipose, soft_delta, trab_tile, pore_tile, rng, margin):
    rmax = b.radius * (1 + max(b.base_flare, b.head_flare)) + b.styloid + margin
    corners = np.array(
        [b.p0 + sa * b.u + ta * b.n for sa in (-margin, b.length + margin) for ta in (-rmax, rmax)]
    )
    box = grid.box(corners)
    if box is None:
        return None
    sl, x, y = box
    s = (x - b.p0[0]) * b.u[0] + (y - b.p0[1]) * b.u[1]
    t = (x - b.p0[0]) * b.n[0] + (y - b.p0[1]) * b.n[1]
    # Tabulate the profile finely along the axis, then interpolate per pixel.
    s_tab = np.arange(-margin, b.length + margin + grid.sp / 4, grid.sp / 4)
    prof = b.profile(s_tab)
    R, o, r, delta, frac, R0 = (
        np.interp(s, s_tab, prof[k]) for k in ("R", "o", "r", "delta", "b", "R0")
    )
    chord_out = 2 * np.sqrt(np.maximum(R**2 - (t - o) ** 2, 0.0))
    chord_in = 2 * np.sqrt(np.maximum(r**2 - (t + delta) ** 2, 0.0))
    cort = np.maximum(chord_out - chord_in, 0.0)
    off = rng.uniform(0, _TEX_SIZE, 4)
    aniso = rng.uniform(1.5, 2.5)
    trab = np.clip(
        1.0 + 0.7 * _sample(trab_tile, s / (0.3 * aniso) + off[0], t / 0.3 + off[1]), 0.0, None
    )
    # Pores are far below the pixel; the beam averages many along its chord, so the projected
    # porosity varies by a fraction of its mean only.
    pores = 1.0 + 0.3 * _sample(pore_tile, s / 0.1 + off[2], t / 0.1 + off[3])
    bone[sl] += (cort * (1 - b.porosity * pores) + chord_in * frac * trab).astype(np.float32)
    adipose[sl] += (chord_in * (1 - frac * trab)).clip(0.0).astype(np.float32)
    soft_delta[sl] += (cort * b.porosity * pores - chord_out).astype(np.float32)
    if b.label == 0:
        return sl, None, None, None, None
    # Pseudo signed distance to the outline; beyond the ends, the distance to the tip.
    beyond = np.maximum(np.maximum(-s, s - b.length), 0.0)
    d = np.where(beyond > 0, np.hypot(beyond, t - o), np.abs(t - o) - R)
    d_short = np.where(beyond > 0, np.hypot(beyond, t), np.abs(t) - R0)
    return sl, s, d, d_short, t - o > 0

"""Parametric hand and wrist phantom: the scene of one subject, in mm, and its rasterisation.

The hand is a set of primitives laid out for a right hand seen posterior-anterior (thumb at +x,
fingers at +y), then mirrored for a left hand, rotated, and shifted:

* long bones (radius, ulna, MC1-MC5, phalanges): tubes along an axis whose outer radius R(s)
  flares at base and head and closes in rounded caps, with a cortical wall that is full
  thickness along the diaphysis and a thin shell in the flared ends, a medullary canal holding
  trabecular bone (BV/TV in the metaphyses) and fatty marrow, and an optional styloid bump;
* carpals: ellipsoids with a cortical shell and trabecular interior (drawn, labelled background);
* the soft-tissue envelope: capsules (forearm, palm, thenar, fingers) with elliptic cross-section.

Path lengths along the beam come from the cylinder chord formula of ``DATA_PHYSICS.md``: for a
tube of outer radius R and inner radius r at distance x from the axis the cortical path is
2(sqrt(R^2 - x^2) - sqrt(r^2 - x^2)) for |x| < r and 2 sqrt(R^2 - x^2) for r <= |x| < R.
Labels come from a pseudo signed distance |x - o(s)| - R(s) in the bone's own frame, so
annotator offsets are exact distances along the shaft and bounded ones at the caps.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Lengths (mm) of the phalanges per ray (thumb: proximal, distal; fingers: prox, middle, distal)
# and their base widths; all scaled by hand size.
_PHALANX_LENGTHS = (
    (31.0, 23.0),
    (40.0, 23.0, 17.0),
    (44.0, 27.0, 19.0),
    (41.0, 26.0, 18.0),
    (33.0, 19.0, 16.0),
)
_PHALANX_WIDTHS = ((8.0, 6.5), (7.6, 6.6, 5.4), (7.8, 6.9, 5.6), (7.2, 6.5, 5.3), (6.4, 5.6, 4.9))
# Metacarpal bases (mm, right hand, scale 1) and axis angles (deg, + towards the thumb).
_MC_BASE = ((21.0, -50.0), (10.0, -41.0), (1.0, -39.5), (-8.0, -41.5), (-16.0, -44.5))
_MC_ANGLE = (34.0, 7.0, 0.0, -6.0, -13.0)
# Finger spread at the MCP joints (deg at spread factor 1) per ray.
_RAY_SPREAD = (14.0, 7.0, 0.0, -7.0, -14.0)
# Carpals: centre (mm), semi-axes a, b (mm), angle (deg): scaphoid, lunate, triquetrum,
# pisiform, trapezium, trapezoid, capitate, hamate.
_CARPALS = (
    ((12.5, -58.0), 8.0, 4.8, 40.0),
    ((1.5, -59.5), 5.5, 5.0, 0.0),
    ((-8.5, -57.5), 4.8, 4.2, 20.0),
    ((-12.5, -54.5), 3.6, 3.4, 0.0),
    ((19.5, -48.5), 5.2, 4.6, 30.0),
    ((10.0, -47.0), 4.2, 4.0, 0.0),
    ((1.0, -48.5), 5.2, 7.8, 0.0),
    ((-9.5, -48.0), 5.0, 6.6, -10.0),
)
_WRIST_PIVOT = (0.0, -60.0)
# The 204.8 mm field of view cannot hold forearm to fingertips: the layout is raised so the
# distal radius and ulna shafts stay in view (about 35 mm of them) and the fingertips of a large
# hand may leave the image, as in a wrist-centred exposure.
_LAYOUT_RAISE_MM = 6.0
_SHELL_MM = 0.5


def smoothstep(t: np.ndarray) -> np.ndarray:
    """Cubic Hermite step: 0 for t <= 0, 1 for t >= 1, C1-smooth in between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclasses.dataclass(frozen=True)
class LongBone:
    """A tubular bone in the image plane (mm).

    Attributes:
      label: class id in the label map, 0 for bones drawn but not segmented (phalanges).
      p0: ``[2]`` proximal end of the axis (x, y).
      u: ``[2]`` unit axis direction, proximal to distal.
      n: ``[2]`` unit normal pointing to the radial (thumb) side.
      length: axis length.
      radius: outer radius W/2 of the diaphysis.
      wall_radial: radial-side wall thickness in the diaphysis.
      wall_ulnar: ulnar-side wall thickness in the diaphysis.
      base_flare: relative widening of the base (proximal end).
      base_len: length of the proximal flare.
      head_flare: relative widening of the head (distal end).
      head_len: length of the distal flare.
      porosity: cortical porosity.
      bvtv: trabecular bone volume fraction in the metaphyses.
      styloid: size of a bump on one side at the distal end (mm), 0 for none.
      styloid_side: +1 radial, -1 ulnar.
    """

    label: int
    p0: np.ndarray
    u: np.ndarray
    n: np.ndarray
    length: float
    radius: float
    wall_radial: float
    wall_ulnar: float
    base_flare: float
    base_len: float
    head_flare: float
    head_len: float
    porosity: float
    bvtv: float
    styloid: float = 0.0
    styloid_side: float = 1.0

    @property
    def measure_s(self) -> float:
        """Axial position of the mid-diaphysis where the cortex has its full thickness."""
        if self.label in (1, 2):  # radius, ulna: the distal shaft inside the field of view
            return self.length - 1.6 * self.head_len
        return 0.5 * self.length

    def profile(self, s: np.ndarray) -> dict[str, np.ndarray]:
        """Cross-section along the axis.

        Args:
          s: axial positions (any shape), mm from the proximal end.

        Returns:
          ``R`` outer radius, ``o`` outer-centre offset (radial +), ``r`` medullary radius,
          ``delta`` medullary-centre offset (ulnar +), ``b`` trabecular fraction, ``R0`` outer
          radius without the styloid.
        """
        L = self.length
        gb = smoothstep((self.base_len - s) / self.base_len)
        gh = smoothstep((s - (L - self.head_len)) / self.head_len)
        cap_b = 0.55 * self.radius * (1.0 + self.base_flare)
        cap_h = 0.55 * self.radius * (1.0 + self.head_flare)
        cap = np.sqrt(
            np.clip(
                1.0 - np.maximum((cap_b - s) / cap_b, (s - (L - cap_h)) / cap_h).clip(0.0) ** 2,
                0.0,
                1.0,
            )
        )
        cap = np.where((s < 0.0) | (s > L), 0.0, cap)
        r0 = self.radius * (1.0 + self.base_flare * gb + self.head_flare * gh) * cap
        # Full-thickness cortex along the diaphysis, thin shell in the metaphyses.
        w = (1.0 - smoothstep((1.5 * self.base_len - s) / (1.5 * self.base_len))) * (
            1.0 - smoothstep((s - (L - 1.5 * self.head_len)) / (1.5 * self.head_len))
        )
        walls = (self.wall_radial + self.wall_ulnar) * w + 2.0 * _SHELL_MM * (1.0 - w)
        delta = 0.5 * (self.wall_radial - self.wall_ulnar) * w
        r_in = np.maximum(r0 - 0.5 * walls, 0.0)
        delta = np.minimum(delta, np.maximum(r0 - r_in - 0.25 * walls, 0.0))
        bump = self.styloid * smoothstep((s - (L - self.head_len * 0.9)) / (0.9 * self.head_len))
        bump = bump * cap
        return dict(
            R=r0 + 0.5 * bump,
            o=0.5 * bump * self.styloid_side,
            r=r_in,
            delta=delta,
            b=self.bvtv * (1.0 - w) + 0.01 * w,
            R0=r0,
        )


@dataclasses.dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoidal bone (carpal) projected along the beam.

    Attributes:
      centre: ``[2]`` centre (x, y) in mm.
      a: semi-axis along ``e1``.
      b: semi-axis perpendicular to ``e1``.
      depth: semi-axis along the beam.
      e1: ``[2]`` unit direction of the ``a`` axis.
      porosity: cortical porosity of the shell.
      bvtv: trabecular fraction of the interior.
    """

    centre: np.ndarray
    a: float
    b: float
    depth: float
    e1: np.ndarray
    porosity: float
    bvtv: float


@dataclasses.dataclass(frozen=True)
class Capsule:
    """Soft tissue around a segment: thickness ``t * sqrt(1 - (d / radius)^2)`` at distance d."""

    p0: np.ndarray
    p1: np.ndarray
    radius: float
    thickness: float


@dataclasses.dataclass(frozen=True)
class Scene:
    """All primitives of one hand, in mm, after pose (mirror, rotation, shift)."""

    bones: tuple[LongBone, ...]
    carpals: tuple[Ellipsoid, ...]
    tissue: tuple[Capsule, ...]


def _rot(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _dir(deg: float) -> np.ndarray:
    """Unit vector at ``deg`` from +y, positive towards +x (the thumb of a right hand)."""
    a = np.deg2rad(deg)
    return np.array([np.sin(a), np.cos(a)])


def build_scene(cohort, i: int) -> Scene:
    """Lays out subject ``i`` of a :class:`~osteo_jax.data.synth.cohort.Cohort` as a ``Scene``."""
    k = float(cohort.hand_scale[i])
    spread = float(cohort.spread[i])
    jit = cohort.finger_jitter_deg[i]
    mirror = np.array([-1.0, 1.0]) if cohort.laterality[i] == "L" else np.array([1.0, 1.0])
    rot = _rot(-float(cohort.rotation_deg[i]))
    pivot = np.array(_WRIST_PIVOT) * k
    shift = np.asarray(cohort.shift_mm[i], dtype=np.float64) + np.array([0.0, _LAYOUT_RAISE_MM])

    def place(p):
        return rot @ (mirror * np.asarray(p) - pivot) + pivot + shift

    def turn(v):
        return rot @ (mirror * np.asarray(v))

    por, bv = cohort.porosity[i], cohort.bvtv[i]
    bones: list[LongBone] = []

    def long_bone(
        label, base, angle, length, radius, wr, wu, bf, bl, hf, hl, p, b, sty=0.0, sty_side=1.0
    ):
        u0 = _dir(angle)
        n0 = np.array([u0[1], -u0[0]])
        bones.append(
            LongBone(
                label,
                place(base),
                turn(u0),
                turn(n0),
                length,
                radius,
                wr,
                wu,
                bf,
                bl,
                hf,
                hl,
                p,
                b,
                sty,
                sty_side,
            )
        )
        return np.asarray(base) + length * u0

    # Radius and ulna: long shafts entering from below, distal epiphyses with styloids.
    for j, (end, angle, hf, hl, sty, side) in enumerate(
        (((11.5, -66.5), 2.0, 0.9, 15.0, 4.0, 1.0), ((-12.5, -69.5), -1.0, 0.45, 12.0, 3.0, -1.0))
    ):
        L = float(cohort.length[i, j])
        base = np.asarray(end) * k - L * _dir(angle)
        long_bone(
            j + 1,
            base,
            angle,
            L,
            cohort.width[i, j] / 2,
            cohort.wall_radial[i, j],
            cohort.wall_ulnar[i, j],
            0.3,
            20.0,
            hf,
            hl * k,
            por[j],
            bv[j],
            sty * k,
            side,
        )
    # Metacarpals, then the phalanges of each ray.
    ci_mean = float(np.mean(cohort.ci[i, 2:]))
    for ray in range(5):
        j = ray + 2
        angle = _MC_ANGLE[ray] + 0.3 * jit[ray]
        L = float(cohort.length[i, j])
        head = long_bone(
            j + 1,
            np.asarray(_MC_BASE[ray]) * k,
            angle,
            L,
            cohort.width[i, j] / 2,
            cohort.wall_radial[i, j],
            cohort.wall_ulnar[i, j],
            0.38,
            0.2 * L,
            0.42,
            0.2 * L,
            por[j],
            bv[j],
        )
        angle = angle + _RAY_SPREAD[ray] * spread + jit[ray]
        for length, width in zip(_PHALANX_LENGTHS[ray], _PHALANX_WIDTHS[ray], strict=True):
            start = head + 2.0 * k * _dir(angle)
            length, width = length * k, width * k
            wall = 0.5 * width * ci_mean
            head = long_bone(
                0,
                start,
                angle,
                length,
                width / 2,
                wall,
                wall,
                0.25,
                0.25 * length,
                0.2,
                0.2 * length,
                float(np.mean(por)),
                float(np.mean(bv)),
            )
    carpals = tuple(
        Ellipsoid(
            place(np.asarray(c) * k),
            a * k,
            b * k,
            0.8 * min(a, b) * k,
            turn(_dir(90 - ang)),
            float(np.mean(por)),
            min(0.25, float(np.mean(bv)) * 1.2),
        )
        for c, a, b, ang in _CARPALS
    )
    # Soft tissue: forearm ~30 mm thick, palm ~25 mm, thenar ~22 mm, fingers ~16-18 mm.
    tissue = [
        Capsule(
            place(np.array([0.0, -260.0]) * k), place(np.array([-1.0, -62.0]) * k), 36 * k, 30.0 * k
        ),
        Capsule(
            place(np.array([0.0, -50.0]) * k), place(np.array([-2.0, 0.0]) * k), 38 * k, 25.0 * k
        ),
        Capsule(bones[2].p0, bones[2].p0 + bones[2].u * bones[2].length, 13 * k, 22.0 * k),
    ]
    finger_radius = (10.0, 9.0, 9.2, 8.6, 7.8)
    finger_bones = [b for b in bones if b.label == 0]
    first = 0
    for ray in range(5):
        nph = len(_PHALANX_LENGTHS[ray])
        seg = finger_bones[first : first + nph]
        first += nph
        tip = seg[-1].p0 + seg[-1].u * (seg[-1].length + 1.0 * k)
        tissue.append(
            Capsule(seg[0].p0 - seg[0].u * 8.0 * k, tip, finger_radius[ray] * k, 17.0 * k)
        )
    return Scene(tuple(bones), carpals, tuple(tissue))

"""Geometric views of a bone segment: one affine resample of a crop box, bone mask kept exact.

A bone segment is a float32 ``[H, W]`` image in ``[0, 1]`` whose background is exactly 0 and
whose bone pixels are ``> 0``; its bone mask is ``image > 0``. A box (crop, horizontal flip,
small rotation about its centre) is resampled so that the background stays exactly 0 and
``crop > 0`` is the crop's mask; :mod:`osteo_jax.data.photometric` then acts on bone pixels only,
and :mod:`osteo_jax.data.augment` picks the boxes of a multi-crop.

Geometry, in edge coordinates (the image spans ``[0, H] x [0, W]``, pixel ``(i, j)`` has centre
``(i + 1/2, j + 1/2)``). A box has centre ``c``, extent ``(h, w)``, angle ``θ`` and a flip bit;
output pixel ``(i, j)`` of an ``S x S`` crop reads the source point

    t_k = (k + 1/2) / S - 1/2,   v = t_i h,   u = ±t_j w  (minus when flipped),
    (y, x) = c + R(θ) (v, u),    R(θ) = [[cos θ, -sin θ], [sin θ, cos θ]],

with ``map_coordinates``. The crop's mask ``m`` is the nearest-neighbour (order 0) resample
of ``image > 0``, zero outside the image (one gather per sample keeps the custom rule's
candidate tests cheap). Bone values are one bilinear (order 1) resample of the *filled* image:
each background pixel next to bone (8-neighbourhood) holds the mean of its bone neighbours,
so ``crop = bilinear(filled)`` on ``m`` and 0 elsewhere. The four pixels read by a sample all
touch its nearest pixel, so where ``m`` holds they are bone or filled from bone: the zero
background does not darken the bone border and every bone value is ``> 0``. A crop's bone
fraction is ``mean(m) == mean(crop > 0)``. (Renormalising by a bilinear mask instead needs a
second bilinear gather feeding the same fusion, which XLA:CPU runs ~10x slower.)

All functions are pure and jittable with static sizes; randomness comes from explicit keys.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

__all__ = [
    "N_BOX_UNIFORMS",
    "Box",
    "affine_crop",
    "boxes_from_uniforms",
    "compose_crop",
    "fill_border",
    "nearest_mask",
    "random_resized_crop",
    "source_coords",
]

_F32 = jnp.float32
N_BOX_UNIFORMS = 6  # area, ratio, centre row, centre col, angle, flip


class Box(NamedTuple):
    """Crop boxes in edge coordinates; fields may carry a leading batch axis ``[...]``."""

    center: jax.Array  # [..., 2] (row, col)
    extent: jax.Array  # [..., 2] (height, width) in input pixels
    angle: jax.Array  # [...] radians
    flip: jax.Array  # [...] bool


def source_coords(box: Box, size: int) -> jax.Array:
    """Pixel-index coordinates ``[2, S, S]`` read by each output pixel (module equation)."""
    # (k + 1/2) h / S - h / 2 rather than t_k h, and a flip as the reversed index S - k - 1/2:
    # both exact for an identity box (h = S), whatever XLA reassociates.
    k = jnp.arange(size, dtype=_F32) + 0.5
    v = (k * box.extent[0] / size - box.extent[0] / 2)[:, None]
    k = jnp.where(box.flip, size - k, k)
    u = (k * box.extent[1] / size - box.extent[1] / 2)[None, :]
    cos, sin = jnp.cos(box.angle), jnp.sin(box.angle)
    y = box.center[0] + (cos * v - sin * u)
    x = box.center[1] + (sin * v + cos * u)
    return jnp.stack([y - 0.5, x - 0.5])


def fill_border(image: jax.Array, mask: jax.Array) -> jax.Array:
    """``image`` ``[H, W]`` with each background pixel set to the mean of its bone 3x3 neighbours.

    Background pixels with no bone neighbour stay 0.
    """
    m = mask.astype(_F32)

    def box3(a):
        p = jnp.pad(a, 1)
        rows = p[:-2] + p[1:-1] + p[2:]
        return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]

    return jnp.where(mask, image, box3(image * m) / jnp.maximum(box3(m), 1.0))


def nearest_mask(mask_f: jax.Array, coords: jax.Array) -> jax.Array:
    """Bone mask ``[S, S]`` bool: order-0 samples of ``mask_f`` ``[H, W]``, zero outside."""
    sample = map_coordinates(mask_f, [coords[0], coords[1]], order=0, mode="constant", cval=0.0)
    return sample > 0.5


def compose_crop(filled: jax.Array, coords: jax.Array, mask: jax.Array) -> jax.Array:
    """The crop ``[S, S]``: bilinear samples of the filled image on ``mask``, 0 elsewhere."""
    # Edge-replicating mode: a bone pixel at the image edge is not darkened by outside zeros
    # (outside samples are off `mask` anyway).
    value = map_coordinates(filled, [coords[0], coords[1]], order=1, mode="nearest")
    # `value` is a convex combination of bone values with weight >= 1/4 on one of them; `tiny`
    # only guards float underflow so that `crop > 0` is exactly `mask`.
    return jnp.where(mask, jnp.maximum(value, np.finfo(np.float32).tiny), 0.0)


def boxes_from_uniforms(
    u: jax.Array,
    *,
    shape: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    max_rotation_deg: float,
    flip: bool,
) -> Box:
    """Boxes ``[n]`` from uniforms ``u`` ``[n, 6]``: area ``U[scale] H W``, log-uniform ratio.

    A side longer than the image is clipped to it (the area then shrinks); the centre is
    uniform over the positions that keep the unrotated box inside the image.
    """
    height, width = shape
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * (height * width)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = jnp.exp(lo + (hi - lo) * u[:, 1])
    h = jnp.minimum(jnp.sqrt(area / r), float(height))
    w = jnp.minimum(jnp.sqrt(area * r), float(width))
    cy = h / 2 + u[:, 2] * (height - h)
    cx = w / 2 + u[:, 3] * (width - w)
    angle = math.radians(max_rotation_deg) * (2.0 * u[:, 4] - 1.0)
    flips = (u[:, 5] < 0.5) & flip
    return Box(jnp.stack([cy, cx], -1), jnp.stack([h, w], -1), angle, flips)


def affine_crop(
    image: jax.Array,
    *,
    size: int,
    center: jax.Array,
    extent: jax.Array,
    angle: jax.Array | float = 0.0,
    flip: jax.Array | bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Resamples one box of a segment (module equation): nearest mask, bilinear values.

    Args:
      image: ``[H, W]`` float32 segment, background exactly 0.
      size: output side ``S`` (static).
      center: ``[2]`` box centre ``(row, col)`` in edge coordinates.
      extent: ``[2]`` box ``(height, width)`` in input pixels.
      angle: scalar box rotation ``θ`` in radians.
      flip: scalar bool, horizontal flip of the output.

    Returns:
      ``(crop, mask)``: ``[S, S]`` float32 crop and ``[S, S]`` bool mask, ``mask == crop > 0``.
    """
    image = jnp.asarray(image, _F32)
    box = Box(
        jnp.asarray(center, _F32),
        jnp.asarray(extent, _F32),
        jnp.asarray(angle, _F32),
        jnp.asarray(flip, bool),
    )
    coords = source_coords(box, size)
    bone = image > 0
    mask = nearest_mask(bone.astype(_F32), coords)
    return compose_crop(fill_border(image, bone), coords, mask), mask


def random_resized_crop(
    key: jax.Array,
    image: jax.Array,
    *,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    max_rotation_deg: float,
    flip: bool,
) -> tuple[jax.Array, jax.Array]:
    """One random box (area, ratio, position, angle, flip) resampled by :func:`affine_crop`.

    Args:
      key: PRNG key.
      image: ``[H, W]`` float32 segment, background exactly 0.
      size: output side ``S`` (static).
      scale: ``(lo, hi)`` box area as a fraction of ``H W``.
      ratio: ``(lo, hi)`` aspect ratio ``w / h``, log-uniform.
      max_rotation_deg: angle ``~ U[-max, max]`` degrees.
      flip: flip horizontally with probability 1/2 if True.

    Returns:
      ``(crop, bone_fraction)``: ``[S, S]`` float32 and the float32 scalar ``mean(crop > 0)``.
    """
    image = jnp.asarray(image, _F32)
    u = jax.random.uniform(key, (1, N_BOX_UNIFORMS), _F32)
    box = boxes_from_uniforms(
        u,
        shape=image.shape,
        scale=scale,
        ratio=ratio,
        max_rotation_deg=max_rotation_deg,
        flip=flip,
    )
    box = jax.tree.map(lambda a: a[0], box)
    crop, mask = affine_crop(
        image, size=size, center=box.center, extent=box.extent, angle=box.angle, flip=box.flip
    )
    return crop, mask.mean(dtype=_F32)

"""Expert parallelism: the mixture's K stacked decoders sharded over a mesh axis ``"expert"``.

A ``data x expert`` mesh (:func:`expert_mesh`) splits the batch along ``"data"`` and the K
decoders along ``"expert"``: every decoder leaf (leading axis K, under the segmenter's
``"decoders"`` subtree) and its optimizer moments (Adam ``mu``/``nu``) live on axis 0 sharded
over ``"expert"``, everything else is replicated (:func:`state_sharding`). The decoders'
compute follows through :func:`expert_map`, the :class:`~osteo_jax.models.mixture.Segmenter`
hook that runs them under ``jax.shard_map``: each device applies its K / E decoders to its
data shard. Sharding only the parameters is not enough: XLA does not partition the grouped
convolutions of the ``vmap`` execution and all-gathers the parameters instead.

The step itself is unchanged: the same loss and gradients as on one device, up to the order
of floating-point reductions.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from osteo_jax.models.mixture import DECODERS, ExpertMap, StackedFn

__all__ = ["DATA", "EXPERT", "expert_map", "expert_mesh", "is_expert_leaf", "state_sharding"]

DATA = "data"
EXPERT = "expert"

PyTree = Any


def expert_mesh(
    expert: int,
    devices=None,
    *,
    num_experts: int | None = None,
    batch_size: int | None = None,
) -> Mesh:
    """A ``(n / expert, expert)`` mesh with axes ``("data", "expert")``.

    Args:
      expert: size of the ``"expert"`` axis (devices sharing one data shard, each holding
        ``num_experts / expert`` decoders).
      devices: the mesh's devices (default: all).
      num_experts: K, if given checked to split evenly over ``expert``.
      batch_size: the global batch, if given checked to split evenly over the data axis.

    Returns:
      The mesh (row ``i`` holds the devices of data shard ``i``).

    Raises:
      ValueError: ``expert`` is not positive or does not divide the device count, K or the
        batch does not split evenly.
    """
    devices = np.asarray(devices if devices is not None else jax.devices()).reshape(-1)
    n = devices.size
    if expert < 1 or n % expert:
        raise ValueError(f"expert parallelism {expert} does not divide the {n} devices")
    data = n // expert
    if num_experts is not None and num_experts % expert:
        raise ValueError(
            f"{num_experts} experts (decoders) do not split evenly over an expert axis of {expert}"
        )
    if batch_size is not None and batch_size % data:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the data axis of {data} "
            f"({n} devices / expert parallelism {expert})"
        )
    return Mesh(devices.reshape(data, expert), (DATA, EXPERT))


def is_expert_leaf(path) -> bool:
    """Whether a leaf's key path runs through the stacked decoders' ``"decoders"`` subtree.

    True for the decoder parameters and for anything mirroring their tree (gradients, Adam's
    ``mu`` and ``nu``), whose leaves all carry the leading K axis.
    """
    return any(getattr(key, "key", None) == DECODERS for key in path)


def state_sharding(mesh: Mesh, state: PyTree) -> PyTree:
    """A ``NamedSharding`` per leaf of ``state``: decoder leaves on ``"expert"``, others replicated.

    Args:
      mesh: a mesh with an ``"expert"`` axis (:func:`expert_mesh`).
      state: the train state (arrays or ``ShapeDtypeStruct``s).

    Returns:
      A pytree like ``state`` of ``NamedSharding``: ``P("expert")`` (axis 0) for the leaves
      under ``"decoders"``, ``P()`` for the rest.

    Raises:
      ValueError: a decoder leaf's leading axis does not split evenly over ``"expert"``.
    """
    size = mesh.shape[EXPERT]

    def spec(path, leaf) -> NamedSharding:
        if not is_expert_leaf(path):
            return NamedSharding(mesh, P())
        shape = np.shape(leaf)
        if not shape or shape[0] % size:
            raise ValueError(
                f"{jax.tree_util.keystr(path)} of shape {shape} has no leading expert axis "
                f"divisible by {size}"
            )
        return NamedSharding(mesh, P(EXPERT))

    return jax.tree_util.tree_map_with_path(spec, state)


def expert_map(mesh: Mesh) -> ExpertMap:
    """The :class:`~osteo_jax.models.mixture.Segmenter` ``expert_map`` hook over ``mesh``.

    The stacked decoders run under ``jax.shard_map`` over both mesh axes: parameters split
    along K on ``"expert"``, latents ``[K, B, S, L]`` along K and the batch, the encoder's
    skips and bottleneck along the batch on ``"data"``; each device computes the logits of its
    K / E decoders for its B / D images. The gradient of the replicated-over-``"data"``
    parameters is summed over the data shards by ``shard_map``'s transpose.

    Args:
      mesh: a ``("data", "expert")`` mesh (:func:`expert_mesh`).

    Returns:
      ``apply(fn, params, z, skips, bottleneck) -> [K, B, S, H, W, C]``.
    """

    def apply(fn: StackedFn, params: PyTree, z, skips, bottleneck):
        mapped = jax.shard_map(
            fn,
            mesh=mesh,
            in_specs=(P(EXPERT), P(EXPERT, DATA), P(DATA), P(DATA)),
            out_specs=P(EXPERT, DATA),
        )
        return mapped(params, z, skips, bottleneck)

    return apply

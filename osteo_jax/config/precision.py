"""Compute precision: the ``dtype`` field of the model configs and what ``"auto"`` means.

``SegConfig.dtype`` and ``BackboneConfig.dtype`` default to ``"auto"``: bfloat16 computation on
a GPU or TPU (their matrix units run it at several times the float32 rate, and activations take
half the memory), float32 on the CPU, where XLA has no faster bfloat16 path and the results
stay bit-identical to an explicit ``"float32"``. Only the computation changes: parameters and
optimizer states are float32 whatever the dtype (flax's ``param_dtype``), and every model
keeps its normalisation statistics and losses in float32. The choice is made when a model is
built, from the backend jax runs on.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ACCELERATOR_BACKENDS", "resolve_dtype", "resolve_dtypes"]

# jax.default_backend() names of the backends that compute in bfloat16 under "auto".
ACCELERATOR_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def resolve_dtype(name: str, backend: str | None = None) -> str:
    """The concrete compute dtype of a config's ``dtype`` field.

    Args:
      name: ``"auto"``, ``"float32"`` or ``"bfloat16"``.
      backend: the backend to resolve ``"auto"`` for (default ``jax.default_backend()``).

    Returns:
      ``name`` itself unless it is ``"auto"``; then ``"bfloat16"`` on a GPU or TPU backend and
      ``"float32"`` otherwise.
    """
    if name != "auto":
        return name
    if backend is None:
        import jax

        backend = jax.default_backend()
    return "bfloat16" if backend in ACCELERATOR_BACKENDS else "float32"


def resolve_dtypes(tree: Any, backend: str | None = None) -> Any:
    """A copy of a nested dict / list (a config as JSON) with every ``"dtype"`` resolved.

    Used to compare a resumed run's configuration with the one its folder was started with:
    ``"auto"`` equals the dtype it stands for on this backend (an old ``config.json`` holding
    ``"float32"`` resumes under the new default on a CPU).

    Args:
      tree: dicts, lists and leaves, as read from JSON.
      backend: as in :func:`resolve_dtype`.

    Returns:
      The same structure, the value under every ``"dtype"`` key passed through
      :func:`resolve_dtype`.
    """
    if isinstance(tree, dict):
        return {
            k: resolve_dtype(v, backend)
            if k == "dtype" and isinstance(v, str)
            else resolve_dtypes(v, backend)
            for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [resolve_dtypes(v, backend) for v in tree]
    return tree

"""The capacity schedule of the relaxed OT loss (MoSE raises ``gamma`` from 1/2 to 1)."""

import jax
import jax.numpy as jnp

__all__ = ["gamma_schedule"]


def gamma_schedule(
    step: int | jax.Array,
    *,
    start: float = 0.5,
    end: float = 1.0,
    ramp_start: int = 2000,
    ramp_steps: int = 2000,
) -> jax.Array:
    """Capacity ``gamma`` at a step: ``start`` until ``ramp_start``, then linear to ``end``.

    ``gamma(t) = start + (end - start) clip((t - ramp_start) / ramp_steps, 0, 1)``. MoSE raises
    gamma from 1/2 to 1 when the loss plateaus; a step-based ramp keeps the train step a pure
    function of ``(state, batch, rng)``. The defaults are placeholders: set ``ramp_start`` and
    ``ramp_steps`` from the run length. ``ramp_steps = 0`` is a jump at ``ramp_start``.

    Args:
      step: training step (Python int or int array, may be traced).
      start: gamma before the ramp.
      end: gamma after the ramp.
      ramp_start: first step of the ramp.
      ramp_steps: length of the ramp in steps.

    Returns:
      Scalar float32 gamma.
    """
    t = jnp.asarray(step).astype(jnp.float32)
    if ramp_steps <= 0:
        frac = (t >= ramp_start).astype(jnp.float32)
    else:
        frac = jnp.clip((t - ramp_start) / ramp_steps, 0.0, 1.0)
    return jnp.float32(start) + jnp.float32(end - start) * frac

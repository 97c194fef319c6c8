"""The ott-jax adapter: entropic optimal-transport plans by Sinkhorn; the only module importing ott.

Every optimal-transport plan of the package (the capped and balanced plans of
:mod:`osteo_jax.losses.ot`, the SwAV codes of :func:`osteo_jax.losses.ssl.balanced_assignment`)
is :func:`entropic_plan`: ott-jax Sinkhorn in the log domain with an explicit absolute epsilon and
a fixed iteration count, so that it vmaps over a batch. Two ott-jax 0.6.0 pitfalls are handled
here:

* Its Sinkhorn relies on implicit rank and dtype promotion, so it fails under
  ``jax_numpy_rank_promotion="raise"`` or ``jax_numpy_dtype_promotion="strict"``. Every trace of
  ott code (forward and backward) runs inside :func:`_ott_promotion_rules`.
* With ``min_iterations == max_iterations`` (a ``lax.scan``) and more than ``inner_iterations``
  iterations, the backward pass of the unrolled loop (``implicit_diff=None``) walks the
  checkpointed states in the wrong order and returns wrong gradients. Running all iterations as
  one block (``inner_iterations == max_iterations``) is exact.
"""

import contextlib
import functools
from typing import NamedTuple

import jax
import numpy as np
from ott.geometry import epsilon_scheduler, geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

__all__ = ["SinkhornSettings", "entropic_plan", "sinkhorn_settings", "static_float"]


@contextlib.contextmanager
def _ott_promotion_rules():
    """Lets ott-jax trace with the promotion rules it was written for, whatever the caller set."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


class SinkhornSettings(NamedTuple):
    """Static Sinkhorn settings (Python numbers, so they can be a ``nondiff_argnums``).

    Attributes:
      epsilon: absolute entropic regularisation, in the units of the cost.
      num_iters: number of Sinkhorn iterations (fixed, so the solver vmaps over a batch).
      epsilon_start: if set (> ``epsilon``), epsilon decays geometrically from it to
        ``epsilon`` over the first half of the iterations (epsilon scaling).
    """

    epsilon: float
    num_iters: int
    epsilon_start: float | None


def sinkhorn_settings(epsilon, num_iters, epsilon_start) -> SinkhornSettings:
    """Checked :class:`SinkhornSettings` from numbers.

    Args:
      epsilon: positive absolute entropic regularisation.
      num_iters: positive number of iterations (an int, or a float with an integer value).
      epsilon_start: start of the epsilon annealing, or None.

    Returns:
      The settings as Python floats and int.

    Raises:
      ValueError: ``epsilon`` not positive, ``num_iters`` not a positive integer.
    """
    epsilon = float(epsilon)
    if not epsilon > 0.0:
        raise ValueError(f"epsilon must be a positive float; got {epsilon}.")
    if int(num_iters) != num_iters or num_iters < 1:
        raise ValueError(f"num_iters must be a positive int; got {num_iters}.")
    if epsilon_start is not None:
        epsilon_start = float(epsilon_start)
    return SinkhornSettings(epsilon, int(num_iters), epsilon_start)


def _solve(cost, a, b, *, epsilon, num_iters, epsilon_start):
    """Balanced entropic plan of ``cost`` with marginals ``a``, ``b`` (call under the rules)."""
    if epsilon_start is not None and epsilon_start > epsilon:
        # eps_t = epsilon * max(1, init * decay^t): geometric from epsilon_start down to
        # epsilon at half the budget, then constant.
        init = epsilon_start / epsilon
        decay = init ** (-1.0 / max(num_iters // 2, 1))
        eps = epsilon_scheduler.Epsilon(epsilon, init=init, decay=decay)
    else:
        eps = epsilon
    geom = geometry.Geometry(cost_matrix=cost, epsilon=eps)
    problem = linear_problem.LinearProblem(geom, a=a, b=b)
    solver = sinkhorn.Sinkhorn(
        lse_mode=True,
        min_iterations=num_iters,
        max_iterations=num_iters,
        # One block of all iterations: see the module docstring (wrong gradients otherwise).
        inner_iterations=num_iters,
        implicit_diff=None,
    )
    return solver(problem).matrix


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def entropic_plan(cost, a, b, settings):
    """Balanced entropic optimal-transport plan, differentiable in reverse mode.

    Solves ``min_T sum_ij T_ij C_ij - epsilon H(T)  s.t.  T 1 = a,  T^T 1 = b`` with ott-jax
    Sinkhorn in the log domain, from zero potentials, for exactly ``settings.num_iters``
    iterations; each iteration matches ``b`` first, then ``a``. Gradients are those of the
    unrolled iterations, traced (forward and backward) under the promotion rules ott needs.

    Args:
      cost: ``[N, M]`` float32 cost ``C``.
      a: ``[N]`` row marginal.
      b: ``[M]`` column marginal, with the same total mass as ``a``.
      settings: :func:`sinkhorn_settings` (static).

    Returns:
      ``[N, M]`` float32 plan ``T``.
    """
    with _ott_promotion_rules():
        return _solve(cost, a, b, **settings._asdict())


def _entropic_plan_fwd(cost, a, b, settings):
    # Reverse mode of ott's unrolled loop is traced lazily, outside the caller's `with`; this
    # wrapper traces it (forward and backward) under the promotion rules.
    with _ott_promotion_rules():
        plan, pullback = jax.vjp(functools.partial(_solve, **settings._asdict()), cost, a, b)
    return plan, pullback


def _entropic_plan_bwd(settings, pullback, g):
    del settings
    with _ott_promotion_rules():
        return pullback(g)


entropic_plan.defvjp(_entropic_plan_fwd, _entropic_plan_bwd)


def static_float(x) -> float | None:
    """``x`` (summed) as a Python float when it is known at trace time, else ``None``.

    The plans check their masses' feasibility with it when the inputs are concrete.
    """
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return float(np.sum(np.asarray(x)))
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None

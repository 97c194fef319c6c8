"""Relaxed optimal-transport loss between N segmentation hypotheses and M annotations.

The loss of MoSE (Gao et al., "Modeling Multimodal Aleatoric Uncertainty in Segmentation with
Mixture of Stochastic Experts", ICLR 2023). With ``C[i, j]`` the cost between hypothesis ``i``
and annotation ``j`` and router weights ``alpha``::

    T* = argmin_T  sum_ij T_ij C_ij   s.t.  T >= 0,  T 1_M <= gamma 1_N,  T^T 1_N = beta
    loss = sum_ij stop_grad(T*)_ij C_ij  +  lambda * KL(T* 1_M || alpha)

The hypothesis side is only capped (capacity ``gamma``), the annotation side is exact. MoSE
solves for ``T*`` greedily (``plan="mose"``, :mod:`osteo_jax.losses.greedy`); by default here it
is the entropic plan of ott-jax Sinkhorn on an augmented balanced problem (a zero-cost dummy
annotation absorbs the unused capacity), with an explicit absolute epsilon annealed to 5e-4 and
a fixed iteration count so that it vmaps over a batch (within 0.45 % of the exact optimum on the
random family of issue 17; ``experiments/ot_fidelity.py``).

The plans are solved by :func:`osteo_jax.losses.sinkhorn.entropic_plan` (the ott-jax adapter);
the costs are in :mod:`osteo_jax.losses.costs`, the schedule of ``gamma`` in
:mod:`osteo_jax.losses.schedule`.
"""

import jax
import jax.numpy as jnp

from osteo_jax.config.choices import KL_REDUCTIONS, OT_PLANS
from osteo_jax.losses.expert_cap import expert_capped_plan
from osteo_jax.losses.greedy import greedy_plan
from osteo_jax.losses.sinkhorn import entropic_plan, sinkhorn_settings, static_float

__all__ = ["balanced_ot_loss", "capped_plan", "relaxed_ot_loss"]

# Floor on masses and weights: a weight of exactly zero gives log(0) in the Sinkhorn potentials
# and the KL term, hence non-finite gradients.
_FLOOR = 1e-8


def _column_marginal(beta: jax.Array | None, num_cols: int) -> jax.Array:
    if beta is None:
        return jnp.full((num_cols,), 1.0 / num_cols, jnp.float32)
    beta = jnp.asarray(beta, jnp.float32)
    if beta.shape != (num_cols,):
        raise ValueError(f"beta must have shape ({num_cols},); got {beta.shape}.")
    return beta


def _check_cost(cost: jax.Array) -> jax.Array:
    cost = jnp.asarray(cost, jnp.float32)
    if cost.ndim != 2:
        raise ValueError(f"cost must be [N, M] (vmap over the batch); got shape {cost.shape}.")
    return cost


def capped_plan(
    *,
    cost: jax.Array,
    gamma: float | jax.Array,
    beta: jax.Array | None = None,
    epsilon: float = 5e-4,
    num_iters: int = 300,
    epsilon_start: float | None = 0.1,
) -> jax.Array:
    """Capped optimal-transport plan: each hypothesis takes at most ``gamma`` of the mass.

    Solves the entropic version of::

        min_T  sum_ij T_ij C_ij   s.t.  T >= 0,  T 1_M <= gamma 1_N,  T^T 1_N = beta

    as a balanced problem on the ``[N, M + 1]`` matrix ``[C | 0]``: every hypothesis has mass
    ``gamma`` and a zero-cost dummy annotation has mass ``N gamma - sum(beta)``, which absorbs
    the capacity the real annotations leave unused. Dropping the dummy column gives ``T``.
    Sinkhorn runs in the log domain with an absolute ``epsilon`` (never ott's default, relative
    to the spread of the cost, which is 0 when all hypotheses agree at initialisation) and
    exactly ``num_iters`` iterations. The final Sinkhorn update is on the annotation side (the
    problem is solved transposed), so ``T^T 1_N = beta`` holds up to float32 rounding.

    ``epsilon`` is in the units of ``cost`` (soft IoU costs lie in ``[0, 1]``); hypotheses whose
    costs differ by less than a few ``epsilon`` share an annotation. Measured on the random
    family of issue 17 (N = 16, M = 3-4, uniform costs, 200 problems per gamma in
    ``{0.25, 0.5, 1}``; ``experiments/ot_fidelity.py``), the primal cost exceeds the exact
    optimum (POT's network simplex) by at most (median 0.001 % or less at the accurate settings):

    * 0.45 % at the defaults (``epsilon`` annealed 0.1 -> 5e-4 over the first 150 of 300
      iterations); row sums exceed ``gamma`` by < 2e-5, column sums are off by < 2e-5;
    * 1.6 % annealed 0.1 -> 1e-3 in 200 iterations (the entropic bias of ``epsilon = 1e-3``:
      1000 plain iterations at 1e-3 give the same 1.6 % but rows up to 0.08 over ``gamma``);
    * 28 % with ``epsilon = 0.01``, no annealing (the soft plan, ``OTConfig``'s default; an
      absolute gap below ``epsilon``, large relative to a near-zero optimum; median 3 %).

    Rounding the plan onto the constraints (Altschuler et al. 2017) fixes the row sums but
    not the cost (``experiments/ot_fidelity.py``), so it is not offered.

    The plan is a target, not a function to differentiate: the inputs are wrapped in
    ``stop_gradient``.

    Args:
      cost: ``[N, M]`` cost between N hypotheses and M annotations (e.g. :func:`soft_iou_cost`).
      gamma: capacity per hypothesis; needs ``N gamma >= sum(beta)`` (1 by default). A Python
        value that violates it raises; a traced one is clipped up to ``sum(beta) / N``.
      beta: ``[M]`` annotation weights summing to 1; uniform ``1 / M`` if ``None``.
      epsilon: absolute entropic regularisation, in the units of ``cost``.
      num_iters: number of Sinkhorn iterations (fixed, so the solver vmaps over a batch).
      epsilon_start: if set (> ``epsilon``), epsilon decays geometrically from it to
        ``epsilon`` over the first half of the iterations (epsilon scaling); ``None``: no
        annealing.

    Returns:
      ``[N, M]`` float32 plan ``T`` (without gradient).
    """
    settings = sinkhorn_settings(epsilon, num_iters, epsilon_start)
    cost = jax.lax.stop_gradient(_check_cost(cost))
    n, m = cost.shape
    beta_in, beta = beta, jax.lax.stop_gradient(_column_marginal(beta, m))
    mass = jnp.sum(beta)
    static_gamma = static_float(gamma)
    static_mass = 1.0 if beta_in is None else static_float(beta_in)
    if static_gamma is not None and static_mass is not None:
        if n * static_gamma < static_mass * (1.0 - 1e-6):
            raise ValueError(
                f"capped_plan needs N * gamma >= sum(beta): N = {n}, gamma = {static_gamma}, "
                f"sum(beta) = {static_mass}."
            )
    gamma = jax.lax.stop_gradient(jnp.asarray(gamma, jnp.float32))
    dummy = jnp.maximum(n * gamma - mass, _FLOOR)
    capacity = jnp.full((n,), (mass + dummy) / n, jnp.float32)
    augmented = jnp.concatenate([cost, jnp.zeros((n, 1), jnp.float32)], axis=1)
    annotation_mass = jnp.concatenate([beta, dummy[None]])
    plan_t = entropic_plan(augmented.T, annotation_mass, capacity, settings)
    return plan_t[:m].T


def relaxed_ot_loss(
    *,
    cost: jax.Array,
    alpha: jax.Array | None = None,
    gamma: float | jax.Array,
    log_alpha: jax.Array | None = None,
    beta: jax.Array | None = None,
    kl_weight: float = 1.0,
    kl_reduction: str = "sum",
    plan: str = "sinkhorn",
    epsilon: float = 5e-4,
    num_iters: int = 300,
    epsilon_start: float | None = 0.1,
    expert_gamma: float | jax.Array | None = None,
    num_experts: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Relaxed OT loss of MoSE for one example: the capped plan as target, plus a router KL.

    With ``T*`` the capped plan and its row mass ``p = T* 1_M / sum(T*)``::

        loss = sum_ij stop_grad(T*)_ij C_ij + lambda * r * sum_i p_i (log p_i - log alpha_i)

    with ``r = 1`` for ``kl_reduction="sum"`` and ``r = 1 / N`` for ``"mean"``. MoSE's
    ``F.kl_div(log alpha, p)`` uses PyTorch's default reduction, the mean over batch x N
    entries, so MoSE's ``lambda_MoSE`` equals ``kl_weight = lambda_MoSE`` with ``"mean"`` and
    ``kl_weight = lambda_MoSE / N`` with ``"sum"`` (MoSE's 1 is 1/16 here for N = 16).

    ``p`` and ``alpha`` are floored at 1e-8 inside the logarithms, so the loss and its gradients
    stay finite when a weight is 0. Gradients reach ``cost`` (it equals ``T*``, which trains the
    segmenter) and ``alpha`` (``-lambda r p / alpha``, which trains the router), nothing else.
    Pass ``log_alpha`` (e.g. a log-softmax) instead of ``alpha`` to use it without the floor:
    the floor's ``max`` has zero gradient, so an expert whose weight fell below 1e-8 could never
    be revived by the KL term, whereas through ``log_alpha`` the router's logit gradient
    ``lambda r (alpha_i - p_i)`` stays exact.

    Args:
      cost: ``[N, M]`` differentiable cost between hypotheses and annotations.
      alpha: ``[N]`` router weights of the hypotheses (a probability vector).
      log_alpha: ``[N]`` log router weights, instead of ``alpha`` (no floor; preferred).
      gamma: capacity per hypothesis (see :func:`capped_plan`); MoSE moves it from 1/2 to 1.
      beta: ``[M]`` annotation weights summing to 1; uniform if ``None``.
      kl_weight: ``lambda``; MoSE's 1 (10 when M = 1) with ``kl_reduction="mean"``.
      kl_reduction: ``"sum"`` over the N hypotheses or ``"mean"`` (MoSE's scale, ``sum / N``).
      plan: ``"sinkhorn"``: :func:`capped_plan` (entropic, near-exact at the defaults);
        ``"mose"``: MoSE's greedy coupling, :func:`osteo_jax.losses.greedy.greedy_plan`
        (the solver settings are then unused).
      epsilon: absolute entropic regularisation of the plan.
      num_iters: Sinkhorn iterations.
      epsilon_start: epsilon annealing start (see :func:`capped_plan`); ``None``: none.
      expert_gamma: if set, each of the ``num_experts`` blocks of rows (expert-major) also
        takes at most this much mass in total:
        :func:`osteo_jax.losses.expert_cap.expert_capped_plan` replaces :func:`capped_plan`
        (needs ``plan="sinkhorn"``; at epsilon 5e-4 it needs about 3000 iterations, not
        300, to meet its caps). ``None``: no such cap.
      num_experts: K, with ``expert_gamma``.

    Returns:
      ``(loss, aux)``: the scalar loss and a dict with ``transport`` and ``kl`` (scalars, ``kl``
      after the reduction, before ``lambda``), ``row_mass`` ``[N]`` (``p``) and ``plan``
      ``[N, M]`` (``T*``), all float32.
    """
    cost = _check_cost(cost)
    if (alpha is None) == (log_alpha is None):
        raise ValueError("pass exactly one of alpha and log_alpha")
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}; got {kl_reduction!r}.")
    if plan not in OT_PLANS:
        raise ValueError(f"plan must be one of {OT_PLANS}; got {plan!r}.")
    if log_alpha is not None:
        log_alpha = jnp.asarray(log_alpha, jnp.float32)
        shape = log_alpha.shape
    else:
        alpha = jnp.asarray(alpha, jnp.float32)
        log_alpha = jnp.log(jnp.maximum(alpha, _FLOOR))
        shape = alpha.shape
    if shape != cost.shape[:1]:
        raise ValueError(f"alpha must have shape ({cost.shape[0]},); got {shape}.")
    if expert_gamma is not None and (plan != "sinkhorn" or num_experts is None):
        raise ValueError("expert_gamma needs plan='sinkhorn' and num_experts")
    if plan == "mose":
        target = greedy_plan(cost=cost, gamma=gamma, beta=_column_marginal(beta, cost.shape[1]))
    else:
        solver = dict(epsilon=epsilon, num_iters=num_iters, epsilon_start=epsilon_start)
        if expert_gamma is None:
            target = capped_plan(cost=cost, gamma=gamma, beta=beta, **solver)
        else:
            target = expert_capped_plan(
                cost=cost,
                gamma=gamma,
                expert_gamma=expert_gamma,
                num_experts=num_experts,
                beta=beta,
                **solver,
            )
    transport = jnp.sum(target * cost)
    row_mass = jnp.sum(target, axis=1)
    p = row_mass / jnp.sum(row_mass)
    kl = jnp.sum(p * (jnp.log(jnp.maximum(p, _FLOOR)) - log_alpha))
    if kl_reduction == "mean":
        kl = kl / cost.shape[0]
    loss = transport + kl_weight * kl
    return loss, {"transport": transport, "kl": kl, "row_mass": p, "plan": target}


def balanced_ot_loss(
    *,
    cost: jax.Array,
    alpha: jax.Array,
    beta: jax.Array | None = None,
    epsilon: float = 0.01,
    num_iters: int = 200,
    epsilon_start: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Balanced OT loss (ablation): the router is trained through the plan's marginal.

    ``T`` is the entropic plan with ``T 1_M = alpha`` and ``T^T 1_N = beta`` and::

        loss = sum_ij T_ij C_ij

    differentiated through the unrolled Sinkhorn iterations, with respect to both ``cost`` and
    ``alpha``. Its ``d loss / d C`` is ``T`` plus a term from the motion of the plan, small when
    each annotation has a clearly cheapest hypothesis. A KL between the row mass and ``alpha``
    would be identically zero here (the row mass *is* ``alpha``), which is why the capped form
    of :func:`relaxed_ot_loss` exists. ``alpha`` is floored at 1e-8 and renormalised before
    solving (an exact zero weight gives non-finite gradients in ott). Reverse mode only.

    Convergence is slower than for the capped plan when ``alpha`` is skewed: with random
    Dirichlet ``alpha`` at ``epsilon = 0.01`` the column sums were off by up to 0.07 after 200
    iterations, 0.015 with ``epsilon_start = 0.1`` and 0.008 after 1000 plain iterations.

    Args:
      cost: ``[N, M]`` differentiable cost between hypotheses and annotations.
      alpha: ``[N]`` router weights (a probability vector).
      beta: ``[M]`` annotation weights summing to 1; uniform if ``None``.
      epsilon: absolute entropic regularisation.
      num_iters: Sinkhorn iterations (fixed).
      epsilon_start: optional epsilon annealing start (see :func:`capped_plan`).

    Returns:
      ``(loss, aux)`` with the same keys as :func:`relaxed_ot_loss` (``kl`` is 0).
    """
    settings = sinkhorn_settings(epsilon, num_iters, epsilon_start)
    cost = _check_cost(cost)
    alpha = jnp.asarray(alpha, jnp.float32)
    if alpha.shape != cost.shape[:1]:
        raise ValueError(f"alpha must have shape ({cost.shape[0]},); got {alpha.shape}.")
    beta = _column_marginal(beta, cost.shape[1])
    a = jnp.maximum(alpha, _FLOOR)
    a = a / jnp.sum(a) * jnp.sum(beta)
    plan = entropic_plan(cost, a, beta, settings)
    transport = jnp.sum(plan * cost)
    aux = {
        "transport": transport,
        "kl": jnp.zeros((), jnp.float32),
        "row_mass": jax.lax.stop_gradient(jnp.sum(plan, axis=1)),
        "plan": jax.lax.stop_gradient(plan),
    }
    return transport, aux

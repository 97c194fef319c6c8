"""Fidelity of the OT loss to its reference (issue 17): the plan against POT's exact solver,
MoSE's greedy coupling on hand cases, the KL reductions, gradients at identical hypotheses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

from osteo_jax.config import OTConfig
from osteo_jax.losses import capped_plan, relaxed_ot_loss
from osteo_jax.losses.greedy import greedy_plan

# The family of issue 17: N = 16 hypotheses, M = 3 or 4 annotations, uniform costs.
_N, _PROBLEMS = 16, 50


@functools.partial(jax.jit, static_argnames=("plan",))
def _batched_plan(costs, gamma, plan="sinkhorn"):
    if plan == "mose":
        beta = jnp.full((costs.shape[2],), 1.0 / costs.shape[2], jnp.float32)
        return jax.vmap(lambda c: greedy_plan(cost=c, gamma=gamma, beta=beta))(costs)
    return jax.vmap(lambda c: capped_plan(cost=c, gamma=gamma))(costs)


@functools.partial(jax.jit, static_argnames=("plan", "kl_reduction"))
def _loss_and_grads(cost, logits, gamma, plan="sinkhorn", kl_reduction="sum"):
    def loss(c, lg):
        return relaxed_ot_loss(
            cost=c,
            log_alpha=jax.nn.log_softmax(lg),
            gamma=gamma,
            plan=plan,
            kl_reduction=kl_reduction,
        )

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(cost, logits)


def _finite(*arrays):
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in arrays)


def _exact_cost(cost, gamma):
    n, m = cost.shape
    augmented = np.concatenate([cost, np.zeros((n, 1))], axis=1).astype(np.float64)
    a = np.full(n, gamma)
    b = np.concatenate([np.full(m, 1.0 / m), [n * gamma - 1.0]])
    return float(np.sum(pot.emd(a, b, augmented) * augmented))


def _family(m):
    seeds = [s for s in range(_PROBLEMS) if 3 + s % 2 == m]
    return np.stack([np.random.default_rng(s).uniform(size=(_N, m)) for s in seeds]).astype(
        np.float32
    )


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("m", [3, 4])
def test_default_plan_within_one_percent_of_exact(m, gamma):
    costs = _family(m)
    plans = _batched_plan(costs, gamma)
    assert plans.shape == costs.shape and plans.dtype == jnp.float32 and _finite(plans)
    plans = np.asarray(plans, np.float64)
    assert np.all(plans >= 0.0)
    # Caps and the annotation marginal hold to 1e-4 (measured: < 2e-5 on 200 problems).
    assert np.all(plans.sum(axis=2) <= gamma + 1e-4)
    np.testing.assert_allclose(plans.sum(axis=1), 1.0 / m, atol=1e-4)
    for cost, plan in zip(costs, plans, strict=True):
        exact = _exact_cost(cost, gamma)
        assert np.sum(plan * cost) <= exact * 1.01


def test_soft_plan_is_kept_as_an_option():
    # epsilon = 0.01 without annealing (OTConfig's default) is the soft plan: measurably above
    # the optimum on the same family.
    costs = _family(3)
    soft = jax.jit(
        jax.vmap(lambda c: capped_plan(cost=c, gamma=1.0, epsilon=0.01, epsilon_start=None))
    )
    plans = np.asarray(soft(costs), np.float64)
    assert _finite(plans)
    gaps = [np.sum(p * c) / _exact_cost(c, 1.0) - 1 for c, p in zip(costs, plans, strict=True)]
    assert max(gaps) > 0.05


# ------------------------------------------------------------------ MoSE's greedy coupling


_HAND_CASES = [
    # Greedy is not optimal: annotation 0 (cheapest pair 0.0) is placed first on hypothesis 0,
    # which leaves hypothesis 1 (cost 0.9) to annotation 1. The optimum swaps them (0.075).
    ([[0.0, 0.1], [0.05, 0.9]], 0.5, [0.5, 0.5], [[0.5, 0.0], [0.0, 0.5]]),
    # One annotation split over hypotheses in cost order, each filled to gamma = 0.4.
    ([[0.3], [0.1], [0.2]], 0.4, [1.0], [[0.2], [0.4], [0.4]]),
    # Capacity taken by an earlier annotation: annotation 1 skips the full hypothesis 0.
    ([[0.1, 0.12], [0.3, 0.5], [0.9, 0.2]], 0.5, [0.5, 0.5], [[0.5, 0], [0, 0], [0, 0.5]]),
    # Ties go to the lower index, annotations in index order: gamma = 1/N splits evenly.
    ([[0.5, 0.5]] * 4, 0.25, [0.5, 0.5], [[0.25, 0], [0.25, 0], [0, 0.25], [0, 0.25]]),
    # gamma = 1: every annotation goes whole to its cheapest hypothesis.
    ([[0.2, 0.7, 0.4], [0.1, 0.8, 0.3], [0.9, 0.6, 0.5]], 1.0, [0.2, 0.3, 0.5],
     [[0, 0, 0], [0.2, 0, 0.5], [0, 0.3, 0]]),
    # Non-uniform beta: filled in units of 1/M, then column j scaled by M beta_j (row 0 then
    # exceeds gamma, as in MoSE).
    ([[0.0, 0.1], [0.05, 0.9]], 0.5, [0.75, 0.25], [[0.75, 0.0], [0.0, 0.25]]),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(_HAND_CASES)))
def test_mose_plan_follows_the_greedy_rule(case):
    cost, gamma, beta, expected = _HAND_CASES[case]
    cost = np.asarray(cost, np.float32)
    plan = jax.jit(greedy_plan)(cost=cost, gamma=gamma, beta=np.asarray(beta, np.float32))
    assert plan.shape == cost.shape and plan.dtype == jnp.float32 and _finite(plan)
    np.testing.assert_allclose(plan, expected, atol=1e-7)


def test_mose_plan_through_the_loss_and_vmap(rng):
    costs = rng.uniform(size=(3, 8, 3)).astype(np.float32)
    plans = np.asarray(_batched_plan(costs, 1.0, plan="mose"))
    expected = np.zeros_like(costs)
    for b in range(3):
        expected[b, costs[b].argmin(0), np.arange(3)] = 1.0 / 3
    np.testing.assert_allclose(plans, expected, atol=1e-7)
    (_, aux), _ = _loss_and_grads(costs[0], jnp.zeros(8), jnp.float32(1.0), plan="mose")
    np.testing.assert_allclose(aux["plan"], expected[0], atol=1e-7)
    # The greedy plan is feasible at gamma < 1 and never cheaper than the exact optimum.
    plans = np.asarray(_batched_plan(costs, 0.25, plan="mose"), np.float64)
    assert np.all(plans.sum(2) <= 0.25 + 1e-6)
    np.testing.assert_allclose(plans.sum(1), 1.0 / 3, atol=1e-6)
    for c, p in zip(costs, plans, strict=True):
        assert np.sum(p * c) >= _exact_cost(c, 0.25) - 1e-6


# ------------------------------------------------------------------------- KL reduction


@pytest.mark.parametrize("plan", ["sinkhorn", "mose"])
def test_kl_reductions_differ_by_exactly_n(plan, rng):
    n, m = 8, 3
    cost = rng.uniform(size=(n, m)).astype(np.float32)
    logits = rng.normal(size=n).astype(np.float32)
    (l_sum, a_sum), (gc_sum, gl_sum) = _loss_and_grads(cost, logits, 0.5, plan, "sum")
    (l_mean, a_mean), (gc_mean, gl_mean) = _loss_and_grads(cost, logits, 0.5, plan, "mean")
    assert l_sum.dtype == jnp.float32 and _finite(l_sum, l_mean, gl_sum, gl_mean)
    assert float(a_sum["kl"]) > 0.01
    np.testing.assert_allclose(a_sum["kl"], n * a_mean["kl"], rtol=1e-6)
    np.testing.assert_allclose(
        l_sum - a_sum["transport"], n * (l_mean - a_mean["transport"]), rtol=1e-5
    )
    np.testing.assert_allclose(gl_sum, n * gl_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(gc_sum, gc_mean)  # the plan (d loss / d C) is the same


def test_otconfig_checks_plan_and_reduction():
    assert OTConfig(plan="mose", kl_reduction="mean").plan == "mose"
    with pytest.raises(ValueError, match="plan"):
        OTConfig(plan="greedy")
    with pytest.raises(ValueError, match="kl_reduction"):
        OTConfig(kl_reduction="batchmean")
    with pytest.raises(ValueError, match="balanced"):
        OTConfig(plan="mose", balanced=True)
    with pytest.raises(ValueError, match="kl_reduction"):
        relaxed_ot_loss(
            cost=jnp.zeros((2, 1)), alpha=jnp.full((2,), 0.5), gamma=1.0, kl_reduction="x"
        )


# ----------------------------------------------------------- identical hypotheses: finite


@pytest.mark.parametrize("plan", ["sinkhorn", "mose"])
@pytest.mark.parametrize("gamma", [1.0 / _N, 0.5, 1.0])
def test_gradients_finite_at_identical_hypotheses(plan, gamma):
    # All hypotheses equal (as at initialisation), one router weight near 0 (logit -30), and
    # the all-zero cost of hypotheses that match every annotation.
    logits = jnp.zeros((_N,), jnp.float32).at[3].set(-30.0)
    for cost in (np.tile(np.float32([0.3, 0.7, 0.5]), (_N, 1)), np.zeros((_N, 3), np.float32)):
        (loss, aux), (g_cost, g_logits) = _loss_and_grads(cost, logits, jnp.float32(gamma), plan)
        assert loss.dtype == jnp.float32 and g_cost.shape == cost.shape
        assert _finite(loss, g_cost, g_logits, aux["plan"])
        np.testing.assert_allclose(np.asarray(aux["plan"]).sum(0), 1.0 / 3, atol=1e-4)

"""Relaxed OT loss: costs against numpy, plans against POT's exact solver, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

from osteo_jax.losses import (
    balanced_ot_loss,
    capped_plan,
    cross_entropy_cost,
    gamma_schedule,
    relaxed_ot_loss,
    soft_iou_cost,
)

_SOLVER = ("epsilon", "num_iters", "epsilon_start")
soft_iou = jax.jit(soft_iou_cost)
cross_entropy = jax.jit(cross_entropy_cost)
plan_fn = jax.jit(capped_plan, static_argnames=_SOLVER)


# The plan OTConfig trains with (soft, epsilon 0.01, no annealing): the tests below that were
# written for it keep checking it at their original tolerances; the accurate default plan has
# its own tolerances in tests/test_ot_fidelity.py.
SOFT = {"epsilon": 0.01, "num_iters": 200, "epsilon_start": None}


@functools.partial(jax.jit, static_argnames=("kl_weight", "soft"))
def relaxed_value_and_grads(cost, alpha, gamma, kl_weight=1.0, soft=False):
    def loss(c, a):
        solver = SOFT if soft else {}
        return relaxed_ot_loss(cost=c, alpha=a, gamma=gamma, kl_weight=kl_weight, **solver)

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(cost, alpha)


@functools.partial(jax.jit, static_argnames=("epsilon",))
def balanced_value_and_grads(cost, alpha, epsilon=0.01):
    def loss(c, a):
        return balanced_ot_loss(cost=c, alpha=a, epsilon=epsilon)

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(cost, alpha)


balanced_loss = jax.jit(
    lambda cost, alpha: balanced_ot_loss(cost=cost, alpha=alpha, epsilon=0.05)[0]
)


def _finite(*arrays):
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in arrays)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------- costs


def _soft_iou_reference(probs, labels, smooth=1.0):
    n, m, num_classes = probs.shape[0], labels.shape[0], probs.shape[-1]
    cost = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            ious = []
            for c in range(1, num_classes):
                p, y = probs[i, ..., c].astype(np.float64), labels[j] == c
                inter = p[y].sum()
                ious.append((inter + smooth) / (p.sum() + y.sum() - inter + smooth))
            cost[i, j] = 1.0 - np.mean(ious)
    return cost


def test_soft_iou_matches_numpy(rng):
    probs = _softmax(rng.normal(size=(3, 6, 5, 4)) * 2.0).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 6, 5)).astype(np.int32)
    cost = soft_iou(probs=probs, labels=labels)
    assert cost.shape == (3, 2) and cost.dtype == jnp.float32 and _finite(cost)
    np.testing.assert_allclose(cost, _soft_iou_reference(probs, labels), rtol=1e-5, atol=1e-6)


def test_soft_iou_perfect_prediction_costs_zero(rng):
    # Class 3 is absent from both: with smoothing 1 its IoU is (0 + 1) / (0 + 1) = 1.
    labels = rng.integers(0, 3, size=(2, 6, 5)).astype(np.int32)
    probs = np.eye(4, dtype=np.float32)[labels]
    cost = soft_iou(probs=probs, labels=labels)
    assert cost.dtype == jnp.float32 and _finite(cost)
    np.testing.assert_allclose(np.diag(np.asarray(cost)), 0.0, atol=1e-6)
    assert np.all(np.asarray(cost)[~np.eye(2, dtype=bool)] > 0.05)


def test_soft_iou_disjoint_masks_cost_near_one():
    labels = np.zeros((1, 6, 5), np.int32)
    labels[0, 3:] = 1  # 15 px of class 1 in the bottom half
    probs = np.zeros((1, 6, 5, 2), np.float32)
    probs[0, :3, :, 1] = 1.0  # 15 px predicted in the top half
    probs[0, 3:, :, 0] = 1.0
    cost = soft_iou(probs=probs, labels=labels)
    assert cost.dtype == jnp.float32 and _finite(cost)
    # IoU = (0 + 1) / (15 + 15 - 0 + 1).
    np.testing.assert_allclose(cost, [[1.0 - 1.0 / 31.0]], rtol=1e-6)


def test_cross_entropy_matches_numpy(rng):
    logits = (rng.normal(size=(3, 6, 5, 4)) * 3.0).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 6, 5)).astype(np.int32)
    cost = cross_entropy(logits=logits, labels=labels)
    assert cost.shape == (3, 2) and cost.dtype == jnp.float32 and _finite(cost)
    log_p = np.log(_softmax(logits.astype(np.float64)))
    ref = np.array(
        [
            [
                -np.mean(np.take_along_axis(log_p[i], labels[j][..., None], axis=-1))
                for j in range(2)
            ]
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(cost, ref, rtol=1e-5)


# ---------------------------------------------------------------------------------- plan


def _exact_capped_cost(cost, gamma, beta):
    """Exact optimum of the capped problem: POT's network simplex on the augmented matrix."""
    n = cost.shape[0]
    augmented = np.concatenate([cost, np.zeros((n, 1))], axis=1).astype(np.float64)
    a = np.full(n, gamma, np.float64)
    b = np.concatenate([beta, [n * gamma - beta.sum()]]).astype(np.float64)
    exact = pot.emd(a, b, augmented)
    return float(np.sum(exact * augmented))


# (epsilon, num_iters, epsilon_start): plain Sinkhorn needs ~1 / epsilon iterations at small
# epsilon; annealing from 0.1 gets the same accuracy in 200.
_ACCURATE = [(1e-3, 1000, None), (1e-3, 200, 0.1)]


@pytest.mark.parametrize("solver", _ACCURATE)
@pytest.mark.parametrize("gamma", [0.5, 1.0])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("n", [4, 8])
def test_capped_plan_matches_exact_solver(n, m, gamma, solver):
    epsilon, num_iters, epsilon_start = solver
    for seed in range(5):
        cost = np.random.default_rng(seed).uniform(size=(n, m)).astype(np.float32)
        beta = np.full(m, 1.0 / m, np.float32)
        plan = plan_fn(
            cost=cost,
            gamma=gamma,
            epsilon=epsilon,
            num_iters=num_iters,
            epsilon_start=epsilon_start,
        )
        assert plan.shape == (n, m) and plan.dtype == jnp.float32 and _finite(plan)
        plan = np.asarray(plan, np.float64)
        assert np.all(plan >= 0.0)
        assert np.all(plan.sum(axis=1) <= gamma + 1e-3)
        # The annotation side is the exact one, up to float32 rounding of C / epsilon.
        np.testing.assert_allclose(plan.sum(axis=0), beta, atol=2e-4)
        exact = _exact_capped_cost(cost, gamma, beta)
        assert np.sum(plan * cost) <= exact * 1.01 + 1e-7, seed


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_capped_plan_feasible_at_defaults(gamma, rng):
    cost = rng.uniform(size=(8, 3)).astype(np.float32)
    beta = np.array([0.5, 0.3, 0.2], np.float32)
    plan = np.asarray(plan_fn(cost=cost, gamma=gamma, beta=beta), np.float64)
    assert _finite(plan) and np.all(plan >= 0.0)
    assert np.all(plan.sum(axis=1) <= gamma + 1e-3)
    np.testing.assert_allclose(plan.sum(axis=0), beta, atol=1e-5)


def test_capped_plan_full_capacity_goes_to_cheapest(rng):
    n, m = 8, 3
    cost = rng.uniform(0.3, 1.0, size=(n, m)).astype(np.float32)
    cheapest = np.array([5, 1, 5])  # hypothesis 5 is cheapest for two annotations
    cost[cheapest, np.arange(m)] = 0.1
    plan = np.asarray(plan_fn(cost=cost, gamma=1.0))
    assert plan.dtype == np.float32 and _finite(plan)
    assert np.all(plan[cheapest, np.arange(m)] >= 0.99 / m)


def test_capped_plan_tight_capacity_is_balanced(rng):
    # N gamma = 1: no spare capacity, every hypothesis carries exactly gamma.
    cost = rng.uniform(size=(2, 3)).astype(np.float32)
    plan = np.asarray(plan_fn(cost=cost, gamma=0.5, **SOFT))
    assert _finite(plan)
    np.testing.assert_allclose(plan.sum(axis=1), [0.5, 0.5], atol=1e-3)
    np.testing.assert_allclose(plan.sum(axis=0), [1 / 3] * 3, atol=1e-5)


def test_capped_plan_rejects_too_little_capacity():
    with pytest.raises(ValueError, match="gamma"):
        capped_plan(cost=jnp.zeros((4, 2), jnp.float32), gamma=0.2)


# ---------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("zero_alpha", [False, True])
def test_relaxed_loss_identical_hypotheses(zero_alpha, rng):
    n, m = 4, 3
    row = rng.uniform(size=m).astype(np.float32)
    cost = np.tile(row, (n, 1))
    alpha = np.full(n, 1.0 / n, np.float32)
    if zero_alpha:
        alpha = np.array([0.0, 0.5, 0.25, 0.25], np.float32)
    (loss, aux), (g_cost, g_alpha) = relaxed_value_and_grads(cost, alpha, 0.5, soft=True)
    assert loss.dtype == jnp.float32 and _finite(loss, g_cost, g_alpha)
    # Identical hypotheses: the annotation mass spreads evenly, whatever the plan.
    np.testing.assert_allclose(aux["row_mass"], np.full(n, 1.0 / n), atol=1e-5)
    np.testing.assert_allclose(aux["transport"], row.mean(), rtol=1e-5)
    if not zero_alpha:
        np.testing.assert_allclose(loss, row.mean(), rtol=1e-5)


def test_relaxed_loss_kl_vanishes_at_plan_row_mass(rng):
    cost = rng.uniform(size=(6, 2)).astype(np.float32)
    plan = np.asarray(plan_fn(cost=cost, gamma=0.5), np.float64)
    alpha = (plan.sum(axis=1) / plan.sum()).astype(np.float32)
    (loss, aux), _ = relaxed_value_and_grads(cost, alpha, 0.5)
    assert _finite(loss)
    np.testing.assert_allclose(aux["kl"], 0.0, atol=1e-5)
    np.testing.assert_allclose(loss, np.sum(plan * cost), rtol=1e-5)


def test_relaxed_loss_gradients_are_plan_and_kl(rng):
    n, m, kl_weight = 6, 3, 10.0
    cost = rng.uniform(size=(n, m)).astype(np.float32)
    alpha = rng.dirichlet(np.ones(n)).astype(np.float32)
    (_, aux), (g_cost, g_alpha) = relaxed_value_and_grads(cost, alpha, 0.5, kl_weight=kl_weight)
    assert g_cost.dtype == jnp.float32 and _finite(g_cost, g_alpha)
    plan = plan_fn(cost=cost, gamma=0.5)
    np.testing.assert_allclose(g_cost, plan, atol=1e-6)
    np.testing.assert_allclose(aux["plan"], plan, atol=1e-6)
    # d KL(p || alpha) / d alpha = -p / alpha.
    p = np.asarray(plan).sum(axis=1)
    np.testing.assert_allclose(g_alpha, -kl_weight * p / alpha, rtol=1e-4)


@pytest.mark.parametrize("zero_alpha", [False, True])
def test_balanced_loss_marginals_and_gradients(zero_alpha, rng):
    n, m = 5, 3
    cost = rng.uniform(size=(n, m)).astype(np.float32)
    alpha = rng.dirichlet(np.ones(n)).astype(np.float32)
    if zero_alpha:
        alpha[2] = 0.0
        alpha /= alpha.sum()
    (loss, aux), (g_cost, g_alpha) = balanced_value_and_grads(cost, alpha)
    assert loss.dtype == jnp.float32 and _finite(loss, g_cost, g_alpha)
    plan = np.asarray(aux["plan"])
    np.testing.assert_allclose(plan.sum(axis=1), alpha, atol=1e-5)
    np.testing.assert_allclose(plan.sum(axis=0), np.full(m, 1.0 / m), atol=1e-3)
    np.testing.assert_allclose(loss, np.sum(plan * cost), rtol=1e-5)
    assert float(aux["kl"]) == 0.0


def test_balanced_loss_cost_gradient_is_plan(rng):
    # Hypotheses 0, 1 are clearly cheapest for annotation 0 and 2, 3 for annotation 1: the plan
    # is a stable vertex, so the motion of the plan adds almost nothing to d loss / d C = T.
    cost = rng.uniform(0.5, 1.0, size=(4, 2)).astype(np.float32)
    cost[[0, 1, 2, 3], [0, 0, 1, 1]] = rng.uniform(0.05, 0.15, size=4)
    alpha = np.full(4, 0.25, np.float32)
    (_, aux), (g_cost, _) = balanced_value_and_grads(cost, alpha)
    assert g_cost.dtype == jnp.float32 and _finite(g_cost)
    np.testing.assert_allclose(aux["plan"], [[0.25, 0], [0.25, 0], [0, 0.25], [0, 0.25]], atol=1e-4)
    np.testing.assert_allclose(g_cost, aux["plan"], atol=1e-4)


def test_balanced_loss_gradients_match_finite_differences(rng):
    # Guards the unrolled-Sinkhorn backward pass (ott 0.6 gets it wrong for a multi-block scan).
    n, m, h = 5, 3, 1e-3
    cost = rng.uniform(size=(n, m)).astype(np.float32)
    alpha = rng.dirichlet(np.ones(n) * 3.0).astype(np.float32)
    _, (g_cost, g_alpha) = balanced_value_and_grads(cost, alpha, epsilon=0.05)
    d_cost = rng.normal(size=(n, m)).astype(np.float32)
    d_alpha = rng.normal(size=n).astype(np.float32)
    d_alpha -= d_alpha.mean()  # stay on the simplex
    for grad, delta, args in [
        (g_cost, d_cost, lambda t: (cost + t * d_cost, alpha)),
        (g_alpha, d_alpha, lambda t: (cost, alpha + t * d_alpha)),
    ]:
        fd = (balanced_loss(*args(h)) - balanced_loss(*args(-h))) / (2 * h)
        np.testing.assert_allclose(np.sum(grad * delta), fd, rtol=2e-2, atol=2e-4)


def test_losses_vmap_under_jit_match_per_example(rng):
    b, n, m = 3, 4, 2
    costs = rng.uniform(size=(b, n, m)).astype(np.float32)
    alphas = rng.dirichlet(np.ones(n), size=b).astype(np.float32)

    def per_example(cost, alpha):
        relaxed = jax.value_and_grad(
            lambda c, a: relaxed_ot_loss(cost=c, alpha=a, gamma=0.5)[0], argnums=(0, 1)
        )(cost, alpha)
        balanced = jax.value_and_grad(
            lambda c, a: balanced_ot_loss(cost=c, alpha=a)[0], argnums=(0, 1)
        )(cost, alpha)
        return relaxed, balanced

    batched = jax.jit(jax.vmap(per_example))(costs, alphas)
    single = jax.jit(per_example)
    for i in range(b):
        expected = single(costs[i], alphas[i])
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(expected), strict=True):
            assert got.dtype == jnp.float32 and _finite(got)
            np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- gamma


def test_gamma_schedule_endpoints():
    schedule = jax.jit(functools.partial(gamma_schedule, ramp_start=100, ramp_steps=50))
    steps = jnp.array([0, 100, 125, 150, 10_000], jnp.int32)
    gammas = jax.vmap(schedule)(steps)
    assert gammas.dtype == jnp.float32 and _finite(gammas)
    np.testing.assert_allclose(gammas, [0.5, 0.5, 0.75, 1.0, 1.0], rtol=1e-6)
    jump = gamma_schedule(jnp.int32(7), ramp_start=7, ramp_steps=0)
    np.testing.assert_allclose([gamma_schedule(6, ramp_start=7, ramp_steps=0), jump], [0.5, 1.0])


def test_log_alpha_keeps_router_gradient_exact_for_dead_experts():
    # An expert whose weight fell below the 1e-8 floor must still be pulled back by the KL term:
    # d KL / d logits = lambda * (softmax(logits) - p) (row mass p under stop_gradient).
    cost = jnp.asarray([[0.2, 0.9], [0.9, 0.2], [0.5, 0.5]], jnp.float32)
    logits = jnp.asarray([0.0, -30.0, 0.0], jnp.float32)  # expert 1: alpha ~ 1e-13

    def loss(lg):
        value, aux = relaxed_ot_loss(
            cost=cost, log_alpha=jax.nn.log_softmax(lg), gamma=1.0, epsilon=1e-3, num_iters=1000
        )
        return value, aux["row_mass"]

    grad, p = jax.jit(jax.grad(loss, has_aux=True))(logits)
    expected = jax.nn.softmax(logits) - p
    np.testing.assert_allclose(grad, expected, atol=1e-4)
    assert float(grad[1]) < -0.3  # the dead expert's logit is pushed up
    with pytest.raises(ValueError, match="exactly one"):
        relaxed_ot_loss(cost=cost, gamma=1.0)

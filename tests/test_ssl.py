"""Self-supervised losses: loop references in float64, optax, POT, SwAV's Sinkhorn, optima."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import ot as pot
import pytest
import scipy.linalg

from osteo_jax.losses import balanced_assignment, nt_xent, supcon, swav, vicreg

nt_xent_fn = jax.jit(nt_xent, static_argnames=("temperature",))
supcon_fn = jax.jit(supcon, static_argnames=("temperature",))
vicreg_fn = jax.jit(vicreg)
swav_fn = jax.jit(swav, static_argnames=("epsilon", "num_iters", "assign_views"))
assign_fn = jax.jit(balanced_assignment, static_argnames=("epsilon", "num_iters"))


def _finite(*arrays):
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in arrays)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cosine_scores(rng, b, v, p, d=8):
    """``[B, V, P]`` cosine scores of random views against random prototypes (SwAV's input)."""
    views = _unit(rng.normal(size=(b, v, d)))
    prototypes = _unit(rng.normal(size=(p, d)))
    return np.einsum("bvd,pd->bvp", views, prototypes).astype(np.float32)


# ------------------------------------------------------------------------- references


def _supcon_reference(embeddings, labels, temperature):
    """Khosla et al. eq. 2, one anchor and one positive at a time."""
    b, v, _ = embeddings.shape
    z = _unit(embeddings.astype(np.float64)).reshape(b * v, -1)
    owner = np.repeat(np.asarray(labels), v)
    anchor_losses = np.zeros(b * v)
    for a in range(b * v):
        sims = [z[a] @ z[k] / temperature for k in range(b * v)]
        log_denom = np.log(sum(np.exp(sims[k]) for k in range(b * v) if k != a))
        positives = [p for p in range(b * v) if p != a and owner[p] == owner[a]]
        anchor_losses[a] = -np.mean([sims[p] - log_denom for p in positives])
    return anchor_losses.reshape(b, v).mean(axis=1)


def _vicreg_reference(embeddings, eps=1e-4):
    z = embeddings.astype(np.float64)
    b, v, d = z.shape
    pairs = list(itertools.combinations(range(v), 2))
    invariance = np.mean([np.mean((z[:, i] - z[:, j]) ** 2) for i, j in pairs])
    variance, covariance = 0.0, 0.0
    for k in range(v):
        std = np.sqrt(np.var(z[:, k], axis=0, ddof=1) + eps)
        variance += np.mean(np.maximum(0.0, 1.0 - std)) / v
        cov = np.cov(z[:, k], rowvar=False)
        off = sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
        covariance += off / d / v
    return invariance, variance, covariance


def _swav_sinkhorn(scores, epsilon, num_iters):
    """SwAV's ``distributed_sinkhorn`` on one device, in float64."""
    q = np.exp(scores.astype(np.float64) / epsilon).T  # [P, B]
    num_protos, batch = q.shape
    q /= q.sum()
    for _ in range(num_iters):
        q /= q.sum(axis=1, keepdims=True) * num_protos
        q /= q.sum(axis=0, keepdims=True) * batch
    return (q * batch).T


def _swav_reference(scores, temperature, epsilon, num_iters, assign_views):
    s = scores.astype(np.float64)
    b, v, _ = s.shape
    loss = np.zeros(b)
    for i in assign_views:
        codes = _swav_sinkhorn(s[:, i], epsilon, num_iters)
        for j in range(v):
            if j == i:
                continue
            logits = s[:, j] / temperature
            log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            loss += -np.sum(codes * log_p, axis=1) / ((v - 1) * len(assign_views))
    return loss


# ------------------------------------------------------------------------- NT-Xent, SupCon


@pytest.mark.parametrize("b, v", [(4, 2), (5, 3), (6, 4)])
def test_nt_xent_matches_numpy(b, v, rng):
    emb = rng.normal(size=(b, v, 8)).astype(np.float32)
    loss = nt_xent_fn(embeddings=emb)
    assert loss.shape == (b,) and loss.dtype == jnp.float32 and _finite(loss)
    np.testing.assert_allclose(loss, _supcon_reference(emb, np.arange(b), 0.2), rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_two_views_matches_optax(temperature, rng):
    b = 5
    emb = rng.normal(size=(b, 2, 8)).astype(np.float32)
    loss = nt_xent_fn(embeddings=emb, temperature=temperature)
    assert loss.shape == (b,) and loss.dtype == jnp.float32 and _finite(loss)
    # optax averages over the 2B anchors (one positive each): the mean of the per-example loss.
    flat, groups = jnp.asarray(emb.reshape(2 * b, 8)), jnp.repeat(jnp.arange(b), 2)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes bool and float32
        expected = optax.losses.ntxent(flat, groups, temperature=temperature)
    np.testing.assert_allclose(jnp.mean(loss), expected, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.2, 0.5])
@pytest.mark.parametrize("v", [2, 3])
def test_nt_xent_closed_form_at_optimum(v, temperature, rng):
    # Example b on axis e_b, all its views equal (any norm): every anchor has V - 1 positives at
    # cosine 1 and (B - 1) V negatives at cosine 0, so each positive term is
    #   -log(e^{1/t} / ((V - 1) e^{1/t} + (B - 1) V)) = log(V - 1 + (B - 1) V e^{-1/t}).
    b, d = 4, 8
    scale = rng.uniform(0.5, 3.0, size=(b, v, 1))
    emb = (np.eye(d)[:b, None, :] * scale).astype(np.float32)
    loss = nt_xent_fn(embeddings=emb, temperature=temperature)
    assert loss.shape == (b,) and loss.dtype == jnp.float32 and _finite(loss)
    optimum = np.log(v - 1 + (b - 1) * v * np.exp(-1.0 / temperature))
    np.testing.assert_allclose(loss, np.full(b, optimum), rtol=1e-5, atol=1e-6)
    for seed in range(5):
        random = np.random.default_rng(seed).normal(size=(b, v, d)).astype(np.float32)
        assert float(jnp.mean(nt_xent_fn(embeddings=random, temperature=temperature))) > optimum


@pytest.mark.parametrize("b, v", [(4, 2), (6, 3)])
def test_supcon_matches_numpy(b, v, rng):
    emb = rng.normal(size=(b, v, 8)).astype(np.float32)
    labels = np.array([0, 1, 0, 2, 1, 1][:b], np.int32)
    loss = supcon_fn(embeddings=emb, labels=labels)
    assert loss.shape == (b,) and loss.dtype == jnp.float32 and _finite(loss)
    np.testing.assert_allclose(loss, _supcon_reference(emb, labels, 0.2), rtol=1e-5)


def test_supcon_with_distinct_labels_is_nt_xent(rng):
    emb = rng.normal(size=(5, 3, 8)).astype(np.float32)
    labels = np.array([7, 3, 11, 0, 5], np.int32)
    loss = supcon_fn(embeddings=emb, labels=labels, temperature=0.3)
    assert loss.dtype == jnp.float32 and _finite(loss)
    np.testing.assert_allclose(loss, nt_xent_fn(embeddings=emb, temperature=0.3), rtol=1e-6)


# ------------------------------------------------------------------------- VICReg


@pytest.mark.parametrize("b, v", [(4, 2), (6, 3)])
def test_vicreg_matches_numpy(b, v, rng):
    emb = (rng.normal(size=(b, v, 8)) * 0.8).astype(np.float32)
    loss, terms = vicreg_fn(embeddings=emb)
    assert loss.shape == () and loss.dtype == jnp.float32 and _finite(loss)
    expected = _vicreg_reference(emb)
    for name, want in zip(("invariance", "variance", "covariance"), expected, strict=True):
        assert terms[name].shape == () and terms[name].dtype == jnp.float32
        np.testing.assert_allclose(terms[name], want, rtol=1e-5, atol=1e-7)
    weighted = 25.0 * expected[0] + 25.0 * expected[1] + expected[2]
    np.testing.assert_allclose(loss, weighted, rtol=1e-5)


def test_vicreg_zero_at_optimum():
    # Identical views whose dimensions are orthogonal, zero-mean Hadamard columns with std
    # sqrt(8 / 7) * 2 > 1: invariance, variance and covariance are all exactly zero.
    columns = 2.0 * scipy.linalg.hadamard(8)[:, 1:]
    emb = np.repeat(columns[:, None, :], 3, axis=1).astype(np.float32)
    loss, terms = vicreg_fn(embeddings=emb)
    assert loss.dtype == jnp.float32 and _finite(loss)
    for name in ("invariance", "variance", "covariance"):
        np.testing.assert_allclose(terms[name], 0.0, atol=1e-6)
    np.testing.assert_allclose(loss, 0.0, atol=1e-5)


def test_vicreg_variance_term_optima(rng):
    # Zero when every dimension's std is >= 1 (here 1.5), 1 - sqrt(eps) for collapsed views.
    z = rng.normal(size=(6, 2, 8))
    z = 1.5 * (z - z.mean(axis=0)) / z.std(axis=0, ddof=1)
    _, terms = vicreg_fn(embeddings=z.astype(np.float32))
    assert _finite(terms["variance"])
    np.testing.assert_allclose(terms["variance"], 0.0, atol=1e-7)
    collapsed = np.broadcast_to(rng.normal(size=(1, 1, 8)), (6, 2, 8)).astype(np.float32)
    _, terms = vicreg_fn(embeddings=collapsed)
    np.testing.assert_allclose(terms["variance"], 1.0 - np.sqrt(1e-4), rtol=1e-5)
    np.testing.assert_allclose(terms["covariance"], 0.0, atol=1e-7)


# ------------------------------------------------------------------------- SwAV


@pytest.mark.parametrize("epsilon", [0.05, 0.1])
def test_balanced_assignment_matches_pot(epsilon, rng):
    b, p = 6, 4
    scores = _cosine_scores(rng, b, 1, p)[:, 0]
    codes = assign_fn(scores=scores, epsilon=epsilon, num_iters=2000)
    assert codes.shape == (b, p) and codes.dtype == jnp.float32 and _finite(codes)
    a, marg = np.full(b, 1.0 / b), np.full(p, 1.0 / p)
    plan = pot.sinkhorn(a, marg, -scores.astype(np.float64), epsilon, stopThr=1e-12)
    np.testing.assert_allclose(codes, b * plan, atol=2e-5)
    np.testing.assert_allclose(np.sum(codes, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(codes, axis=0), b / p, atol=1e-4)


@pytest.mark.parametrize("num_iters", [1, 3])
def test_balanced_assignment_is_swav_sinkhorn(num_iters, rng):
    # Same iteration order as SwAV (prototype marginal, then example marginal): identical codes
    # after SwAV's few iterations, rows exactly normalised, columns only roughly balanced.
    b, p = 8, 5
    scores = _cosine_scores(rng, b, 1, p)[:, 0]
    codes = assign_fn(scores=scores, num_iters=num_iters)
    assert codes.shape == (b, p) and codes.dtype == jnp.float32 and _finite(codes)
    np.testing.assert_allclose(codes, _swav_sinkhorn(scores, 0.05, num_iters), atol=1e-5)
    assert np.all(np.asarray(codes) >= 0.0)
    np.testing.assert_allclose(np.sum(codes, axis=1), 1.0, atol=1e-6)
    # One Sinkhorn sweep already moves the prototype masses most of the way to B / P.
    imbalance = np.abs(np.sum(codes, axis=0) - b / p).max()
    raw = np.exp(scores / 0.05)
    raw_imbalance = np.abs(np.sum(raw / raw.sum(axis=1, keepdims=True), axis=0) - b / p).max()
    assert imbalance < raw_imbalance


def test_balanced_assignment_has_no_gradient(rng):
    scores = _cosine_scores(rng, 4, 1, 3)[:, 0]
    weights = rng.normal(size=(4, 3)).astype(np.float32)
    grad = jax.jit(jax.grad(lambda s: jnp.sum(balanced_assignment(scores=s) * weights)))(scores)
    assert grad.dtype == jnp.float32
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize(
    "b, v, assign_views", [(4, 2, (0, 1)), (5, 3, (0, 1)), (6, 4, (0, 1)), (5, 3, (1,))]
)
def test_swav_matches_numpy(b, v, assign_views, rng):
    scores = _cosine_scores(rng, b, v, 3)
    loss = swav_fn(scores=scores, assign_views=assign_views)
    assert loss.shape == (b,) and loss.dtype == jnp.float32 and _finite(loss)
    expected = _swav_reference(scores, 0.1, 0.05, 3, assign_views)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_swav_gradient_treats_codes_as_targets(rng):
    # Codes are constants: d mean_b loss / d S_bjp =
    #   sum_{i in A, i != j} (softmax(S_bj / t)_p - Q_ibp) / (t (V - 1) |A| B).
    b, v, p, t = 5, 3, 4, 0.1
    scores = _cosine_scores(rng, b, v, p)
    grad = jax.jit(jax.grad(lambda s: jnp.mean(swav(scores=s, temperature=t))))(scores)
    assert grad.shape == scores.shape and grad.dtype == jnp.float32 and _finite(grad)
    s = scores.astype(np.float64)
    probs = np.exp(s / t) / np.exp(s / t).sum(axis=-1, keepdims=True)
    expected = np.zeros_like(s)
    for i in (0, 1):
        codes = _swav_sinkhorn(s[:, i], 0.05, 3)
        for j in range(v):
            if j != i:
                expected[:, j] += (probs[:, j] - codes) / (t * (v - 1) * 2 * b)
    np.testing.assert_allclose(grad, expected, atol=1e-5)


# ------------------------------------------------------------------------- all losses


def _scalar_losses():
    labels = jnp.array([0, 1, 0, 1], jnp.int32)
    return {
        "nt_xent": lambda x: jnp.mean(nt_xent(embeddings=x)),
        "supcon": lambda x: jnp.mean(supcon(embeddings=x, labels=labels)),
        "vicreg": lambda x: vicreg(embeddings=x)[0],
        "swav": lambda x: jnp.mean(swav(scores=x)),
    }


@pytest.mark.parametrize("name", ["nt_xent", "supcon", "vicreg", "swav"])
def test_gradients_are_finite(name, rng):
    if name == "swav":
        x = _cosine_scores(rng, 4, 3, 5)
    else:
        x = rng.normal(size=(4, 3, 8)).astype(np.float32)
    value, grad = jax.jit(jax.value_and_grad(_scalar_losses()[name]))(x)
    assert value.shape == () and value.dtype == jnp.float32 and _finite(value)
    assert grad.shape == x.shape and grad.dtype == jnp.float32 and _finite(grad)
    assert float(jnp.max(jnp.abs(grad))) > 0.0


def test_contrastive_gradient_matches_finite_differences(rng):
    emb = rng.normal(size=(4, 3, 8)).astype(np.float64)
    loss = jax.jit(lambda x: jnp.mean(nt_xent(embeddings=x, temperature=0.5)))
    grad = np.asarray(jax.jit(jax.grad(loss))(emb.astype(np.float32)), np.float64)
    direction = rng.normal(size=emb.shape)
    h = 1e-2
    plus = float(loss((emb + h * direction).astype(np.float32)))
    minus = float(loss((emb - h * direction).astype(np.float32)))
    np.testing.assert_allclose(np.sum(grad * direction), (plus - minus) / (2 * h), rtol=2e-2)


def test_rejects_bad_inputs():
    emb = jnp.zeros((4, 1, 8), jnp.float32)
    with pytest.raises(ValueError, match="V >= 2"):
        nt_xent(embeddings=emb)
    with pytest.raises(ValueError, match="labels"):
        supcon(embeddings=jnp.ones((4, 2, 8), jnp.float32), labels=jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="B >= 2"):
        vicreg(embeddings=jnp.ones((1, 2, 8), jnp.float32))
    with pytest.raises(ValueError, match="assign_views"):
        swav(scores=jnp.ones((4, 2, 3), jnp.float32), assign_views=(0, 2))

"""Self-supervised losses for pretraining an encoder on multi-crop views of bone segments.

Every example comes with V views (``V >= 2``); the caller embeds them and concatenates the
global and local crops along the view axis, so every loss takes ``[B, V, D]`` embeddings (or
``[B, V, P]`` prototype scores for SwAV). Views of one example are positives of each other.

* :func:`nt_xent`: SimCLR (Chen et al. 2020), generalised to V views.
* :func:`supcon`: supervised contrastive loss (Khosla et al. 2020), positives share a label.
* :func:`vicreg`: variance-invariance-covariance regularisation (Bardes et al. 2022).
* :func:`swav`: swapped prediction of balanced prototype codes (Caron et al. 2020); the codes
  come from :func:`balanced_assignment` (ott-jax Sinkhorn).

The contrastive losses and SwAV return per-example values ``[B]`` (the step reduces them, e.g.
with a mean). VICReg returns a scalar: its variance and covariance terms are statistics of the
batch, which no example owns.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from osteo_jax.losses.sinkhorn import entropic_plan, sinkhorn_settings

__all__ = ["balanced_assignment", "nt_xent", "supcon", "swav", "vicreg"]

# Floor on squared norms in the L2 normalisation (an all-zero embedding stays zero, not NaN).
_NORM_FLOOR = 1e-12


def _check_views(name: str, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"{name} must be [B, V, D] with V >= 2 views; got shape {x.shape}.")
    return x.astype(jnp.float32)


def _l2_normalise(x: jax.Array) -> jax.Array:
    sq_norm = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq_norm, _NORM_FLOOR))


def _multi_positive_xent(z: jax.Array, groups: jax.Array, temperature: float) -> jax.Array:
    """Per-example SupCon ``L_out`` of ``[B, V, D]`` embeddings, positives share a group."""
    b, v, d = z.shape
    z = _l2_normalise(z.reshape(b * v, d))
    logits = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / temperature
    is_self = jnp.eye(b * v, dtype=bool)
    log_prob = jax.nn.log_softmax(jnp.where(is_self, -jnp.inf, logits), axis=1)
    view_groups = jnp.repeat(groups, v)
    positive = (view_groups[:, None] == view_groups[None, :]) & ~is_self
    # `where`, not a product: log_prob is -inf on the diagonal.
    total = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1)
    per_anchor = -total / jnp.sum(positive, axis=1).astype(jnp.float32)
    return jnp.mean(per_anchor.reshape(b, v), axis=1)


def nt_xent(*, embeddings: jax.Array, temperature: float = 0.2) -> jax.Array:
    """NT-Xent (SimCLR) loss with V views per example; its views are the positives.

    The ``N = B V`` views are L2-normalised (``z``) and compared by cosine similarity
    ``s_ak = z_a . z_k / tau``. For anchor view ``a`` of example ``b(a)``, ``P(a)`` is the set
    of the other ``V - 1`` views of the same example and::

        l_a = -1 / |P(a)| sum_{p in P(a)} log( exp(s_ap) / sum_{k != a} exp(s_ak) )
        loss_b = 1 / V sum_{a : b(a) = b} l_a

    (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML
    2020). All the other positives stay in each denominator (SupCon's ``L_out`` form). With
    ``V = 2`` the mean over the batch equals ``optax.losses.ntxent`` on the ``[2B, D]`` views;
    for ``V > 2`` optax keeps only the current positive in the denominator, so they differ.
    With more than two views the loss is bounded below by ``log(V - 1)``, not 0.

    Args:
      embeddings: ``[B, V, D]`` embeddings of V >= 2 views of B examples (unnormalised).
      temperature: softmax temperature ``tau``.

    Returns:
      ``[B]`` float32 per-example loss.
    """
    z = _check_views("embeddings", embeddings)
    return _multi_positive_xent(z, jnp.arange(z.shape[0]), temperature)


def supcon(*, embeddings: jax.Array, labels: jax.Array, temperature: float = 0.2) -> jax.Array:
    """Supervised contrastive loss (``L_out``): positives are all views sharing the label.

    Same as :func:`nt_xent` with ``P(a)`` the views of every example with the label of ``a``
    (all of its own other views included), the anchor itself excluded::

        l_a = -1 / |P(a)| sum_{p in P(a)} log( exp(s_ap) / sum_{k != a} exp(s_ak) )
        loss_b = 1 / V sum_{a : b(a) = b} l_a

    (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, eq. 2; the reference code's
    extra factor ``tau / 0.07`` is left out). With all labels distinct it is :func:`nt_xent`.

    Args:
      embeddings: ``[B, V, D]`` embeddings of V >= 2 views of B examples (unnormalised).
      labels: ``[B]`` integer class labels.
      temperature: softmax temperature ``tau``.

    Returns:
      ``[B]`` float32 per-example loss.
    """
    z = _check_views("embeddings", embeddings)
    labels = jnp.asarray(labels)
    if labels.shape != z.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be [B] integers with B = {z.shape[0]}; got {labels.shape} {labels.dtype}."
        )
    return _multi_positive_xent(z, labels, temperature)


def vicreg(
    *,
    embeddings: jax.Array,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """VICReg loss of V views: invariance, variance hinge and covariance penalty.

    With ``Z_v`` the ``[B, D]`` embeddings of view ``v``, ``Zbar_v`` its batch-centred copy,
    ``C_v = Zbar_v^T Zbar_v / (B - 1)`` its covariance and ``std_vd = sqrt(C_v,dd + eps)``::

        inv = mean_{i < j} 1 / (B D) ||Z_i - Z_j||_F^2
        var = mean_v 1 / D sum_d max(0, 1 - std_vd)
        cov = mean_v 1 / D sum_{d != e} C_v,de^2
        loss = sim_weight inv + var_weight var + cov_weight cov

    (Bardes et al., "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
    Learning", ICLR 2022). Variance and covariance are averaged over views here, so at
    ``V = 2`` ``var`` is the reference code's, whose ``cov`` is the sum over both views (twice
    this one: pass ``cov_weight=2`` to match it); the paper sums both over the views.

    The loss is one scalar for the batch, not per example: the variance and covariance terms are
    statistics over the batch axis (a collapse is only visible across examples), so they cannot
    be split among examples, and the weights balance the three terms as batch quantities. Under
    data parallelism the batch axis must be the global batch (a sharded ``jit`` does this).

    Args:
      embeddings: ``[B, V, D]`` embeddings of V >= 2 views of B >= 2 examples.
      sim_weight: weight ``lambda`` of the invariance term.
      var_weight: weight ``mu`` of the variance term.
      cov_weight: weight ``nu`` of the covariance term.
      eps: added to the variance inside the square root (keeps its gradient finite).

    Returns:
      ``(loss, terms)``: the float32 scalar loss and a dict of the unweighted scalar terms
      ``invariance``, ``variance`` and ``covariance``.
    """
    z = _check_views("embeddings", embeddings)
    b, v, d = z.shape
    if b < 2:
        raise ValueError(f"vicreg needs B >= 2 examples for batch statistics; got B = {b}.")
    first, second = np.triu_indices(v, k=1)
    invariance = jnp.mean(jnp.square(z[:, first] - z[:, second]))
    centred = z - jnp.mean(z, axis=0, keepdims=True)
    cov = jnp.einsum("bvd,bve->vde", centred, centred, precision=jax.lax.Precision.HIGHEST)
    cov = cov / (b - 1)
    std = jnp.sqrt(jnp.diagonal(cov, axis1=1, axis2=2) + eps)
    variance = jnp.mean(jax.nn.relu(1.0 - std))
    off_diagonal = jnp.where(jnp.eye(d, dtype=bool)[None], 0.0, cov)
    covariance = jnp.sum(jnp.square(off_diagonal)) / (v * d)
    loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    terms = {"invariance": invariance, "variance": variance, "covariance": covariance}
    return loss, terms


def balanced_assignment(
    *,
    scores: jax.Array,
    epsilon: float = 0.05,
    num_iters: int = 3,
) -> jax.Array:
    """Balanced soft assignment of examples to prototypes (the codes of SwAV).

    Entropic optimal transport with cost ``-S`` and uniform marginals (Caron et al., "Unsupervised
    Learning of Visual Features by Contrasting Cluster Assignments", NeurIPS 2020)::

        T* = argmax_T  sum_bp T_bp S_bp + epsilon H(T)   s.t.  T 1_P = 1_B / B,  T^T 1_B = 1_P / P
        Q = B T*   (each row sums to 1)

    so every prototype receives the same share of the batch, which keeps the codes from
    collapsing onto one prototype. It is ott-jax Sinkhorn in the log domain with an absolute
    ``epsilon`` and exactly ``num_iters`` iterations from zero potentials; each iteration first
    matches the prototype marginal, then the example marginal, as SwAV's ``distributed_sinkhorn``
    does, so the result is the same as SwAV's for the same number of iterations (SwAV uses 3,
    which does not converge: the column sums of ``Q`` are only roughly ``B / P``, while the row
    sums are exact because the example marginal is matched last). Rows are renormalised to sum
    to 1 (``Q = T / (T 1_P)``, which is ``B T`` up to rounding).

    The codes are targets: inputs and output are under ``stop_gradient``.

    Args:
      scores: ``[B, P]`` scores of B examples against P prototypes (cosine similarities in SwAV).
      epsilon: absolute entropic regularisation, in the units of ``scores`` (SwAV: 0.05).
      num_iters: number of Sinkhorn iterations (SwAV: 3).

    Returns:
      ``[B, P]`` float32 codes ``Q``, non-negative with rows summing to 1 (without gradient).
    """
    settings = sinkhorn_settings(epsilon, num_iters, None)
    scores = jax.lax.stop_gradient(jnp.asarray(scores, jnp.float32))
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, P]; got shape {scores.shape}.")
    n, k = scores.shape
    a = jnp.full((n,), 1.0 / n, jnp.float32)
    b = jnp.full((k,), 1.0 / k, jnp.float32)
    plan = entropic_plan(-scores, a, b, settings)
    codes = plan / jnp.sum(plan, axis=1, keepdims=True)
    return jax.lax.stop_gradient(codes)


def swav(
    *,
    scores: jax.Array,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    num_iters: int = 3,
    assign_views: Sequence[int] = (0, 1),
) -> jax.Array:
    """SwAV swapped-prediction loss: each view predicts the balanced codes of another view.

    ``S_bvp`` is the cosine score of view ``v`` of example ``b`` against prototype ``p`` (both
    L2-normalised). For each view ``i`` in ``assign_views`` the codes ``Q_i = [B, P]`` are the
    balanced Sinkhorn assignment of ``S_:i:`` (:func:`balanced_assignment`,
    under ``stop_gradient``) and every other view predicts them::

        loss_b = mean_{i in assign_views} 1 / (V - 1) sum_{j != i}
                 -sum_p Q_i,bp log softmax_p(S_bjp / tau)

    (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", NeurIPS 2020). Codes are computed on the global crops (``assign_views``) only;
    the local crops only predict. When the batch is not much larger than ``P`` the equal-share
    constraint forces arbitrary assignments; SwAV then appends a queue of past scores before the
    assignment, which is left to the caller.

    Args:
      scores: ``[B, V, P]`` cosine scores of V >= 2 views against P prototypes.
      temperature: softmax temperature ``tau`` of the predictions.
      epsilon: entropic regularisation of the codes (absolute, in units of the scores).
      num_iters: Sinkhorn iterations for the codes (SwAV: 3).
      assign_views: distinct view indices whose codes are targets (SwAV: the two global crops).

    Returns:
      ``[B]`` float32 per-example loss.
    """
    scores = _check_views("scores", scores)
    v = scores.shape[1]
    views = tuple(int(i) for i in assign_views)
    if not views or len(set(views)) != len(views) or not all(0 <= i < v for i in views):
        raise ValueError(
            f"assign_views must be distinct view indices in [0, {v}); got {assign_views}."
        )
    log_p = jax.nn.log_softmax(scores / temperature, axis=-1)
    losses = []
    for i in views:
        codes = balanced_assignment(scores=scores[:, i], epsilon=epsilon, num_iters=num_iters)
        xent = -jnp.sum(codes[:, None, :] * log_p, axis=-1)  # [B, V]
        losses.append((jnp.sum(xent, axis=1) - xent[:, i]) / (v - 1))
    return jnp.mean(jnp.stack(losses, axis=1), axis=1)

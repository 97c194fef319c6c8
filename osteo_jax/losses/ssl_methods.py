"""The self-supervised methods the pretraining step knows: a registry ``name -> SSLMethod``.

A method turns the projected embeddings of every view of a batch (and, for methods with a
prototype layer, their prototype scores) into a scalar loss. The step
(:func:`osteo_jax.train.steps.ssl_step`) embeds and projects the views, applies the prototype
layer when the method asks for one, and calls the method's objective; it knows no method by
name. Adding a method touches two files: its entry here (with its loss, here or in
``losses/ssl.py``) and its name in ``config.choices.SSL_METHODS`` (checked by
``SSLConfig.__post_init__``; a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from osteo_jax.config import SSLConfig
from osteo_jax.losses.ssl import nt_xent, supcon, swav, vicreg

__all__ = ["SSL_METHODS", "SSLMethod", "SSLObjective", "ssl_method", "ssl_objective"]

# (embeddings [B, V, E], *, labels [B], scores [B, V, P] | None, n_global) -> (loss, terms)
SSLObjective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class SSLMethod:
    """One self-supervised method.

    Attributes:
      build: ``SSLConfig -> objective``; the objective takes ``embeddings`` ``[B, V, E]``
        (global views first along V) and the keywords ``labels`` ``[B]``, ``scores``
        (``[B, V, P]`` prototype scores, or None) and ``n_global`` (number of global views),
        and returns ``(scalar loss, dict of scalar terms)``.
      prototypes: the method needs a prototype layer (``ssl_head["prototypes"]``, P =
        ``SSLConfig.num_prototypes``) on the projected embeddings.
      uses_labels: the method reads the class labels (supervised contrastive).
    """

    build: Callable[[SSLConfig], SSLObjective]
    prototypes: bool = False
    uses_labels: bool = False


def _simclr(cfg: SSLConfig) -> SSLObjective:
    def objective(embeddings, **_):
        return jnp.mean(nt_xent(embeddings=embeddings, temperature=cfg.temperature)), {}

    return objective


def _supcon(cfg: SSLConfig) -> SSLObjective:
    def objective(embeddings, *, labels, **_):
        loss = supcon(embeddings=embeddings, labels=labels, temperature=cfg.temperature)
        return jnp.mean(loss), {}

    return objective


def _vicreg(cfg: SSLConfig) -> SSLObjective:
    del cfg  # VICReg's weights are the paper's defaults

    def objective(embeddings, **_):
        loss, terms = vicreg(embeddings=embeddings)
        return loss, {f"vicreg_{k}": v for k, v in terms.items()}

    return objective


def _swav(cfg: SSLConfig) -> SSLObjective:
    def objective(embeddings, *, scores, n_global, **_):
        del embeddings  # SwAV reads only the prototype scores
        loss = swav(
            scores=scores,
            temperature=cfg.swav_temperature,
            epsilon=cfg.swav_epsilon,
            num_iters=cfg.swav_iters,
            assign_views=tuple(range(n_global)),
        )
        return jnp.mean(loss), {}

    return objective


SSL_METHODS: dict[str, SSLMethod] = {
    "simclr": SSLMethod(_simclr),
    "supcon": SSLMethod(_supcon, uses_labels=True),
    "vicreg": SSLMethod(_vicreg),
    "swav": SSLMethod(_swav, prototypes=True),
}


def ssl_method(name: str) -> SSLMethod:
    """The registered method ``name`` (``ValueError`` listing the known ones otherwise)."""
    if name not in SSL_METHODS:
        raise ValueError(f"unknown SSL method {name!r}; known: {tuple(SSL_METHODS)}")
    return SSL_METHODS[name]


def ssl_objective(cfg: SSLConfig) -> SSLObjective:
    """The objective of ``cfg.method`` with ``cfg``'s hyper-parameters bound."""
    return ssl_method(cfg.method).build(cfg)

"""Train state: the parameter pytree, per-stage optimizer states, the step count.

``params`` is a dict keyed by model part (``"segmenter"``, ``"backbone"``, ``"ssl_head"``,
``"classifier"``); each stage's state holds the parts it trains or reads (segmenter training
``"segmenter"``; pretraining ``"backbone"`` and ``"ssl_head"``; the classifier ``"backbone"``,
taken from pretraining, and ``"classifier"``), so a stage starts from the earlier stage's
weights with no conversion and its checkpoint holds all of them. Optimizer states live under
the name of the step that uses them (``opt_state["seg"]``, ``["ssl"]``, ``["cls"]``). There is
no PRNG key in the state: each step derives its key as ``fold_in(base_key, step)``, which keeps
resumption deterministic. The model factories and optimizers of each stage are here too.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from osteo_jax.config import (
    BackboneConfig,
    ClsConfig,
    CropConfig,
    SegConfig,
    SegTrainConfig,
    SSLConfig,
)
from osteo_jax.data.augment import CropPolicy
from osteo_jax.data.photometric import PhotometricPolicy
from osteo_jax.losses.ssl_methods import ssl_method
from osteo_jax.models.backbones import compute_dtype, make_backbone
from osteo_jax.models.heads import LinearClassifier, Projector, Prototypes
from osteo_jax.models.mixture import Segmenter

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step.

    Attributes:
      step: scalar int32, optimizer steps taken.
      params: ``{"segmenter": ..., ...}`` the one parameter pytree.
      opt_state: ``{"seg": optax state, ...}`` one entry per train step kind.
    """

    step: jnp.ndarray
    params: dict[str, PyTree]
    opt_state: dict[str, PyTree]


def make_segmenter(cfg: SegConfig, mode: str | None = None) -> Segmenter:
    """The Flax segmenter module described by ``cfg`` (``mode`` overrides ``cfg.mode``)."""
    return Segmenter(
        features=tuple(cfg.features),
        num_classes=cfg.num_classes,
        num_experts=1 if cfg.form == "unet" else cfg.num_experts,
        num_samples=1 if cfg.form == "unet" else cfg.num_samples,
        latent_dim=cfg.latent_dim,
        form=cfg.form,
        mode=mode or cfg.mode,
        head_hidden=cfg.head_hidden,
        router_hidden=cfg.router_hidden,
        dtype=compute_dtype(cfg.dtype),
    )


def init_segmenter_params(cfg: SegConfig, rng: jax.Array) -> PyTree:
    """Initial segmenter parameters.

    Always initialised through the ``scan`` execution, so the same seed gives the same
    parameters on CPU, GPU and TPU (``vmap`` and ``scan`` share the layout but split their
    init keys differently).
    """
    model = make_segmenter(cfg, mode="scan")
    x = jnp.zeros((1, cfg.image_size, cfg.image_size, 1), jnp.float32)
    p_rng, s_rng = jax.random.split(rng)
    return jax.jit(model.init)({"params": p_rng, "sample": s_rng}, x)["params"]


def seg_schedule(cfg: SegTrainConfig, total_steps: int) -> optax.Schedule:
    """The segmenter's learning rate by step: linear warm-up, cosine decay to 2 % of the peak."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * 0.02,
    )


def seg_optimizer(cfg: SegTrainConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW on :func:`seg_schedule`, gradients clipped at global norm 1."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(seg_schedule(cfg, total_steps), weight_decay=cfg.weight_decay),
    )


def create_seg_state(
    cfg: SegTrainConfig, rng: jax.Array, tx: optax.GradientTransformation
) -> TrainState:
    """A fresh state holding the segmenter's parameters and its optimizer state."""
    params = {"segmenter": init_segmenter_params(cfg.model, rng)}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={"seg": tx.init(params["segmenter"])},
    )


# ------------------------------------------------------------------ SSL and classification


def make_projector(cfg: SSLConfig) -> Projector:
    """The projector / expander MLP of ``cfg``."""
    return Projector(
        hidden=cfg.projector_hidden, out=cfg.projector_out, num_layers=cfg.projector_layers
    )


def make_prototypes(cfg: SSLConfig) -> Prototypes | None:
    """The prototype layer of ``cfg.method`` (SwAV), or None for a method without one."""
    return Prototypes(cfg.num_prototypes) if ssl_method(cfg.method).prototypes else None


def crop_policy(cfg: CropConfig) -> CropPolicy:
    """The static :class:`~osteo_jax.data.augment.CropPolicy` of a :class:`CropConfig`."""
    return CropPolicy(
        global_size=cfg.global_size,
        local_size=cfg.local_size,
        n_global=cfg.n_global,
        n_local=cfg.n_local,
        global_scale=tuple(cfg.global_scale),
        local_scale=tuple(cfg.local_scale),
        min_bone_fraction=cfg.min_bone_fraction,
        custom=cfg.custom,
        photometric=(
            PhotometricPolicy()
            if cfg.intensity_jitter
            else PhotometricPolicy(brightness=0.0, contrast=0.0, gamma=0.0)
        ),
    )


def init_backbone_params(cfg: BackboneConfig, rng: jax.Array, size: int) -> PyTree:
    """Initial backbone parameters for ``size x size`` single-channel inputs."""
    x = jnp.zeros((1, size, size, 1), jnp.float32)
    return jax.jit(make_backbone(cfg).init)(rng, x)["params"]


def init_ssl_params(cfg: SSLConfig, rng: jax.Array) -> dict[str, PyTree]:
    """``{"backbone": ..., "ssl_head": {"projector": ..., ["prototypes": ...]}}``."""
    k_bb, k_proj, k_proto = jax.random.split(rng, 3)
    dim = make_backbone(cfg.backbone).features_dim
    head = {
        "projector": make_projector(cfg).init(k_proj, jnp.zeros((1, dim), jnp.float32))["params"]
    }
    protos = make_prototypes(cfg)
    if protos is not None:
        z = jnp.zeros((1, cfg.projector_out), jnp.float32)
        head["prototypes"] = protos.init(k_proto, z)["params"]
    return {
        "backbone": init_backbone_params(cfg.backbone, k_bb, cfg.crops.global_size),
        "ssl_head": head,
    }


def init_classifier_params(features_dim: int, rng: jax.Array) -> PyTree:
    """Initial linear-head parameters for ``features_dim`` inputs."""
    return LinearClassifier(2).init(rng, jnp.zeros((1, features_dim), jnp.float32))["params"]


def _decay_mask(params: PyTree) -> PyTree:
    """True for weight matrices / kernels; biases and norm scales (1-D) are not decayed."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def ssl_schedule(cfg: SSLConfig, total_steps: int) -> optax.Schedule:
    """Pretraining's learning rate by step: warm-up, cosine decay to 0, as SimCLR.

    The peak rate is ``learning_rate * batch_size / 256``.
    """
    peak = cfg.learning_rate * cfg.batch_size / 256
    steps_per_epoch = max(total_steps / max(cfg.epochs, 1), 1.0)
    warmup = int(min(cfg.warmup_epochs * steps_per_epoch, max(total_steps - 1, 0)))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.0,
    )


def ssl_optimizer(cfg: SSLConfig, total_steps: int) -> optax.GradientTransformation:
    """LARS (You et al. 2017; optax) on :func:`ssl_schedule`.

    Weight decay and the trust ratio skip biases and norm parameters.
    """
    return optax.lars(
        ssl_schedule(cfg, total_steps),
        weight_decay=cfg.weight_decay,
        weight_decay_mask=_decay_mask,
        trust_ratio_mask=_decay_mask,
        momentum=0.9,
    )


def cls_trainable(cfg: ClsConfig) -> tuple[str, ...]:
    """The parameter subtrees a classifier step trains: the head, plus the backbone to fine-tune."""
    return ("backbone", "classifier") if cfg.mode == "finetune" else ("classifier",)


def cls_schedule(cfg: ClsConfig, total_steps: int, scale: float = 1.0) -> optax.Schedule:
    """The classifier's learning rate by step (times ``scale``): warm-up over 5 %, cosine."""
    warmup = min(max(total_steps // 20, 1), max(total_steps - 1, 0))
    peak = cfg.learning_rate * scale
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak * 0.01,
    )


def cls_optimizer(cfg: ClsConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW on :func:`cls_schedule` for the dict of :func:`cls_trainable` subtrees.

    The classifier gets ``learning_rate``; when fine-tuning the backbone gets
    ``backbone_lr_scale`` of it.
    """
    scales = {"backbone": cfg.backbone_lr_scale, "classifier": 1.0}
    names = cls_trainable(cfg)
    return optax.multi_transform(
        {
            k: optax.adamw(
                cls_schedule(cfg, total_steps, scales[k]),
                weight_decay=cfg.weight_decay,
                mask=_decay_mask,
            )
            for k in names
        },
        {k: k for k in names},
    )

"""Registries (SSL methods, backbones) and the configs' checks of their allowed values."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteo_jax.cli import main
from osteo_jax.config import (
    BackboneConfig,
    ClsConfig,
    ExperimentConfig,
    OTConfig,
    SegConfig,
    SegmentConfig,
    SegTrainConfig,
    SSLConfig,
    choices,
    from_dict,
)
from osteo_jax.losses.ssl import nt_xent, supcon, swav, vicreg
from osteo_jax.losses.ssl_methods import SSL_METHODS, ssl_method, ssl_objective
from osteo_jax.models.backbones import BACKBONES, make_backbone


def test_registries_match_the_configs_allowed_values():
    assert tuple(sorted(SSL_METHODS)) == tuple(sorted(choices.SSL_METHODS))
    assert tuple(sorted(BACKBONES)) == tuple(sorted(choices.BACKBONE_ARCHS))
    with pytest.raises(ValueError, match="unknown SSL method 'byol'; known: "):
        ssl_method("byol")


def test_every_registered_backbone_builds_and_reports_its_width():
    for arch, depth in (("resnet", 18), ("vgg", 11)):
        cfg = BackboneConfig(arch=arch, depth=depth, width=4)
        model = make_backbone(cfg)
        x = jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)
        params = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only: no compile
        feats, _ = jax.eval_shape(model.apply, params, x)
        assert feats.shape == (2, model.features_dim)


@pytest.mark.parametrize("method", sorted(choices.SSL_METHODS))
def test_ssl_objectives_are_the_losses_with_the_configs_hyper_parameters(method):
    cfg = SSLConfig(method=method, temperature=0.3, swav_temperature=0.2, swav_iters=2)
    k1, k2 = jax.random.split(jax.random.key(1))
    emb = jax.random.normal(k1, (6, 4, 8))
    scores = jnp.tanh(jax.random.normal(k2, (6, 4, 5)))
    labels = jnp.array([0, 1, 0, 1, 1, 0])
    loss, terms = ssl_objective(cfg)(emb, labels=labels, scores=scores, n_global=2)
    if method == "simclr":
        want = jnp.mean(nt_xent(embeddings=emb, temperature=0.3))
    elif method == "supcon":
        want = jnp.mean(supcon(embeddings=emb, labels=labels, temperature=0.3))
    elif method == "vicreg":
        want, parts = vicreg(embeddings=emb)
        assert set(terms) == {f"vicreg_{k}" for k in parts}
    else:
        want = jnp.mean(
            swav(scores=scores, temperature=0.2, epsilon=0.05, num_iters=2, assign_views=(0, 1))
        )
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    assert ssl_method(method).prototypes == (method == "swav")
    assert ssl_method(method).uses_labels == (method == "supcon")


BAD = [
    (SegConfig, "form", "transformer"),
    (SegConfig, "mode", "pmap"),
    (SegConfig, "dtype", "float16"),
    (OTConfig, "cost", "dice"),
    (SegmentConfig, "frame", "rotated"),
    (SegmentConfig, "roi", "knee"),
    (SegmentConfig, "background", "blur"),
    (BackboneConfig, "arch", "vit"),
    (BackboneConfig, "stem", "large"),
    (BackboneConfig, "norm", "batch"),
    (SSLConfig, "method", "byol"),
    (ClsConfig, "mode", "zero-shot"),
    (ClsConfig, "class_weight", "inverse"),
]


@pytest.mark.parametrize(("cls", "field", "value"), BAD)
def test_a_bad_choice_fails_when_the_config_is_built(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field} must be one of .*{value!r}"):
        cls(**{field: value})


def test_numeric_checks():
    with pytest.raises(ValueError, match=r"SegConfig\.num_experts must be > 0, got 0"):
        SegConfig(num_experts=0)
    with pytest.raises(ValueError, match=r"ClsConfig\.folds must be 0 or >= 2, got 1"):
        ClsConfig(folds=1)
    with pytest.raises(ValueError, match=r"ClsConfig\.split must be three"):
        ClsConfig(split=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="the ResNet backbone supports only 'group'"):
        BackboneConfig(norm="none")
    BackboneConfig(arch="vgg", norm="none")  # VGG may go without normalisation


def test_a_bad_value_in_a_json_config_is_named_before_anything_runs(tmp_path, capsys):
    data = dataclasses.asdict(ExperimentConfig())
    data["protocol"]["ssl"]["method"] = "simclear"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"SSLConfig\.method must be one of"):
        from_dict(ExperimentConfig, data)
    out = tmp_path / "out"
    assert main(["run", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "SSLConfig.method must be one of" in err and "simclear" in err
    assert not out.exists()


def test_a_run_folder_written_before_the_seg_to_model_rename_still_loads():
    old = dataclasses.asdict(SegTrainConfig(model=SegConfig(num_experts=2)))
    old["seg"] = old.pop("model")  # config.json of a train-seg run written before the rename
    assert from_dict(SegTrainConfig, old).model.num_experts == 2
    with pytest.raises(ValueError, match=r"unknown SegTrainConfig fields: \['sgm'\]"):
        from_dict(SegTrainConfig, {**old, "sgm": 1})

"""VGG backbones: hand-counted and torchvision parameter counts, shapes, dtypes, the config switch.

Shapes and counts of the full-size models come from ``jax.eval_shape`` (tracing only); two tiny
models are compiled and run.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteo_jax.config import BackboneConfig
from osteo_jax.models import VGG, make_vgg
from osteo_jax.train.state import make_backbone


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _shapes(model, size=32, channels=1):
    x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)


# Tiny VGG, stages (1, 2), width 4, one input channel.
#   GroupNorm (bias-free convs): 3*3*1*4 + 2*4  +  3*3*4*8 + 2*8  +  3*3*8*8 + 2*8 = 940
#   no norm (convs with biases): 3*3*1*4 + 4    +  3*3*4*8 + 8    +  3*3*8*8 + 8   = 920
@pytest.mark.parametrize("norm, expected", [("group", 940), ("none", 920)])
def test_tiny_parameter_count_by_hand(norm, expected):
    model = VGG(stage_sizes=(1, 2), width=4, norm=norm, norm_groups=4)
    (_, _), variables = _shapes(model)
    assert _count(variables["params"]) == expected
    assert model.features_dim == 8


# torchvision vgg{11,16}().features (3 input channels): 9,220,480 and 14,714,688 parameters;
# with one input channel the first conv loses 3*3*2*64 = 1,152.
@pytest.mark.parametrize("depth, expected", [(11, 9_220_480 - 1_152), (16, 14_714_688 - 1_152)])
def test_torchvision_parameter_counts(depth, expected):
    (_, _), variables = _shapes(make_vgg(depth, width=64, norm="none"), size=64)
    assert _count(variables["params"]) == expected


def test_parameter_paths_and_stage_shapes():
    (features, aux), variables = _shapes(make_vgg(16, width=8), size=24)
    assert sorted(variables["params"]) == [f"stage{i}" for i in range(1, 6)]
    assert sorted(variables["params"]["stage3"]) == [
        "conv1",
        "conv2",
        "conv3",
        "norm1",
        "norm2",
        "norm3",
    ]
    # "SAME" pools: 24 -> 12 -> 6 -> 3 -> 2 -> 1 (a 24 px crop never reaches zero pixels).
    assert [a.shape for a in aux["stages"]] == [
        (2, 12, 12, 8),
        (2, 6, 6, 16),
        (2, 3, 3, 32),
        (2, 2, 2, 64),
        (2, 1, 1, 64),
    ]
    assert features.shape == (2, 64) and features.dtype == jnp.float32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_backbone_config_builds_a_runnable_vgg(dtype):
    cfg = BackboneConfig(arch="vgg", depth=11, width=4, dtype=dtype)
    model = make_backbone(cfg)
    assert isinstance(model, VGG) and model.features_dim == 32
    x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1)), jnp.float32)
    (features, aux), _ = jax.jit(model.init_with_output)(jax.random.key(0, impl="rbg"), x)
    assert features.shape == (2, 32) and features.dtype == jnp.float32
    assert aux["stages"][0].dtype == jnp.dtype(dtype)
    assert bool(jnp.all(jnp.isfinite(features)))
    assert cfg.label == "VGG-11 (width 4)"


def test_bad_backbone_configs_raise():
    with pytest.raises(ValueError, match="arch"):
        make_backbone(BackboneConfig(arch="vit"))
    with pytest.raises(ValueError, match="norm"):
        make_backbone(BackboneConfig(norm="none"))  # the ResNet needs its GroupNorm
    with pytest.raises(ValueError, match="VGG depth"):
        make_backbone(BackboneConfig(arch="vgg", depth=18))
    with pytest.raises(ValueError, match="norm must be"):
        _shapes(VGG(stage_sizes=(1,), width=4, norm="batch"))


def test_resnet_default_unchanged():
    assert BackboneConfig().label == "ResNet-18 (width 16)"
    assert type(make_backbone(BackboneConfig())).__name__ == "ResNet"

"""ResNet backbones and heads: torchvision parameter counts, shapes, dtypes, zero-init, heads.

Compilation dominates on CPU, so shapes and dtypes of every depth x stem come from
``jax.eval_shape`` (tracing only), a few configurations are compiled and run, and keys use the
``rbg`` PRNG, whose initialisers compile several times faster than threefry's.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteo_jax.models import (
    BasicBlock,
    BottleneckBlock,
    LinearClassifier,
    Projector,
    Prototypes,
    ResNet,
    make_resnet,
    resnet18,
    resnet34,
    resnet50,
)

WIDTH = 8
SIZE = 32
FACTORIES = {18: resnet18, 34: resnet34, 50: resnet50}


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).random((2, SIZE, SIZE, 1)), jnp.float32)


@pytest.fixture(scope="module")
def r18(x):
    """ResNet-18, small stem, width 8: ``(model, params, features, aux)`` from one compile."""
    model = resnet18(width=WIDTH, stem="small")
    (features, aux), variables = jax.jit(model.init_with_output)(_key(0), x)
    return model, variables["params"], features, aux


# torchvision resnet{18,34,50}() totals minus the 1000-way fc (512 * 1000 + 1000 for 18/34,
# 2048 * 1000 + 1000 for 50). BatchNorm's running statistics are buffers, not parameters.
@pytest.mark.parametrize(
    "depth, expected",
    [(18, 11_689_512 - 513_000), (34, 21_797_672 - 513_000), (50, 25_557_032 - 2_049_000)],
)
def test_parameter_count_matches_torchvision(depth, expected):
    model = make_resnet(depth, width=64, stem="imagenet", norm_groups=32)
    image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(model.init, _key(0), image)
    assert list(variables) == ["params"]  # no batch_stats: one pure params pytree
    assert _count(variables["params"]) == expected
    assert model.features_dim == (2048 if depth == 50 else 512)


@pytest.mark.parametrize("depth", [18, 34, 50])
@pytest.mark.parametrize("stem", ["small", "imagenet"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(depth, stem, dtype, x):
    model = FACTORIES[depth](width=WIDTH, stem=stem, dtype=dtype)
    (features, aux), variables = jax.eval_shape(model.init_with_output, _key(0), x)
    expansion = 4 if depth == 50 else 1
    assert model.features_dim == WIDTH * 8 * expansion
    assert features.shape == (2, model.features_dim) and features.dtype == jnp.float32
    r = 1 if stem == "small" else 4
    assert len(aux["stages"]) == 4
    for i, stage in enumerate(aux["stages"]):
        side = SIZE // (r * 2**i)
        assert stage.shape == (2, side, side, WIDTH * 2**i * expansion)
        assert stage.dtype == dtype
    # Mixed precision computes in bfloat16 but keeps float32 parameters.
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_resnet18_forward(r18):
    _, _, features, aux = r18
    assert features.shape == (2, WIDTH * 8) and features.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(features))) and float(jnp.std(features)) > 0.0
    np.testing.assert_allclose(features, aux["stages"][-1].mean(axis=(1, 2)), rtol=1e-5)


def test_resnet50_imagenet_stem_forward(x):
    # Random parameters from numpy: compiling ResNet-50's initialisers would cost ~3x the forward.
    model = resnet50(width=WIDTH, stem="imagenet")
    shapes = jax.eval_shape(model.init, _key(1), x)
    rng = np.random.default_rng(1)
    variables = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape) / math.prod(s.shape[:-1]) ** 0.5, s.dtype),
        shapes,
    )
    features, aux = jax.jit(model.apply)(variables, x)
    assert features.shape == (2, WIDTH * 32) and features.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(features))) and float(jnp.std(features)) > 0.0
    assert aux["stages"][-1].shape == (2, 1, 1, WIDTH * 32)


def test_bfloat16_forward_close_to_float32(r18, x):
    model, params, features, _ = r18
    apply = jax.jit(model.clone(dtype=jnp.bfloat16).apply)
    features_bf16, aux = apply({"params": params}, x)
    assert all(stage.dtype == jnp.bfloat16 for stage in aux["stages"])
    assert features_bf16.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(features_bf16)))
    np.testing.assert_allclose(features_bf16, features, rtol=0.1, atol=0.1)


def test_parameter_paths_are_stable(r18):
    _, params, _, _ = r18
    assert set(params) == {"stem_conv", "stem_norm", "stage1", "stage2", "stage3", "stage4"}
    assert set(params["stage1"]) == {"block1", "block2"}
    assert set(params["stage1"]["block1"]) == {"conv1", "norm1", "conv2", "norm2"}
    proj = params["stage2"]["block1"]["shortcut"]
    assert set(proj) == {"proj_conv", "proj_norm"} and set(proj["proj_conv"]) == {"kernel"}
    assert params["stem_conv"]["kernel"].shape == (3, 3, 1, WIDTH)


@pytest.mark.parametrize("block_cls", [BasicBlock, BottleneckBlock])
@pytest.mark.parametrize("strides", [1, 2])
def test_zero_init_block_is_its_shortcut(block_cls, strides):
    """At init the residual branch outputs 0, so the block is relu(shortcut(x))."""
    # Bottleneck: 8 -> 32 channels, so stride 1 keeps the identity shortcut in both blocks.
    filters, channels = (16, 16) if block_cls is BasicBlock else (8, 32)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, channels)), jnp.float32)
    block = block_cls(filters=filters, strides=strides)
    out, variables = jax.jit(block.init_with_output)(_key(2), x)
    params = variables["params"]
    if "shortcut" in params:  # projection: strided 1 x 1 conv + GroupNorm
        sc = params["shortcut"]
        s = nn.Conv(channels, (1, 1), strides, use_bias=False).apply({"params": sc["proj_conv"]}, x)
        s = nn.GroupNorm(num_groups=8).apply({"params": sc["proj_norm"]}, s)
    else:
        assert strides == 1
        s = x
    assert out.shape == s.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, jax.nn.relu(s), rtol=1e-5, atol=1e-5)
    # With unit scales the residual branch is active.
    ones = jax.tree.map(jnp.ones_like, variables)
    assert not np.allclose(block.apply(ones, x), jax.nn.relu(s), atol=1e-3)


def test_zero_init_inside_model(r18):
    """Stage 1, block 2 has an identity shortcut: at init it returns its (ReLU'd) input."""
    model, params, _, _ = r18
    block_params = params["stage1"]["block2"]
    assert not np.any(block_params["norm2"]["scale"])
    assert np.all(block_params["norm1"]["scale"] == 1.0)
    h = jnp.asarray(np.random.default_rng(1).random((2, 8, 8, WIDTH)), jnp.float32)
    out = BasicBlock(WIDTH, 1, model.norm_groups).apply({"params": block_params}, h)
    np.testing.assert_array_equal(out, h)
    off = jax.eval_shape(model.clone(zero_init_residual=False).init, _key(0), h)
    assert jax.tree.structure(off) == jax.tree.structure({"params": params})


def test_gradients_finite(r18, x):
    model, params, _, _ = r18

    def loss(p):
        features, _ = model.apply({"params": p}, x)
        return jnp.mean(jnp.square(features))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert value.dtype == jnp.float32 and bool(jnp.isfinite(value))
    leaves = jax.tree.leaves(grads)
    assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # The zero-initialised scales still receive gradient, so the residual branches can grow.
    assert float(jnp.sum(jnp.abs(grads["stage1"]["block2"]["norm2"]["scale"]))) > 0.0


def test_invalid_settings_raise(x):
    with pytest.raises(ValueError, match="depth"):
        make_resnet(26)
    for kw, match in (
        ({"block": "wide"}, "block"),
        ({"stem": "cifar"}, "stem"),
        ({"width": 12, "norm_groups": 8}, "norm_groups"),
    ):
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(ResNet(**kw).init, _key(0), x)


def test_prototypes_are_cosine_scores():
    rng = np.random.default_rng(3)
    z = jnp.asarray(rng.normal(size=(5, 6)) * 3.0, jnp.float32)
    head = Prototypes(num_prototypes=7)
    scores, variables = head.init_with_output(_key(3), z)
    assert scores.shape == (5, 7) and scores.dtype == jnp.float32
    assert bool(jnp.all(jnp.abs(scores) <= 1.0 + 1e-6))
    c = np.asarray(variables["params"]["kernel"], np.float64)
    zn = np.asarray(z, np.float64)
    expected = (zn / np.linalg.norm(zn, axis=1, keepdims=True)) @ (
        c / np.linalg.norm(c, axis=0, keepdims=True)
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    # Invariant to the scale of the input and of each prototype.
    scaled = {"params": {"kernel": variables["params"]["kernel"] * jnp.arange(1.0, 8.0)[None]}}
    np.testing.assert_allclose(head.apply(scaled, 0.1 * z), scores, rtol=1e-5, atol=1e-6)
    # A prototype equal to an input scores exactly 1.
    aligned = {"params": {"kernel": z[:1].T * jnp.ones((1, 7), jnp.float32)}}
    np.testing.assert_allclose(head.apply(aligned, z[:1]), np.ones((1, 7)), atol=1e-6)


@pytest.mark.parametrize("num_layers, norm", [(1, True), (2, True), (3, True), (3, False)])
def test_projector_depth(num_layers, norm):
    z = jnp.asarray(np.random.default_rng(4).normal(size=(4, 6)), jnp.float32)
    head = Projector(hidden=8, out=5, num_layers=num_layers, norm=norm)
    out, variables = head.init_with_output(_key(4), z)
    assert out.shape == (4, 5) and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    params = variables["params"]
    assert sorted(params) == sorted(
        [f"fc{i}" for i in range(num_layers)] + [f"norm{i}" for i in range(num_layers - 1) if norm]
    )
    assert params[f"fc{num_layers - 1}"]["kernel"].shape == ((8 if num_layers > 1 else 6), 5)
    assert "bias" in params[f"fc{num_layers - 1}"]
    # The last layer is linear: outputs of both signs.
    assert bool(jnp.any(out < 0)) and bool(jnp.any(out > 0))


def test_linear_classifier(r18):
    _, _, features, _ = r18
    logits, variables = LinearClassifier().init_with_output(_key(5), features)
    assert logits.shape == (2, 2) and logits.dtype == jnp.float32
    w, b = variables["params"]["fc"]["kernel"], variables["params"]["fc"]["bias"]
    np.testing.assert_allclose(logits, features @ w + b[None], rtol=1e-5, atol=1e-6)

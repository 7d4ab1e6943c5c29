"""Tests for jaxcheck.init: the variance-scaling formulas, dtypes, errors, MLPs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import init

# The std of a unit normal truncated to [-2, 2].
TRUNCATED_STD = 0.87962566103423978


def lecun_std(fan_in, fan_out):
    return 1 / math.sqrt(fan_in)


def xavier_std(fan_in, fan_out):
    return math.sqrt(2 / (fan_in + fan_out))


def he_std(fan_in, fan_out):
    return math.sqrt(2 / fan_in)


SCHEMES = [
    pytest.param(init.lecun_normal, lecun_std, "truncated_normal", id="lecun_normal"),
    pytest.param(init.lecun_uniform, lecun_std, "uniform", id="lecun_uniform"),
    pytest.param(
        init.xavier_normal, xavier_std, "truncated_normal", id="xavier_normal"
    ),
    pytest.param(init.xavier_uniform, xavier_std, "uniform", id="xavier_uniform"),
    pytest.param(init.he_normal, he_std, "truncated_normal", id="he_normal"),
    pytest.param(init.he_uniform, he_std, "uniform", id="he_uniform"),
]

# (shape, fan_in, fan_out): a dense matrix and a 3x3 convolution kernel, whose
# receptive field multiplies both fans as in jax.nn.initializers.
SHAPES = [
    pytest.param((800, 400), 800, 400, id="dense"),
    pytest.param((3, 3, 64, 128), 9 * 64, 9 * 128, id="conv3x3"),
]


def check_distribution(w, std, distribution):
    """Empirical std within 2%, mean ~0 and the support of the distribution."""
    w = np.asarray(w, dtype=np.float64).ravel()
    assert abs(w.std() / std - 1) < 0.02
    assert abs(w.mean()) < 0.01 * std
    if distribution == "uniform":
        bound = math.sqrt(3) * std
        assert np.abs(w).max() <= bound * (1 + 1e-6)
        assert np.abs(w).max() > 0.99 * bound
    elif distribution == "truncated_normal":
        bound = 2 * std / TRUNCATED_STD
        assert np.abs(w).max() <= bound * (1 + 1e-6)
        assert np.abs(w).max() > 0.99 * bound
    else:  # a normal reaches beyond 3 std in a sample this large
        assert np.abs(w).max() > 3.5 * std


@pytest.mark.parametrize(("shape", "fan_in", "fan_out"), SHAPES)
@pytest.mark.parametrize(("scheme", "formula", "distribution"), SCHEMES)
def test_scheme_std_matches_formula(
    scheme, formula, distribution, shape, fan_in, fan_out
):
    w = scheme(jax.random.key(0), shape, jnp.float32)
    assert w.shape == shape
    check_distribution(w, formula(fan_in, fan_out), distribution)


@pytest.mark.parametrize("distribution", ["truncated_normal", "normal", "uniform"])
@pytest.mark.parametrize("k", [0.5, 0.9, 1.1, 2.0])
def test_scaled_std_is_k_over_sqrt_fan_in(k, distribution):
    w = init.scaled(k, distribution)(jax.random.key(1), (800, 400), jnp.float32)
    check_distribution(w, k / math.sqrt(800), distribution)


def test_scaled_one_is_lecun_and_sqrt_two_is_he():
    key, shape = jax.random.key(2), (800, 400)
    np.testing.assert_allclose(
        init.scaled(1.0)(key, shape), init.lecun_normal(key, shape), rtol=1e-6
    )
    np.testing.assert_allclose(
        init.scaled(math.sqrt(2))(key, shape), init.he_normal(key, shape), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (init.lecun_normal, jax.nn.initializers.lecun_normal()),
        (init.xavier_uniform, jax.nn.initializers.glorot_uniform()),
        (init.he_normal, jax.nn.initializers.he_normal()),
    ],
)
def test_same_draws_as_jax(ours, theirs):
    key = jax.random.key(3)
    np.testing.assert_array_equal(ours(key, (800, 400)), theirs(key, (800, 400)))


@pytest.mark.parametrize(
    ("scheme", "dtype", "shape"),
    [
        (init.lecun_normal, jnp.bfloat16, (800, 400)),
        (init.xavier_uniform, jnp.float16, (4, 5, 6)),
    ],
)
def test_dtype_and_shape_respected(scheme, dtype, shape):
    w = scheme(jax.random.key(0), shape, dtype)
    assert w.shape == shape
    assert w.dtype == dtype


def test_float64_inside_scoped_x64():
    with jax.enable_x64(True):
        w = init.he_normal(jax.random.key(0), (32, 32), jnp.float64)
    assert w.dtype == jnp.float64


def test_default_dtype_and_jit():
    w = init.xavier_normal(jax.random.key(0), (800, 400))
    assert w.dtype == jnp.float32
    jitted = jax.jit(init.he_uniform, static_argnums=1)(jax.random.key(0), (4, 5, 6))
    assert jitted.dtype == jnp.float32


def test_same_key_same_weights():
    a = init.lecun_uniform(jax.random.key(7), (800, 400))
    b = init.lecun_uniform(jax.random.key(7), (800, 400))
    c = init.lecun_uniform(jax.random.key(8), (800, 400))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("shape", [(5,), ()])
@pytest.mark.parametrize("scheme", [init.he_normal, init.scaled(0.5)])
def test_shape_without_fan_is_a_clear_error(scheme, shape):
    with pytest.raises(ValueError, match=r"cannot compute fan_in for shape") as info:
        scheme(jax.random.key(0), shape)
    message = str(info.value)
    assert str(tuple(shape)) in message  # what was received
    assert "at least 2 (fan_in, fan_out)" in message  # what was expected
    assert "jax.nn.initializers.zeros" in message  # what to do


@pytest.mark.parametrize("k", [0, -1.0, math.nan, math.inf, "big"])
def test_scaled_rejects_bad_gain(k):
    with pytest.raises(ValueError, match=r"gain k must be a positive finite number"):
        init.scaled(k)


def test_scaled_rejects_unknown_distribution():
    with pytest.raises(ValueError, match=r"unknown distribution 'cauchy'.*'uniform'"):
        init.scaled(1.0, "cauchy")


def test_names():
    assert init.he_normal.__name__ == "he_normal"
    assert init.scaled(0.5).__name__ == "scaled(0.5)"
    assert init.scaled(2, "uniform").__name__ == "scaled(2)[uniform]"
    assert "He et al." in init.he_normal.__doc__
    assert "0.8796" in init.lecun_normal.__doc__


# ---------------------------------------------------------------- mlp_params


@pytest.mark.parametrize("name", sorted(init.SCHEMES))
def test_mlp_params_accepts_every_scheme_name(name):
    params = init.mlp_params(jax.random.key(0), [800, 400, 4], init=name)
    assert [(p["w"].shape, p["b"].shape) for p in params] == [
        ((800, 400), (400,)),
        ((400, 4), (4,)),
    ]
    formula = {"lecun": lecun_std, "xavier": xavier_std, "he": he_std}[
        name.split("_")[0]
    ]
    assert abs(float(params[0]["w"].std()) / formula(800, 400) - 1) < 0.02
    np.testing.assert_array_equal(params[0]["b"], 0.0)


def test_mlp_params_accepts_an_initializer_and_bias_init():
    params = init.mlp_params(
        jax.random.key(0),
        [800, 400, 4],
        init=init.scaled(0.5),
        bias_init=jax.nn.initializers.constant(0.1),
        dtype=jnp.bfloat16,
    )
    std = float(params[0]["w"].astype(jnp.float32).std())
    assert abs(std * math.sqrt(800) - 0.5) < 0.02
    assert params[0]["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(params[1]["b"].astype(jnp.float32), 0.1, rtol=1e-2)


def test_mlp_params_is_a_pure_function_of_the_key():
    a = init.mlp_params(jax.random.key(4), [4, 8, 8, 2])
    b = init.mlp_params(jax.random.key(4), [4, 8, 8, 2])
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # every layer gets its own key
    c = init.mlp_params(jax.random.key(4), [8, 8, 8])
    assert not np.array_equal(c[0]["w"], c[1]["w"])


def test_mlp_params_unknown_scheme_lists_the_valid_names():
    with pytest.raises(
        ValueError, match=r"Unknown initialisation scheme 'glorot'"
    ) as info:
        init.mlp_params(jax.random.key(0), [2, 2], init="glorot")
    for name in init.SCHEMES:
        assert name in str(info.value)


def test_mlp_params_rejects_a_non_callable_init():
    with pytest.raises(TypeError, match=r"scheme name or an initialiser callable"):
        init.mlp_params(jax.random.key(0), [2, 2], init=0.5)


@pytest.mark.parametrize("sizes", [[3], [], [3, 0], [3, -2], [3, 2.5]])
def test_mlp_params_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match=r"at least two positive integer widths"):
        init.mlp_params(jax.random.key(0), sizes)


def test_mlp_params_accepts_numpy_integer_sizes():
    params = init.mlp_params(jax.random.key(0), np.array([4, 8]))
    assert params[0]["w"].shape == (4, 8)

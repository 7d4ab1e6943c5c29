"""Tests for jaxcheck.nn: dropout, activations, dense layers and the MLP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import init, nn

N = 1_000_000  # entries in the large arrays used for rate statistics


def keep_fraction(y):
    return float(jnp.mean(y != 0))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keeps_about_one_minus_rate(rate):
    y = nn.dropout(jnp.ones(N), rate, jax.random.key(0))
    # binomial standard error is at most 5e-4 here; allow 6 of them
    assert abs(keep_fraction(y) - (1 - rate)) < 3e-3


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_scales_kept_entries(rate):
    x = jax.random.normal(jax.random.key(1), (1000,)) + 3.0
    y = nn.dropout(x, rate, jax.random.key(2))
    kept = np.asarray(y != 0)
    assert 0 < kept.sum() < x.size
    np.testing.assert_allclose(
        np.asarray(y)[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(y)[~kept], 0.0)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_dropout_preserves_the_mean(rate):
    x = jax.random.uniform(jax.random.key(3), (N,), minval=1.0, maxval=2.0)
    y = nn.dropout(x, rate, jax.random.key(4))
    assert abs(float(y.mean()) / float(x.mean()) - 1) < 5e-3


@pytest.mark.parametrize(
    ("rate", "key"),
    [
        pytest.param(0.5, None, id="no-key"),
        pytest.param(0.0, jax.random.key(0), id="rate-0"),
        pytest.param(0, jax.random.key(0), id="int-rate-0"),
        pytest.param(0.0, None, id="both"),
    ],
)
def test_dropout_identity_cases(rate, key):
    x = jnp.arange(6.0)
    assert nn.dropout(x, rate, key) is x


def test_same_key_same_mask_different_key_different_mask():
    x = jnp.ones(1000)
    a = nn.dropout(x, 0.5, jax.random.key(5))
    b = nn.dropout(x, 0.5, jax.random.key(5))
    c = nn.dropout(x, 0.5, jax.random.key(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # independent masks agree on about half of the entries
    assert abs(float(jnp.mean((a != 0) == (c != 0))) - 0.5) < 0.08


def test_dropout_under_jit_matches_eager():
    x = jnp.linspace(1.0, 2.0, 1000)
    key = jax.random.key(7)
    eager = nn.dropout(x, 0.3, key)
    static_rate = jax.jit(nn.dropout, static_argnums=1)(x, 0.3, key)
    traced_rate = jax.jit(nn.dropout)(x, 0.3, key)
    np.testing.assert_array_equal(static_rate, eager)
    np.testing.assert_allclose(traced_rate, eager, rtol=1e-6)


def test_dropout_with_traced_rate_and_no_key_is_identity():
    x = jnp.arange(4.0)
    np.testing.assert_array_equal(jax.jit(nn.dropout)(x, 0.5, None), x)


def test_dropout_under_vmap_over_keys():
    x = jnp.ones(1000)
    keys = jax.random.split(jax.random.key(8), 4)
    batched = jax.vmap(nn.dropout, in_axes=(None, None, 0))(x, 0.5, keys)
    assert batched.shape == (4, 1000)
    for i in range(4):
        np.testing.assert_array_equal(batched[i], nn.dropout(x, 0.5, keys[i]))
    assert not np.array_equal(batched[0], batched[1])


def test_dropout_under_vmap_over_data():
    xs = jnp.ones((3, 200))
    ys = jax.vmap(lambda x: nn.dropout(x, 0.25, jax.random.key(9)))(xs)
    assert ys.shape == (3, 200)
    np.testing.assert_array_equal(ys[0], ys[2])  # one key, one mask
    np.testing.assert_allclose(np.unique(np.asarray(ys)), [0.0, 1 / 0.75], rtol=1e-6)


def test_dropout_gradient_is_the_mask_scaled():
    x = jnp.ones(1000)
    key = jax.random.key(10)
    grad = jax.grad(lambda x: jnp.sum(nn.dropout(x, 0.5, key)))(x)
    np.testing.assert_array_equal(grad, nn.dropout(x, 0.5, key))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dropout_keeps_dtype(dtype):
    y = nn.dropout(jnp.ones(8, dtype), 0.5, jax.random.key(0))
    assert y.dtype == dtype


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_dropout_rate_outside_unit_interval_is_a_clear_error(rate):
    with pytest.raises(ValueError) as info:
        nn.dropout(jnp.ones(3), rate, jax.random.key(0))
    assert str(info.value) == (
        f"dropout rate must be in [0, 1); received {rate!r}. A rate of 1 would drop "
        "everything; use rate=0 or key=None to switch dropout off."
    )


def test_dropout_rate_is_checked_even_without_key():
    with pytest.raises(ValueError, match=r"received 2"):
        nn.dropout(jnp.ones(3), 2, None)


# ------------------------------------------------------- activations and layers


@pytest.mark.parametrize(
    ("name", "x", "expected"),
    [
        ("linear", [-2.0, 3.0], [-2.0, 3.0]),
        ("tanh", [0.0, 100.0], [0.0, 1.0]),
        ("relu", [-2.0, 3.0], [0.0, 3.0]),
        ("sigmoid", [0.0], [0.5]),
        ("gelu", [0.0], [0.0]),
    ],
)
def test_activations(name, x, expected):
    np.testing.assert_allclose(
        nn.get_activation(name)(jnp.array(x)), expected, atol=1e-6
    )


def test_get_activation_passes_callables_and_rejects_unknown_names():
    assert nn.get_activation(jnp.sin) is jnp.sin
    with pytest.raises(
        ValueError, match=r"Unknown activation 'swish'; expected one of \['gelu'"
    ):
        nn.get_activation("swish")


def test_dense():
    params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([0.5, -0.5])}
    np.testing.assert_allclose(nn.dense(params, jnp.array([1.0, 1.0])), [4.5, 5.5])


def test_mlp_matches_a_hand_written_forward_pass():
    params = init.mlp_params(jax.random.key(0), [4, 8, 8, 2])
    x = jax.random.normal(jax.random.key(1), (7, 4))
    h = jnp.tanh(x @ params[0]["w"] + params[0]["b"])
    h = jnp.tanh(h @ params[1]["w"] + params[1]["b"])
    expected = h @ params[2]["w"] + params[2]["b"]
    np.testing.assert_allclose(nn.mlp(params, x), expected, rtol=1e-5, atol=1e-6)


def test_mlp_dropout_is_deterministic_given_the_key():
    params = init.mlp_params(jax.random.key(0), [4, 8, 8, 2])
    x = jnp.ones((4, 4))
    key = jax.random.key(1)
    a = nn.mlp(params, x, dropout_rate=0.5, key=key)
    b = jax.jit(lambda p, x, k: nn.mlp(p, x, dropout_rate=0.5, key=k))(params, x, key)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert not np.allclose(a, nn.mlp(params, x))
    np.testing.assert_array_equal(
        nn.mlp(params, x, dropout_rate=0.5), nn.mlp(params, x)
    )


def test_softmax_cross_entropy():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([0, 0])
    expected = np.mean([np.log1p(np.exp(-2.0)), 1 + np.log1p(np.exp(-1.0))])
    np.testing.assert_allclose(
        nn.softmax_cross_entropy(logits, labels), expected, rtol=1e-6
    )

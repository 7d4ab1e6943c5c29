"""Losses with correct gradients, and losses with gradients broken on purpose."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck import nn
from jaxcheck.init import mlp_params


@dataclasses.dataclass(frozen=True)
class Case:
    fn: Callable[..., Any]
    params: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def _normal(seed: int, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


# -- correct --------------------------------------------------------------------


def mlp_tanh() -> Case:
    params = mlp_params(jax.random.key(0), [6, 10, 4])
    x, y = _normal(1, (8, 6)), jnp.arange(8) % 4

    def loss(p, x, y):
        return nn.softmax_cross_entropy(nn.mlp(p, x, activation="tanh"), y)

    return Case(loss, params, (x, y))


def mlp_relu() -> Case:
    params = mlp_params(jax.random.key(2), [5, 12, 3], init="he_normal")
    x, y = _normal(3, (6, 5)), jnp.arange(6) % 3

    def loss(p, x, y):
        return nn.softmax_cross_entropy(nn.mlp(p, x, activation="relu"), y)

    return Case(loss, params, (x, y))


def mlp_dropout() -> Case:
    params = mlp_params(jax.random.key(4), [5, 16, 16, 3])
    x, y = _normal(5, (8, 5)), jnp.arange(8) % 3

    def loss(p, x, y, key):
        logits = nn.mlp(p, x, activation="tanh", dropout_rate=0.3, key=key)
        return nn.softmax_cross_entropy(logits, y)

    return Case(loss, params, (x, y), {"key": jax.random.key(6)})


def convolution() -> Case:
    params = {"kernel": _normal(7, (4, 3, 3, 3), 0.3), "bias": _normal(8, (4,), 0.1)}
    x = _normal(9, (2, 3, 6, 6))

    def loss(p, x):
        y = jax.lax.conv_general_dilated(
            x, p["kernel"], window_strides=(1, 1), padding="SAME"
        )
        y = jnp.tanh(y + p["bias"][None, :, None, None])
        return jnp.mean(y**2) + jnp.mean(y[:, :, ::2, 1::2])

    return Case(loss, params, (x,))


def layer_norm() -> Case:
    params = {"gamma": 1.0 + _normal(10, (16,), 0.1), "beta": _normal(11, (16,), 0.1)}
    x = _normal(12, (4, 16))
    target = _normal(13, (4, 16))

    def loss(p, x):
        mu = x.mean(-1, keepdims=True)
        var = x.var(-1, keepdims=True)
        y = (x - mu) / jnp.sqrt(var + 1e-5) * p["gamma"] + p["beta"]
        return jnp.mean((y - target) ** 2)

    return Case(loss, params, (x,))


def attention() -> Case:
    d = 8
    params = {name: _normal(14 + i, (d, d), d**-0.5) for i, name in enumerate("qkv")}
    x = _normal(20, (5, d))

    def loss(p, x):
        q, k, v = x @ p["q"], x @ p["k"], x @ p["v"]
        weights = jax.nn.softmax(q @ k.T / jnp.sqrt(d), axis=-1)
        return jnp.sum(jnp.tanh(weights @ v) * x)

    return Case(loss, params, (x,))


def linear_algebra() -> Case:
    n = 5
    a = _normal(21, (n, n), 0.3)
    params = {"a": a, "b": _normal(22, (n,))}

    def loss(p):
        spd = p["a"] @ p["a"].T + n * jnp.eye(n)
        chol = jnp.linalg.cholesky(spd)
        logdet = 2 * jnp.sum(jnp.log(jnp.diag(chol)))
        x = jnp.linalg.solve(spd, p["b"])
        top = jnp.linalg.eigh(spd)[0][-1]
        return logdet + x @ p["b"] + 0.1 * top + jnp.trace(jnp.linalg.inv(spd))

    return Case(loss, params, ())


def nested_pytree() -> Case:
    params = {
        "encoder": [
            {"w": _normal(23, (3, 4), 0.5), "b": jnp.zeros(4)},
            (_normal(24, (4,), 0.5), jnp.float32(0.7)),
        ],
        "scale": 1.5,
        "decoder": {"w": _normal(25, (4, 2), 0.5)},
    }
    x = _normal(26, (5, 3))

    def loss(p, x):
        enc0, (shift, gain) = p["encoder"]
        h = jnp.tanh(x @ enc0["w"] + enc0["b"]) * gain + shift
        return p["scale"] * jnp.sum(jnp.sin(h @ p["decoder"]["w"]))

    return Case(loss, params, (x,))


def with_aux() -> Case:
    base = mlp_tanh()

    def loss(p, x, y):
        logits = nn.mlp(p, x, activation="tanh")
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return nn.softmax_cross_entropy(logits, y), {"accuracy": accuracy}

    return Case(loss, base.params, base.args, {"has_aux": True})


CORRECT = {
    "mlp_tanh": mlp_tanh,
    "mlp_relu": mlp_relu,
    "mlp_dropout": mlp_dropout,
    "convolution": convolution,
    "layer_norm": layer_norm,
    "attention": attention,
    "linear_algebra": linear_algebra,
    "nested_pytree": nested_pytree,
    "has_aux": with_aux,
}


# -- wrong on purpose -------------------------------------------------------------


def corrupt_gradient(
    loss: Callable[..., Any], corrupt: Callable[[Any], Any]
) -> Callable[..., Any]:
    """``loss`` with a custom_vjp whose parameter gradient passes through ``corrupt``."""

    @jax.custom_vjp
    def wrapped(params, *args):
        return loss(params, *args)

    def forward(params, *args):
        return jax.vjp(loss, params, *args)

    def backward(vjp, cotangent):
        grads = vjp(cotangent)
        return (corrupt(grads[0]), *grads[1:])

    wrapped.defvjp(forward, backward)
    return wrapped


def _dropout_with_bad_backward(rate: float):
    """Dropout whose backward pass draws its mask from a different key."""

    def mask(key, shape):
        return jax.random.bernoulli(key, 1.0 - rate, shape) / (1.0 - rate)

    @jax.custom_vjp
    def dropout(x, key):
        return x * mask(key, x.shape)

    def forward(x, key):
        return dropout(x, key), key

    def backward(key, cotangent):
        return cotangent * mask(jax.random.fold_in(key, 1), cotangent.shape), None

    dropout.defvjp(forward, backward)
    return dropout


@dataclasses.dataclass(frozen=True)
class Broken:
    case: Case
    leaf: str | tuple[str, ...] | None  # leaf (or leaves) with the bug, as keystr
    index: tuple[int, ...] | None  # the entry, when the bug is in one entry


def sign_flip() -> Broken:
    base = mlp_tanh()

    def corrupt(g):
        g = [dict(layer) for layer in g]
        g[1]["b"] = -g[1]["b"]
        return g

    return Broken(
        Case(corrupt_gradient(base.fn, corrupt), base.params, base.args),
        "[1]['b']",
        None,
    )


def one_entry() -> Broken:
    base = mlp_tanh()

    def corrupt(g):
        g = [dict(layer) for layer in g]
        g[0]["w"] = g[0]["w"].at[3, 7].add(0.05 * jnp.max(jnp.abs(g[0]["w"])))
        return g

    return Broken(
        Case(corrupt_gradient(base.fn, corrupt), base.params, base.args),
        "[0]['w']",
        (3, 7),
    )


def transposed() -> Broken:
    params = {"w": _normal(30, (6, 6), 0.4), "b": _normal(31, (6,), 0.1)}
    x = _normal(32, (7, 6))

    def loss(p, x):
        return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    def corrupt(g):
        return {"w": g["w"].T, "b": g["b"]}

    return Broken(Case(corrupt_gradient(loss, corrupt), params, (x,)), "['w']", None)


def dropped_bias() -> Broken:
    base = mlp_tanh()

    def corrupt(g):
        g = [dict(layer) for layer in g]
        g[0]["b"] = jnp.zeros_like(g[0]["b"])
        return g

    return Broken(
        Case(corrupt_gradient(base.fn, corrupt), base.params, base.args),
        "[0]['b']",
        None,
    )


def scaled_five_percent() -> Broken:
    base = mlp_tanh()

    def corrupt(g):
        return jax.tree_util.tree_map(lambda x: 1.05 * x, g)

    return Broken(
        Case(corrupt_gradient(base.fn, corrupt), base.params, base.args), None, None
    )


def dropout_wrong_mask() -> Broken:
    params = mlp_params(jax.random.key(33), [5, 12, 3])
    x, y = _normal(34, (8, 5)), jnp.arange(8) % 3
    dropout = _dropout_with_bad_backward(0.5)

    def loss(p, x, y, key):
        h = jnp.tanh(nn.dense(p[0], x))
        h = dropout(h, key)
        return nn.softmax_cross_entropy(nn.dense(p[1], h), y)

    case = Case(loss, params, (x, y), {"key": jax.random.key(35)})
    return Broken(case, ("[0]['w']", "[0]['b']"), None)


BROKEN = {
    "sign_flip": sign_flip,
    "one_entry": one_entry,
    "transposed": transposed,
    "dropped_bias": dropped_bias,
    "scaled_five_percent": scaled_five_percent,
    "dropout_wrong_mask": dropout_wrong_mask,
}


def as_numpy(tree: Any) -> Any:
    return jax.tree_util.tree_map(np.asarray, tree)

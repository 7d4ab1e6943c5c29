"""Reference models: seeded losses with their parameters and data.

Each factory returns an ``Example``: the loss, its parameters, its other
arguments and, for stochastic models, the PRNG key to check them with. They are
the built-in models of ``python -m jaxcheck demo``, the workloads of the
benchmarks, and the shape a factory for ``jaxcheck check FILE.py:FACTORY``
takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcheck import nn
from jaxcheck.init import mlp_params


@dataclasses.dataclass(frozen=True)
class Example:
    """A loss to check, with everything it needs.

    Attributes:
        name: a short title.
        fn: the loss, ``fn(params, *args)`` or ``fn(params, *args, key=key)``.
        params: the parameter pytree.
        args: the other positional arguments.
        key: the PRNG key for ``fn``, or None.
        description: one sentence on what the model is.
    """

    name: str
    fn: Callable[..., jax.Array]
    params: Any
    args: tuple[Any, ...] = ()
    key: jax.Array | None = None
    description: str = ""

    @property
    def size(self) -> int:
        return sum(x.size for x in jax.tree_util.tree_leaves(self.params))

    def check_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``check_grads`` beyond fn, params and args."""
        return {} if self.key is None else {"key": self.key}


def _data(seed: int, batch: int, n_in: int, n_out: int):
    kx, ky = jax.random.split(jax.random.key(seed + 1000))
    x = jax.random.normal(kx, (batch, n_in))
    y = jax.random.randint(ky, (batch,), 0, n_out)
    return x, y


def mlp_classifier(
    sizes: Sequence[int] = (64, 128, 128, 10),
    batch: int = 32,
    activation: str = "tanh",
    dropout_rate: float = 0.0,
    seed: int = 0,
    init: str = "lecun_normal",
) -> Example:
    """An MLP with softmax cross-entropy on random data, optionally with dropout.

    Example:
        >>> from jaxcheck.models import mlp_classifier
        >>> mlp_classifier((4, 8, 3), batch=2).size
        67
    """
    params = mlp_params(jax.random.key(seed), sizes, init=init)
    x, y = _data(seed, batch, sizes[0], sizes[-1])

    def loss(params, x, y, key=None):
        logits = nn.mlp(
            params, x, activation=activation, dropout_rate=dropout_rate, key=key
        )
        return nn.softmax_cross_entropy(logits, y)

    use_key = dropout_rate > 0
    name = "MLP " + "-".join(str(s) for s in sizes) + f" {activation}"
    if use_key:
        name += f", dropout {dropout_rate}"
    return Example(
        name=name,
        fn=loss,
        params=params,
        args=(x, y),
        key=jax.random.key(seed + 7) if use_key else None,
        description=f"{activation} MLP, softmax cross-entropy, batch {batch}",
    )


def mlp_regression(
    sizes: Sequence[int] = (10, 20, 1), batch: int = 16, seed: int = 0
) -> Example:
    """A small tanh MLP with a mean-squared error loss.

    Example:
        >>> from jaxcheck.models import mlp_regression
        >>> mlp_regression().size
        241
    """
    params = mlp_params(jax.random.key(seed), sizes)
    kx, ky = jax.random.split(jax.random.key(seed + 1000))
    x = jax.random.normal(kx, (batch, sizes[0]))
    y = jax.random.normal(ky, (batch, sizes[-1]))

    def loss(params, x, y):
        return jnp.mean((nn.mlp(params, x, activation="tanh") - y) ** 2)

    return Example(
        name="MLP " + "-".join(str(s) for s in sizes) + " tanh, MSE",
        fn=loss,
        params=params,
        args=(x, y),
        description=f"tanh MLP, mean squared error, batch {batch}",
    )


def deep_mlp(
    depth: int = 150, width: int = 16, n_out: int = 10, batch: int = 8, seed: int = 0
) -> Example:
    """``depth`` tanh layers of equal width and a linear head, cross-entropy.

    Every layer is its own leaf, so the checked pytree has ``2 * depth + 2``
    leaves.

    Example:
        >>> from jaxcheck.models import deep_mlp
        >>> len(deep_mlp(depth=3, width=4).params)
        4
    """
    sizes = [width] * (depth + 1) + [n_out]
    return dataclasses.replace(
        mlp_classifier(sizes, batch=batch, seed=seed),
        name=f"deep MLP {depth}×{width} tanh",
        description=f"{depth} tanh layers of width {width}, batch {batch}",
    )


def _dense_with_backward(backward: Callable[..., tuple[jax.Array, jax.Array]]):
    """A dense layer ``x @ w + b`` whose gradient is computed by ``backward``."""

    @jax.custom_vjp
    def layer(w, b, x):
        return x @ w + b

    def forward(w, b, x):
        return x @ w + b, (w, b, x)

    def backward_rule(res, cotangent):
        w, b, x = res
        dw, db = backward(w, b, x, cotangent)
        return dw, db, cotangent @ w.T

    layer.defvjp(forward, backward_rule)
    return layer


def with_wrong_entry(
    example: Example, layer: int, index: tuple[int, ...], factor: float = 1.05
) -> Example:
    """``example`` whose loss has a custom_vjp that scales one gradient entry.

    The weight gradient of ``example.params[layer]["w"]`` at ``index`` is
    multiplied by ``factor`` in the backward pass; every other entry is right.

    Example:
        >>> from jaxcheck.models import mlp_regression, with_wrong_entry
        >>> with_wrong_entry(mlp_regression(), 0, (2, 3)).name
        "MLP 10-20-1 tanh, MSE, with [0]['w'][2, 3] off by 5%"
    """
    loss = example.fn

    @jax.custom_vjp
    def wrong(params, *args):
        return loss(params, *args)

    def forward(params, *args):
        return jax.vjp(loss, params, *args)

    def backward(vjp, cotangent):
        grads = vjp(cotangent)
        params = [dict(p) for p in grads[0]]
        params[layer]["w"] = params[layer]["w"].at[index].multiply(factor)
        return (params, *grads[1:])

    wrong.defvjp(forward, backward)
    where = f"[{layer}]['w'][{', '.join(str(i) for i in index)}]"
    off = f"{abs(factor - 1):.0%}"
    return dataclasses.replace(
        example, fn=wrong, name=f"{example.name}, with {where} off by {off}"
    )


def buggy_layer(bug: str = "transposed", seed: int = 0) -> Example:
    """A two-layer tanh net whose hidden layer has a hand-written, wrong backward.

    ``bug`` is one of "transposed" (the weight gradient is transposed),
    "dropped_bias" (the bias gradient is missing), "sign" (the bias gradient
    has the wrong sign) or "one_entry" (one weight-gradient entry is off by
    10%). The hidden layer is square so that a transposed gradient has the
    right shape, as such a bug would.

    Example:
        >>> from jaxcheck.models import buggy_layer
        >>> sorted(buggy_layer().params)
        ['b1', 'b2', 'w1', 'w2']
    """

    def rule(w, b, x, ct):
        dw, db = x.T @ ct, ct.sum(0)
        if bug == "transposed":
            return dw.T, db
        if bug == "dropped_bias":
            return dw, jnp.zeros_like(db)
        if bug == "sign":
            return dw, -db
        if bug == "one_entry":
            return dw.at[2, 3].multiply(1.1), db
        raise ValueError(
            f"Unknown bug {bug!r}; expected 'transposed', 'dropped_bias', 'sign' "
            "or 'one_entry'."
        )

    layer = _dense_with_backward(rule)
    width, n_out = 8, 3
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "w1": jax.random.normal(k1, (width, width)) / jnp.sqrt(width),
        "b1": 0.1 * jnp.arange(width, dtype=jnp.float32),
        "w2": jax.random.normal(k2, (width, n_out)) / jnp.sqrt(width),
        "b2": jnp.zeros(n_out),
    }
    x, y = _data(seed, 16, width, n_out)

    def loss(params, x, y):
        h = jnp.tanh(layer(params["w1"], params["b1"], x))
        return nn.softmax_cross_entropy(h @ params["w2"] + params["b2"], y)

    return Example(
        name=f"custom_vjp layer with a {bug.replace('_', ' ')} gradient",
        fn=loss,
        params=params,
        args=(x, y),
        description="a dense layer with a hand-written backward pass that has a bug",
    )

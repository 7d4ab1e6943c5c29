"""Small functional building blocks used by the examples, the demo and the tests.

Everything here is a pure function of its arguments: parameters are pytrees,
randomness comes from an explicit PRNG key, and there is no global state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
}


def get_activation(name: str | Callable[[jax.Array], jax.Array]):
    """The activation function called ``name`` (a callable is returned as is)."""
    if callable(name):
        return name
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)} "
            "or a callable."
        ) from None


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each entry with probability ``rate``, scale the rest.

    Kept entries are divided by ``1 - rate`` so the expectation is unchanged.
    With ``key=None`` or ``rate == 0`` this is the identity (evaluation mode).
    The same key always gives the same mask.

    Args:
        x: activations.
        rate: probability of dropping an entry, in [0, 1).
        key: a PRNG key, or None to switch dropout off.

    Returns:
        An array like ``x``.

    Raises:
        ValueError: if ``rate`` is outside [0, 1).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck.nn import dropout
        >>> dropout(jnp.ones(4), 0.5, None)
        Array([1., 1., 1., 1.], dtype=float32)
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"dropout rate must be in [0, 1); received {rate!r}. A rate of 1 would "
            "drop everything; use rate=0 or key=None to switch dropout off."
        )
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def dense(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """``x @ w + b`` for ``params = {"w": (fan_in, fan_out), "b": (fan_out,)}``."""
    return x @ params["w"] + params["b"]


def mlp(
    params: Sequence[dict[str, jax.Array]],
    x: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
) -> jax.Array:
    """A multilayer perceptron: dense layers, an activation and dropout between.

    The last layer is linear (it returns logits or a regression output).
    Dropout is applied after every hidden activation when ``key`` is given; each
    layer draws from its own ``jax.random.fold_in(key, layer)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck.init import mlp_params
        >>> from jaxcheck.nn import mlp
        >>> params = mlp_params(jax.random.key(0), [3, 8, 2])
        >>> mlp(params, jnp.ones((5, 3))).shape
        (5, 2)
    """
    phi = get_activation(activation)
    h = x
    for i, layer in enumerate(params):
        h = dense(layer, h)
        if i < len(params) - 1:
            h = phi(h)
            if key is not None:
                h = dropout(h, dropout_rate, jax.random.fold_in(key, i))
    return h


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of integer ``labels`` under ``logits`` (optax's loss)."""
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


__all__ = [
    "ACTIVATIONS",
    "get_activation",
    "dense",
    "dropout",
    "mlp",
    "softmax_cross_entropy",
]

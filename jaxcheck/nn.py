"""Small functional building blocks used by the examples, the demo and the tests.

Everything here is a pure function of its arguments: parameters are pytrees,
randomness comes from an explicit PRNG key, and there is no global state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "ACTIVATIONS",
    "dense",
    "dropout",
    "get_activation",
    "mlp",
    "softmax_cross_entropy",
    "straight_through",
]

Activation = Callable[[jax.Array], jax.Array]


def _linear(x: jax.Array) -> jax.Array:
    return x


ACTIVATIONS: dict[str, Activation] = {
    "linear": _linear,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
}
"""Elementwise activations by name, as accepted by :func:`get_activation`."""


def get_activation(name: str | Activation) -> Activation:
    """The activation function called ``name`` (a callable is returned as is).

    Args:
        name: a key of :data:`ACTIVATIONS` or an elementwise callable.

    Returns:
        The activation function.

    Raises:
        ValueError: if ``name`` is a string that is not in :data:`ACTIVATIONS`.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxcheck.nn import get_activation
        >>> get_activation("relu")(jnp.array([-1.0, 2.0]))
        Array([0., 2.], dtype=float32)
    """
    if callable(name):
        return name
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)} "
            "or a callable."
        ) from None


def _static_rate(rate: ArrayLike) -> float | None:
    """``rate`` as a Python float, or None when it is traced (inside jit/vmap)."""
    try:
        return float(rate)
    except jax.errors.ConcretizationTypeError:
        return None


def dropout(x: jax.Array, rate: ArrayLike, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each entry with probability ``rate``, scale the rest.

    Kept entries are divided by ``1 - rate`` so the expectation is unchanged,
    and evaluation needs no rescaling (Srivastava et al., 2014). With
    ``key=None`` or ``rate == 0`` this is the identity (evaluation mode). The
    mask is a pure function of ``key``: the same key gives the same mask, so a
    gradient check that passes one key to every evaluation sees one fixed
    function.

    ``rate`` may be traced (an argument of a jitted or vmapped function); it is
    then not validated and the identity short-cut for ``rate == 0`` is not
    taken (the result is still ``x``).

    Args:
        x: activations.
        rate: probability of dropping an entry, in [0, 1).
        key: a PRNG key, or None to switch dropout off.

    Returns:
        An array like ``x``.

    Raises:
        ValueError: if ``rate`` is outside [0, 1).

    References:
        Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov, "Dropout: A
        Simple Way to Prevent Neural Networks from Overfitting", JMLR 2014.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck.nn import dropout
        >>> dropout(jnp.ones(4), 0.5, None)
        Array([1., 1., 1., 1.], dtype=float32)
        >>> y = dropout(jnp.ones(1000), 0.5, jax.random.key(0))
        >>> sorted(set(y.tolist()))
        [0.0, 2.0]
    """
    static = _static_rate(rate)
    if static is not None:
        if not 0.0 <= static < 1.0:
            raise ValueError(
                f"dropout rate must be in [0, 1); received {rate!r}. A rate of 1 "
                "would drop everything; use rate=0 or key=None to switch dropout "
                "off."
            )
        if key is None or static == 0.0:
            return x
        rate = static
    elif key is None:
        return x
    x = jnp.asarray(x)
    keep_prob = 1.0 - rate
    # Uniforms drawn in float32 whatever the x64 setting, so that one key gives
    # one mask in float32 training and in a float64 gradient check alike
    # (jax.random.bernoulli would draw float64 bits under x64: another mask).
    keep = jax.random.uniform(key, x.shape, jnp.float32) < keep_prob
    return jnp.where(keep, x / keep_prob, jnp.zeros((), x.dtype))


def dense(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """A dense layer, ``x @ w + b``.

    Args:
        params: ``{"w": (fan_in, fan_out), "b": (fan_out,)}``, as made by
            :func:`jaxcheck.init.mlp_params`.
        x: inputs of shape ``(..., fan_in)``.

    Returns:
        Outputs of shape ``(..., fan_out)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxcheck.nn import dense
        >>> dense({"w": jnp.eye(2), "b": jnp.ones(2)}, jnp.array([1.0, 2.0]))
        Array([2., 3.], dtype=float32)
    """
    return x @ params["w"] + params["b"]


def mlp(
    params: Sequence[dict[str, jax.Array]],
    x: jax.Array,
    *,
    activation: str | Activation = "tanh",
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
) -> jax.Array:
    """A multilayer perceptron: dense layers, an activation and dropout between.

    The last layer is linear (it returns logits or a regression output).
    Dropout is applied after every hidden activation when ``key`` is given; each
    layer draws from its own ``jax.random.fold_in(key, layer)``.

    Args:
        params: one ``{"w", "b"}`` dict per layer (see
            :func:`jaxcheck.init.mlp_params`).
        x: inputs of shape ``(..., params[0]["w"].shape[0])``.
        activation: a name from :data:`ACTIVATIONS` or a callable.
        dropout_rate: dropout probability after each hidden activation.
        key: a PRNG key for dropout, or None for no dropout.

    Returns:
        The output of the last layer.

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
    """Mean cross-entropy of integer ``labels`` under ``logits``.

    Args:
        logits: shape ``(batch, classes)``.
        labels: integer class indices of shape ``(batch,)``.

    Returns:
        A scalar, the mean over the batch (computed by optax).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxcheck.nn import softmax_cross_entropy
        >>> loss = softmax_cross_entropy(jnp.zeros((4, 2)), jnp.array([0, 1, 0, 1]))
        >>> round(float(loss), 4)  # log 2
        0.6931
    """
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def straight_through(
    x: jax.Array, forward: Activation = jnp.round, exact: bool = False
) -> jax.Array:
    """``forward(x)`` in the forward pass, with the gradient of the identity.

    The straight-through estimator: a non-differentiable step (rounding,
    quantisation, sampling) whose backward pass deliberately passes the
    cotangent through unchanged. Its gradient is a *surrogate*: it is not the
    derivative of the function computed, so a gradient check of a loss using
    it is expected to fail. Declare the surrogate by giving the model a switch:
    with ``exact=True`` this returns ``x`` itself, the function whose
    derivative the surrogate is, and a check of the loss with the switch on
    verifies everything around the surrogate.

    Args:
        x: the input.
        forward: the step applied in the forward pass.
        exact: return ``x`` unchanged, for gradient checks.

    Returns:
        An array like ``x``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck.nn import straight_through
        >>> straight_through(jnp.array([0.2, 1.7]))
        Array([0., 2.], dtype=float32)
        >>> jax.grad(lambda x: straight_through(x).sum())(jnp.array([0.2, 1.7]))
        Array([1., 1.], dtype=float32)
    """
    if exact:
        return x
    return x + jax.lax.stop_gradient(forward(x) - x)

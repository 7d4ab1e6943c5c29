"""Variance-scaling initialisers and MLP parameter builders.

Every initialiser here has the ``jax.nn.initializers`` signature
``init(key, shape, dtype=None) -> Array`` and is built on
``jax.nn.initializers.variance_scaling``, so it can be passed wherever JAX, Flax
or Equinox expect one.

Conventions shared by all of them:

* **Fans.** For a weight matrix of shape ``(fan_in, fan_out)`` (the ``x @ w``
  layout used by :func:`jaxcheck.nn.dense`), ``fan_in = shape[-2]`` and
  ``fan_out = shape[-1]``. For a convolution kernel the remaining leading axes
  are the receptive field and multiply both fans, as in JAX. A shape with fewer
  than two axes has no fan and is rejected.
* **Truncated normal.** The ``*_normal`` schemes draw from a normal truncated
  to two standard deviations and divide by the standard deviation of a unit
  normal truncated to [-2, 2] (about 0.8796), so the *resulting* standard
  deviation equals the target one.
* **Uniform.** The ``*_uniform`` schemes draw from U(-a, a) with
  ``a = √3 · std``, which has the target standard deviation.

The target standard deviations are

=================  ===========================  ==========================
scheme             std                          reference
=================  ===========================  ==========================
LeCun              1 / √fan_in                  LeCun et al. (1998)
Xavier / Glorot    √(2 / (fan_in + fan_out))    Glorot & Bengio (2010)
He / Kaiming       √(2 / fan_in)                He et al. (2015)
``scaled(k)``      k / √fan_in                  (a tunable gain)
=================  ===========================  ==========================

References:
    Y. LeCun, L. Bottou, G. B. Orr and K.-R. Müller, "Efficient BackProp",
    in Neural Networks: Tricks of the Trade, Springer, 1998.

    X. Glorot and Y. Bengio, "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS 2010.

    K. He, X. Zhang, S. Ren and J. Sun, "Delving Deep into Rectifiers:
    Surpassing Human-Level Performance on ImageNet Classification", ICCV 2015.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

__all__ = [
    "DISTRIBUTIONS",
    "SCHEMES",
    "Initializer",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "mlp_params",
    "resolve",
    "scaled",
    "xavier_normal",
    "xavier_uniform",
]

DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")
"""The distributions accepted by :func:`scaled`, as named by ``variance_scaling``."""


class Initializer(Protocol):
    """A weight initialiser: ``init(key, shape, dtype=None) -> Array``."""

    def __call__(
        self, key: jax.Array, shape: Sequence[int], dtype: DTypeLike | None = None
    ) -> jax.Array: ...


def _check_shape(shape: Sequence[int], scheme: str) -> tuple[int, ...]:
    """``shape`` as a tuple, or a ValueError when it has no fan_in."""
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise TypeError(
            f"{scheme}: expected a shape such as (fan_in, fan_out); received {shape!r}."
        ) from None
    if len(shape) < 2:
        raise ValueError(
            f"{scheme}: cannot compute fan_in for shape {shape}, which has "
            f"{len(shape)} axis/axes; a variance-scaling initialiser needs at "
            "least 2 (fan_in, fan_out). Initialise biases and other vectors "
            "with jax.nn.initializers.zeros or normal(stddev), or reshape the "
            "weight to (fan_in, fan_out)."
        )
    return shape


def _variance_scaling(
    name: str, scale: float, mode: str, distribution: str, doc: str
) -> Initializer:
    """Wrap ``jax.nn.initializers.variance_scaling`` with a shape check."""
    base = jax.nn.initializers.variance_scaling(scale, mode, distribution)

    def init(
        key: jax.Array, shape: Sequence[int], dtype: DTypeLike | None = None
    ) -> jax.Array:
        return base(key, _check_shape(shape, name), dtype)

    init.__name__ = init.__qualname__ = name
    init.__doc__ = doc
    init.__module__ = __name__
    return init


_FANS = """
    Fans: for a ``(fan_in, fan_out)`` matrix, ``fan_in = shape[-2]`` and
    ``fan_out = shape[-1]``; for a convolution kernel ``(*window, in, out)``
    both are multiplied by the receptive field ``prod(window)``, as in
    ``jax.nn.initializers.variance_scaling``.
"""

_TRUNCATION = """
    The normal is truncated at ±2 std and rescaled by the std of a unit normal
    truncated to [-2, 2] (about 0.8796), so the drawn std equals the target.
"""

_ARGS = """
    Args:
        key: a PRNG key.
        shape: the weight shape, at least 2-D; ``(fan_in, fan_out)`` for a
            dense layer, ``(*window, fan_in, fan_out)`` for a kernel.
        dtype: a floating dtype; JAX's default float when None.

    Returns:
        An array of ``shape`` and ``dtype``.

    Raises:
        ValueError: if ``shape`` has fewer than 2 axes.
"""

_LECUN = """
    References:
        LeCun, Bottou, Orr & Müller, "Efficient BackProp", Neural Networks:
        Tricks of the Trade, 1998.
"""

_GLOROT = """
    References:
        Glorot & Bengio, "Understanding the difficulty of training deep
        feedforward neural networks", AISTATS 2010.
"""

_HE = """
    References:
        He, Zhang, Ren & Sun, "Delving Deep into Rectifiers: Surpassing
        Human-Level Performance on ImageNet Classification", ICCV 2015.
"""


lecun_normal = _variance_scaling(
    "lecun_normal",
    1.0,
    "fan_in",
    "truncated_normal",
    """LeCun normal: truncated normal with std = 1/√fan_in.

    Keeps the variance of pre-activations constant through a layer whose
    activation has unit slope at zero, such as tanh (LeCun et al., 1998).
"""
    + _TRUNCATION
    + _FANS
    + _ARGS
    + _LECUN
    + """
    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import init
        >>> w = init.lecun_normal(jax.random.key(0), (256, 128), jnp.float32)
        >>> w.shape, w.dtype
        ((256, 128), dtype('float32'))
        >>> round(float(w.std() * 256**0.5), 1)
        1.0
""",
)

lecun_uniform = _variance_scaling(
    "lecun_uniform",
    1.0,
    "fan_in",
    "uniform",
    """LeCun uniform: U(-a, a) with a = √(3/fan_in), so std = 1/√fan_in.

    The uniform variant of LeCun et al. (1998).
"""
    + _FANS
    + _ARGS
    + _LECUN
    + """
    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import init
        >>> w = init.lecun_uniform(jax.random.key(0), (300, 10), jnp.float32)
        >>> bool(abs(w).max() <= (3 / 300) ** 0.5)
        True
""",
)

xavier_normal = _variance_scaling(
    "xavier_normal",
    1.0,
    "fan_avg",
    "truncated_normal",
    """Xavier/Glorot normal: truncated normal with std = √(2/(fan_in + fan_out)).

    A compromise between keeping the forward and the backward variance
    constant (Glorot & Bengio, 2010).
"""
    + _TRUNCATION
    + _FANS
    + _ARGS
    + _GLOROT
    + """
    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import init
        >>> w = init.xavier_normal(jax.random.key(0), (300, 100), jnp.float32)
        >>> round(float(w.std() / (2 / 400) ** 0.5), 1)
        1.0
""",
)

xavier_uniform = _variance_scaling(
    "xavier_uniform",
    1.0,
    "fan_avg",
    "uniform",
    """Xavier/Glorot uniform: U(-a, a) with a = √(6/(fan_in + fan_out)).

    The uniform form proposed by Glorot & Bengio (2010); its std is
    √(2/(fan_in + fan_out)).
"""
    + _FANS
    + _ARGS
    + _GLOROT
    + """
    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import init
        >>> w = init.xavier_uniform(jax.random.key(0), (20, 30), jnp.float32)
        >>> bool(abs(w).max() <= (6 / 50) ** 0.5)
        True
""",
)

he_normal = _variance_scaling(
    "he_normal",
    2.0,
    "fan_in",
    "truncated_normal",
    """He/Kaiming normal: truncated normal with std = √(2/fan_in).

    ReLU zeroes half of its inputs, halving the second moment; doubling the
    weight variance restores it (He et al., 2015).
"""
    + _TRUNCATION
    + _FANS
    + _ARGS
    + _HE
    + """
    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import init
        >>> w = init.he_normal(jax.random.key(0), (64, 64), jnp.float32)
        >>> round(float(w.std() * (64 / 2) ** 0.5), 1)
        1.0
""",
)

he_uniform = _variance_scaling(
    "he_uniform",
    2.0,
    "fan_in",
    "uniform",
    """He/Kaiming uniform: U(-a, a) with a = √(6/fan_in), so std = √(2/fan_in).

    The uniform variant of He et al. (2015).
"""
    + _FANS
    + _ARGS
    + _HE
    + """
    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import init
        >>> w = init.he_uniform(jax.random.key(0), (6, 4), jnp.float32)
        >>> bool(abs(w).max() <= 1.0)
        True
""",
)


def scaled(k: float, distribution: str = "truncated_normal") -> Initializer:
    """An initialiser with std = k/√fan_in, for a gain ``k`` to tune.

    ``scaled(1)`` is LeCun's scheme and ``scaled(√2)`` He's. In a deep linear
    network each layer multiplies the backpropagated signal by about ``k``, so
    ``k`` slightly above or below 1 already makes it explode or vanish with
    depth. Fans follow the module convention (``fan_in = shape[-2]``).

    Args:
        k: the gain, a positive finite number.
        distribution: ``"truncated_normal"`` (truncated at ±2 std, rescaled so
            the drawn std is k/√fan_in), ``"normal"`` or ``"uniform"``
            (U(-a, a) with a = √3·k/√fan_in).

    Returns:
        An initialiser ``init(key, shape, dtype=None)``.

    Raises:
        ValueError: if ``k`` is not positive and finite, or ``distribution`` is
            not one of :data:`DISTRIBUTIONS`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import init
        >>> w = init.scaled(0.5)(jax.random.key(0), (400, 200), jnp.float32)
        >>> round(float(w.std() * 400**0.5), 1)
        0.5
    """
    try:
        gain = float(k)
    except (TypeError, ValueError):
        gain = math.nan
    if not (math.isfinite(gain) and gain > 0):
        raise ValueError(
            f"scaled: the gain k must be a positive finite number; received "
            f"{k!r}. Use k=1 for LeCun's std 1/√fan_in."
        )
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"scaled: unknown distribution {distribution!r}; expected one of "
            f"{list(DISTRIBUTIONS)}."
        )
    name = f"scaled({gain:g})" + (
        "" if distribution == "truncated_normal" else f"[{distribution}]"
    )
    doc = f"Initialiser with std = {gain:g}/√fan_in ({distribution})."
    return _variance_scaling(name, gain**2, "fan_in", distribution, doc)


SCHEMES: dict[str, Initializer] = {
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
}
"""The initialisers by name, as accepted by :func:`mlp_params` and :func:`resolve`."""


def resolve(init: str | Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """The initialiser named ``init`` (a callable is returned unchanged).

    Args:
        init: a name from :data:`SCHEMES` or an initialiser callable.

    Returns:
        The initialiser.

    Raises:
        ValueError: if ``init`` is a string that names no scheme.
        TypeError: if ``init`` is neither a string nor callable.

    Example:
        >>> from jaxcheck import init
        >>> init.resolve("he_normal").__name__
        'he_normal'
    """
    if isinstance(init, str):
        try:
            return SCHEMES[init]
        except KeyError:
            raise ValueError(
                f"Unknown initialisation scheme {init!r}; expected one of "
                f"{sorted(SCHEMES)}, or an initialiser callable such as "
                "jaxcheck.init.scaled(k)."
            ) from None
    if callable(init):
        return init
    raise TypeError(
        "init must be a scheme name or an initialiser callable "
        f"(key, shape, dtype) -> Array; received {type(init).__name__} {init!r}."
    )


def mlp_params(
    key: jax.Array,
    sizes: Sequence[int],
    init: str | Callable[..., jax.Array] = "lecun_normal",
    bias_init: Callable[..., jax.Array] = jax.nn.initializers.zeros,
    dtype: Any = jnp.float32,
) -> list[dict[str, jax.Array]]:
    """Parameters ``[{"w": (n_in, n_out), "b": (n_out,)}, ...]`` of an MLP.

    Layer ``i`` maps ``sizes[i]`` to ``sizes[i + 1]`` features; its weights
    are drawn from ``fold_in(key, i)`` and its biases from
    ``fold_in(fold_in(key, i), 1)``, so the parameters are a pure function of
    ``key``.

    Args:
        key: a PRNG key.
        sizes: the layer widths, input first and output last (at least two).
        init: a scheme name from :data:`SCHEMES` or an initialiser callable
            ``(key, shape, dtype) -> Array`` for the weights.
        bias_init: an initialiser for the biases (zeros by default).
        dtype: the parameter dtype.

    Returns:
        A list with one ``{"w", "b"}`` dict per layer, ready for
        :func:`jaxcheck.nn.mlp`.

    Raises:
        ValueError: for an unknown scheme name or fewer than two positive sizes.

    Example:
        >>> import jax
        >>> from jaxcheck.init import mlp_params
        >>> params = mlp_params(jax.random.key(0), [4, 8, 2], init="he_normal")
        >>> [p["w"].shape for p in params]
        [(4, 8), (8, 2)]
    """
    w_init = resolve(init)
    original = sizes
    try:
        sizes = [operator.index(n) for n in sizes]
    except TypeError:
        sizes = []
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(
            "mlp_params: sizes must list at least two positive integer widths "
            f"(input, ..., output); received {original!r}."
        )
    # fold_in(key, i) is split(key, n)[i] under JAX's default PRNG settings,
    # and compiles once instead of once per number of layers.
    keys = [jax.random.fold_in(key, i) for i in range(len(sizes) - 1)]
    return [
        {
            "w": w_init(k, (n_in, n_out), dtype),
            "b": bias_init(jax.random.fold_in(k, 1), (n_out,), dtype),
        }
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]

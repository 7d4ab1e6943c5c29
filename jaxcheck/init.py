"""Variance-scaling initialisers and MLP parameter builders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

SCHEMES: dict[str, Initializer] = {
    "lecun_normal": jax.nn.initializers.lecun_normal(),
    "lecun_uniform": jax.nn.initializers.lecun_uniform(),
    "xavier_normal": jax.nn.initializers.glorot_normal(),
    "xavier_uniform": jax.nn.initializers.glorot_uniform(),
    "he_normal": jax.nn.initializers.he_normal(),
    "he_uniform": jax.nn.initializers.he_uniform(),
}


def mlp_params(
    key: jax.Array,
    sizes: Sequence[int],
    init: str | Initializer = "lecun_normal",
    bias_init: Initializer = jax.nn.initializers.zeros,
    dtype: Any = jnp.float32,
) -> list[dict[str, jax.Array]]:
    """Parameters ``[{"w": (n_in, n_out), "b": (n_out,)}, ...]`` of an MLP.

    Example:
        >>> import jax
        >>> from jaxcheck.init import mlp_params
        >>> [p["w"].shape for p in mlp_params(jax.random.key(0), [4, 8, 2])]
        [(4, 8), (8, 2)]
    """
    w_init = SCHEMES[init] if isinstance(init, str) else init
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "w": w_init(k, (n_in, n_out), dtype),
            "b": bias_init(jax.random.fold_in(k, 1), (n_out,), dtype),
        }
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]

"""The benchmark workloads W1–W5 and a loss with one corrupted gradient entry.

Every workload is a seeded model from ``jaxcheck.models``, so jaxcheck, the
baselines and the torch replica all see the same weights and data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck import models

COORDINATE_METHODS = (
    "full",
    "sample",
    "directional",
    "corrupted",
    "M1",
    "M2",
    "M3-full",
    "M3-fast",
)
LARGE_METHODS = ("sample", "directional", "corrupted")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark model.

    Attributes:
        key: "W1" ... "W5".
        build: makes the seeded ``Example``.
        activation: the hidden activation, for the torch replica.
        loss: "cross_entropy" or "mse", for the torch replica.
        allowed: the methods that may run on it.
        default: the methods that run unless ``--methods`` says otherwise.
        torch_coords: coordinates torch's full gradcheck checks by default
            (None: all of them); the time for all is then extrapolated.
        samples: ``samples=`` of jaxcheck's "sample" mode (None: its
            default, 2048).
    """

    key: str
    build: Callable[[], models.Example]
    activation: str
    loss: str
    allowed: tuple[str, ...] = COORDINATE_METHODS
    default: tuple[str, ...] = COORDINATE_METHODS
    torch_coords: int | None = None
    samples: int | None = None


WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in (
        Workload(
            "W1",
            lambda: models.mlp_classifier((64, 128, 128, 10), batch=32),
            activation="tanh",
            loss="cross_entropy",
        ),
        Workload(
            "W2",
            lambda: models.mlp_classifier((784, 64, 10), batch=16, activation="relu"),
            activation="relu",
            loss="cross_entropy",
        ),
        Workload(
            "W3",
            lambda: models.deep_mlp(150, 16, 10, 8),
            activation="tanh",
            loss="cross_entropy",
            torch_coords=2000,
        ),
        Workload(
            "W4",
            models.mlp_regression,
            activation="tanh",
            loss="mse",
        ),
        Workload(
            "W5",
            lambda: models.mlp_classifier((1024, 2048, 2048, 2048, 10), batch=32),
            activation="tanh",
            loss="cross_entropy",
            allowed=LARGE_METHODS,
            default=LARGE_METHODS,
            samples=512,
        ),
    )
}


def to_float64(tree: Any) -> Any:
    """Floating leaves as float64 arrays, other leaves unchanged.

    Call it inside ``jax.enable_x64(True)``.
    """

    def cast(x: Any) -> Any:
        if jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return jnp.asarray(x, jnp.float64)
        return x

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Corruption:
    """Which gradient entry a corrupted loss moves, and by how much.

    Attributes:
        leaf: position of the leaf in ``jax.tree.leaves(params)``.
        path: that leaf's ``jax.tree_util.keystr`` path.
        index: the entry inside the leaf.
        factor: the entry of the gradient is multiplied by this.
        gradient: the true derivative at that entry.
        share: ``|gradient|`` over the norm of the leaf's gradient.
    """

    leaf: int
    path: str
    index: tuple[int, ...]
    factor: float
    gradient: float
    share: float

    @property
    def location(self) -> str:
        return self.path + "[" + ", ".join(str(i) for i in self.index) + "]"


def choose_corruption(example: models.Example, factor: float, seed: int = 0):
    """Picks a typical entry of the largest weight leaf to corrupt.

    The entry is drawn (seeded) among those whose gradient is at least the
    median magnitude of the leaf, so that "a few percent" of it is a change
    that finite differences in float64 can see, but not the largest one.

    Args:
        example: the workload's model.
        factor: the gradient entry is multiplied by this.
        seed: seeds the draw.

    Returns:
        A ``Corruption``.
    """
    with jax.enable_x64(True):
        params = to_float64(example.params)
        args = to_float64(example.args)
        grads = jax.grad(example.fn)(params, *args, **example.check_kwargs())
    paths = jax.tree_util.tree_flatten_with_path(example.params)[0]
    leaves = jax.tree.leaves(grads)
    weights = [i for i, leaf in enumerate(leaves) if leaf.ndim >= 2]
    leaf = max(weights or range(len(leaves)), key=lambda i: leaves[i].size)
    g = np.asarray(leaves[leaf])
    magnitude = np.abs(g).reshape(-1)
    candidates = np.flatnonzero(magnitude >= np.median(magnitude))
    flat = int(np.random.default_rng(seed).choice(candidates))
    index = tuple(int(i) for i in np.unravel_index(flat, g.shape))
    return Corruption(
        leaf=leaf,
        path=jax.tree_util.keystr(paths[leaf][0]),
        index=index,
        factor=factor,
        gradient=float(g[index]),
        share=float(magnitude[flat] / np.linalg.norm(magnitude)),
    )


def corrupted_loss(fn: Callable[..., Any], corruption: Corruption, n_args: int):
    """``fn`` with a backward pass that moves one weight-gradient entry.

    The value is ``fn``'s; the gradient with respect to the parameters is
    ``jax.grad(fn)``'s with the entry ``corruption`` names multiplied by
    ``corruption.factor``. The other arguments get no gradient.

    Args:
        fn: a loss ``fn(params, *args)``.
        corruption: the entry and the factor.
        n_args: how many arguments follow ``params``.

    Returns:
        The corrupted loss, with ``fn``'s signature.
    """

    @jax.custom_vjp
    def loss(params, *args):
        return fn(params, *args)

    def forward(params, *args):
        return jax.vjp(lambda p: fn(p, *args), params)

    def backward(pullback, cotangent):
        (grads,) = pullback(cotangent)
        leaves, treedef = jax.tree.flatten(grads)
        moved = leaves[corruption.leaf].at[corruption.index].multiply(corruption.factor)
        leaves[corruption.leaf] = moved
        return (jax.tree.unflatten(treedef, leaves), *([None] * n_args))

    loss.defvjp(forward, backward)
    return loss

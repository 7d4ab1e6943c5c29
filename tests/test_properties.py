"""Properties over random small MLPs: right gradients pass, a corrupted entry fails."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import jaxcheck as jc
from jaxcheck import nn
from jaxcheck.init import mlp_params
from tests import zoo

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)

sizes = st.lists(st.integers(1, 6), min_size=2, max_size=4)
activations = st.sampled_from(["tanh", "relu", "gelu"])


def _mlp_loss(sizes, batch, seed, activation):
    params = mlp_params(jax.random.key(seed), sizes)
    kx, ky = jax.random.split(jax.random.key(seed + 1))
    x = jax.random.normal(kx, (batch, sizes[0]))
    y = jax.random.normal(ky, (batch, sizes[-1]))

    def loss(p, x, y):
        return jnp.mean((nn.mlp(p, x, activation=activation) - y) ** 2)

    return loss, params, (x, y)


@SETTINGS
@given(
    sizes=sizes,
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    activation=activations,
)
def test_correct_gradients_always_pass(sizes, batch, seed, activation):
    loss, params, args = _mlp_loss(sizes, batch, seed, activation)
    report = jc.check_grads(loss, params, *args)
    assert report.passed, str(report)


@SETTINGS
@given(
    sizes=sizes,
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    activation=activations,
    which=st.floats(0, 1, exclude_max=True),
    where=st.floats(0, 1, exclude_max=True),
    size=st.floats(0.01, 1.0),
    sign=st.sampled_from([-1.0, 1.0]),
)
def test_a_corrupted_entry_always_fails_and_is_located(
    sizes, batch, seed, activation, which, where, size, sign
):
    """One entry is moved by at least 1% of its leaf's largest gradient entry."""
    loss, params, args = _mlp_loss(sizes, batch, seed, activation)
    grads = jax.grad(loss)(params, *args)
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    k = int(which * len(paths_and_leaves))
    path, leaf = paths_and_leaves[k]
    j = int(where * leaf.size)
    scale = float(jnp.max(jnp.abs(leaf)))
    # Below this the entry is under the finite-difference noise of the loss,
    # which the check reports as unresolved rather than wrong.
    assume(scale > 1e-6)

    def corrupt(g):
        flat, treedef = jax.tree_util.tree_flatten(g)
        moved = flat[k].reshape(-1).at[j].add(sign * size * scale)
        flat[k] = moved.reshape(flat[k].shape)
        return jax.tree_util.tree_unflatten(treedef, flat)

    report = jc.check_grads(zoo.corrupt_gradient(loss, corrupt), params, *args)
    assert not report.passed, str(report)
    assert report.verdict in (jc.Verdict.SUSPECT, jc.Verdict.WRONG)
    assert report.worst[0].path == jax.tree_util.keystr(path)
    assert report.worst[0].index == tuple(
        int(i) for i in np.unravel_index(j, leaf.shape)
    )

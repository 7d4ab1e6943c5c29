"""Checks on Flax (nnx and linen) models, Equinox modules and optax losses."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import linen, nnx

import jaxcheck as jc
from tests.readme import python_block

X = jnp.linspace(-1.0, 1.0, 16 * 4).reshape(16, 4)
Y = jnp.arange(16) % 3
WRONG_AT = (1, 2)


@jax.custom_vjp
def wrong_entry(w):
    """The identity, whose backward pass doubles the cotangent of one entry."""
    return w


wrong_entry.defvjp(lambda w: (w, None), lambda _, g: (g.at[WRONG_AT].multiply(2.0),))


def xent(logits):
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def test_readme_example():
    namespace = {}
    exec(python_block("Flax, Equinox and optax"), namespace)
    nnx_report = namespace["nnx_report"]
    assert nnx_report.passed
    assert [leaf.path for leaf in nnx_report.leaves] == [
        "['dense']['bias'].value",
        "['dense']['kernel'].value",
    ]
    linen_report = namespace["linen_report"]
    assert linen_report.passed
    assert {leaf.path for leaf in linen_report.leaves} == {
        "['params']['bias']",
        "['params']['kernel']",
    }
    eqx_report = namespace["eqx_report"]
    assert eqx_report.passed and eqx_report.mode == "full"
    assert eqx_report.checked == eqx_report.size == 4 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3
    assert dict(eqx_report.unchecked) == {
        ".activation": "custom_jvp (not an array)",
        ".final_activation": "function (not an array)",
    }


class NnxNet(nnx.Module):
    def __init__(self, rngs, wrong=False):
        self.hidden = nnx.Linear(4, 5, rngs=rngs)
        self.out = nnx.Linear(5, 3, rngs=rngs)
        self.drop = nnx.Dropout(0.3)
        self.steps = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.wrong = wrong

    def __call__(self, x, key):
        kernel = self.hidden.kernel[...]
        kernel = wrong_entry(kernel) if self.wrong else kernel
        h = self.drop(jnp.tanh(x @ kernel + self.hidden.bias[...]), rngs=key)
        return self.out(h)


NNX_UNCHECKED = {"['steps'].value": "int32 array (not differentiable)"}


def nnx_case(wrong):
    graphdef, state = nnx.split(NnxNet(nnx.Rngs(0), wrong))

    def loss(state, key):
        return xent(nnx.merge(graphdef, state)(X, key))

    return loss, state, "['hidden']['kernel'].value", NNX_UNCHECKED


class LinenNet(linen.Module):
    wrong: bool = False

    @linen.compact
    def __call__(self, x, train):
        kernel = self.param("kernel", linen.initializers.lecun_normal(), (4, 5))
        kernel = wrong_entry(kernel) if self.wrong else kernel
        h = linen.Dropout(0.3, deterministic=not train)(jnp.tanh(x @ kernel))
        return linen.Dense(3)(h)


def linen_case(wrong):
    module = LinenNet(wrong)
    variables = module.init(jax.random.key(0), X, train=False)

    def loss(variables, key):
        out = module.apply(variables, X, train=True, rngs={"dropout": key})
        return xent(out)

    return loss, variables, "['params']['kernel']", {}


class EqxNet(eqx.Module):
    mlp: eqx.nn.MLP
    drop: eqx.nn.Dropout
    wrong: bool = eqx.field(static=True)
    calls: int

    def __call__(self, x, key):
        mlp = self.mlp
        if self.wrong:
            weight = wrong_entry(mlp.layers[0].weight)
            mlp = eqx.tree_at(lambda m: m.layers[0].weight, mlp, weight)
        return mlp(self.drop(x, key=key))


EQX_UNCHECKED = {
    ".mlp.activation": "custom_jvp (not an array)",
    ".mlp.final_activation": "function (not an array)",
    # The dropout rate is a Python float field: a hyperparameter, which
    # eqx.is_inexact_array leaves out (and Equinox stops gradients through).
    ".drop.p": "float field of an Equinox module (a hyperparameter, not an array)",
    ".drop.inference": "bool (not an array)",
    ".calls": "int (not an array)",
}


def eqx_case(wrong):
    mlp = eqx.nn.MLP(4, 3, width_size=5, depth=1, key=jax.random.key(0))
    net = EqxNet(mlp, eqx.nn.Dropout(0.3), wrong, calls=0)

    def loss(net, key):
        keys = jax.random.split(key, len(X))
        return xent(jax.vmap(net)(X, keys))

    return loss, net, ".mlp.layers[0].weight", EQX_UNCHECKED


CASES = {"nnx": nnx_case, "linen": linen_case, "equinox": eqx_case}


@pytest.mark.parametrize("framework", CASES)
def test_dropout_with_key_passes(framework):
    loss, params, _, unchecked = CASES[framework](wrong=False)
    report = jc.check_grads(loss, params, key=jax.random.key(7))
    assert report.passed, report
    assert report.mode == "full" and report.checked == report.size
    assert dict(report.unchecked) == unchecked
    if framework == "equinox":
        # Exactly the leaves eqx.filter(..., eqx.is_inexact_array) keeps.
        kept = eqx.filter(params, eqx.is_inexact_array)
        paths = jax.tree_util.tree_flatten_with_path(kept)[0]
        keystr = jax.tree_util.keystr
        assert [leaf.path for leaf in report.leaves] == [keystr(p) for p, _ in paths]


@pytest.mark.parametrize("framework", CASES)
def test_wrong_gradient_is_located(framework):
    loss, params, path, _ = CASES[framework](wrong=True)
    report = jc.check_grads(loss, params, key=jax.random.key(7))
    assert report.verdict is jc.Verdict.WRONG
    assert (report.worst[0].path, report.worst[0].index) == (path, WRONG_AT)
    assert {c.location for c in report.worst if c.rel_error > 1e-3} == {
        f"{path}[{WRONG_AT[0]}, {WRONG_AT[1]}]"
    }
    failing = [leaf.path for leaf in report.leaves if not leaf.verdict.passed]
    assert failing == [path]


def test_python_floats_outside_equinox_modules_are_still_checked():
    report = jc.check_grads(
        lambda p: p["scale"] ** 3 * jnp.sum(p["w"]),
        {
            "scale": 1.5,
            "w": jnp.ones(2),
        },
    )
    assert report.passed and {leaf.path for leaf in report.leaves} == {
        "['scale']",
        "['w']",
    }


def test_optax_l2_loss():
    def loss(params, x, target):
        return jnp.sum(optax.l2_loss(jnp.tanh(x @ params["w"]), target))

    params = {"w": jnp.linspace(-0.5, 0.5, 4 * 3).reshape(4, 3)}
    report = jc.check_grads(loss, params, X, jnp.zeros((16, 3)))
    assert report.passed and report.checked == 12

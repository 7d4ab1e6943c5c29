"""The full-mode check on a zoo of correct and deliberately broken gradients."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from tests import zoo


@pytest.mark.parametrize("name", sorted(zoo.CORRECT))
def test_correct_gradients_pass(name):
    case = zoo.CORRECT[name]()
    report = jc.check_grads(case.fn, case.params, *case.args, **case.kwargs)
    assert report.passed, str(report)
    assert report.verdict in (jc.Verdict.CORRECT, jc.Verdict.KINKS)
    assert report.relative_error < 1e-7
    assert (
        report.checked
        == report.size
        == sum(np.size(x) for x in jax.tree_util.tree_leaves(case.params))
    )
    assert all(leaf.verdict.passed for leaf in report.leaves)


@pytest.mark.parametrize("name", sorted(zoo.BROKEN))
def test_broken_gradients_fail_and_are_located(name):
    broken = zoo.BROKEN[name]()
    case = broken.case
    report = jc.check_grads(case.fn, case.params, *case.args, **case.kwargs)
    assert not report.passed, str(report)
    assert report.verdict is jc.Verdict.WRONG
    assert report.worst, "a failing report names coordinates"
    if broken.leaf is not None:
        expected = (broken.leaf,) if isinstance(broken.leaf, str) else broken.leaf
        assert report.worst[0].path in expected
        for leaf in report.leaves:
            assert leaf.verdict.passed == (leaf.path not in expected), str(report)
    else:
        assert all(leaf.verdict is jc.Verdict.WRONG for leaf in report.leaves)
    if broken.index is not None:
        assert report.worst[0].index == broken.index
        leaf = next(x for x in report.leaves if x.path == broken.leaf)
        assert leaf.disagreeing == 1


def test_leaf_notes_describe_common_bugs():
    notes = {}
    for name in ("sign_flip", "transposed", "dropped_bias", "scaled_five_percent"):
        case = zoo.BROKEN[name]().case
        report = jc.check_grads(case.fn, case.params, *case.args, **case.kwargs)
        notes[name] = {leaf.note for leaf in report.leaves if not leaf.verdict.passed}
    assert notes["sign_flip"] == {"sign flipped"}
    assert notes["transposed"] == {"transposed"}
    assert notes["dropped_bias"] == {"analytic gradient is zero"}
    assert notes["scaled_five_percent"] == {"scaled by 1.05"}


def test_the_note_counts_only_confirmed_disagreements():
    """An entry whose gradient is round-off-sized is not counted as a bug."""

    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    def backward(x, g):
        return (g * jnp.where(x > 1.5, -jnp.cos(x), jnp.cos(x)),)

    f.defvjp(lambda x: (jnp.sin(x), x), backward)
    w = np.linspace(-1.0, 2.0, 7) - 1e-16  # the gradient at w[2] is about 0
    report = jc.check_grads(lambda w: jnp.sum(f(w) ** 2), w)
    (leaf,) = report.leaves
    assert leaf.disagreeing == 1 and leaf.note == "1 of 7 entries disagree"
    assert report.worst[0].index == (6,)


def test_key_is_used_for_every_evaluation():
    case = zoo.mlp_dropout()
    seen = []

    def loss(p, x, y, key):
        seen.append(key)
        return case.fn(p, x, y, key=key)

    report = jc.check_grads(loss, case.params, *case.args, **case.kwargs)
    assert report.passed
    assert report.nondeterminism == 0.0
    # With a different key the masks differ, so the loss differs.
    other = jc.check_grads(loss, case.params, *case.args, key=jax.random.key(99))
    assert other.passed and other.loss != report.loss


def test_dropout_without_the_shared_key_is_caught():
    """Drawing the mask outside the key (a fresh mask per trace) is reported."""
    case = zoo.mlp_dropout()
    rng = np.random.default_rng(0)

    def loss(p, x, y):
        mask_key = jax.random.key(int(rng.integers(1 << 30)))  # new per trace
        return case.fn(p, x, y, key=mask_key)

    report = jc.check_grads(loss, case.params, *case.args)
    assert not report.passed
    assert report.nondeterminism > 1e-6
    assert any("not deterministic" in note for note in report.notes)


def test_report_fields_and_json():
    case = zoo.BROKEN["one_entry"]().case
    report = jc.check_grads(case.fn, case.params, *case.args)
    d = report.to_dict()
    text = json.dumps(d)
    assert json.loads(text)["verdict"] == "wrong"
    assert d["worst"][0]["path"] == "[0]['w']"
    assert d["worst"][0]["index"] == [3, 7]
    assert {leaf["path"] for leaf in d["leaves"]} == {
        "[0]['w']",
        "[0]['b']",
        "[1]['w']",
        "[1]['b']",
    }
    assert d["mode"] == "full" and d["dtype"] == "float64"
    assert d["evaluations"] >= 2 * report.size
    assert d["seconds"] > 0 and d["eps"] > 0
    assert report.kinks == ()

    text = str(report)
    assert "WRONG" in text
    assert "[0]['w'][3, 7]" in text
    assert "1 of 60 entries disagree" in text


def test_assert_grads_raises_with_report():
    case = zoo.BROKEN["transposed"]().case
    with pytest.raises(jc.GradCheckError) as info:
        jc.assert_grads(case.fn, case.params, *case.args)
    assert isinstance(info.value, AssertionError)
    assert info.value.report.verdict is jc.Verdict.WRONG
    assert "['w']" in str(info.value) and "transposed" in str(info.value)

    good = zoo.mlp_tanh()
    assert jc.assert_grads(good.fn, good.params, *good.args).passed


def test_callers_config_and_params_are_untouched():
    case = zoo.mlp_tanh()
    before = zoo.as_numpy(case.params)
    assert not jax.config.jax_enable_x64
    report = jc.check_grads(case.fn, case.params, *case.args)
    assert report.dtype == "float64"
    assert set(report.given_dtypes) == {"float32"}
    assert not jax.config.jax_enable_x64
    leaves = jax.tree_util.tree_leaves(case.params)
    for a, b in zip(leaves, jax.tree_util.tree_leaves(before), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), b)
    assert jnp.zeros(1).dtype == jnp.float32


def test_numpy_params_are_not_mutated():
    params = {"w": np.linspace(-1, 1, 12).reshape(3, 4)}
    copy = params["w"].copy()
    report = jc.check_grads(lambda p: jnp.sum(jnp.sin(p["w"]) ** 2), params)
    assert report.passed
    np.testing.assert_array_equal(params["w"], copy)


@pytest.mark.parametrize("batch_size", [4, 32])
def test_one_compilation_however_many_chunks(batch_size):
    traces = []

    def loss(w):
        traces.append(1)
        return jnp.sum(jnp.tanh(w) ** 2)

    w = jnp.linspace(-1, 1, 5000)  # many chunks, one leaf shape
    report = jc.check_grads(loss, w, batch_size=batch_size)
    assert report.passed
    assert report.evaluations >= 10_000
    # One trace for the gradient, one for the batched evaluation, whatever the
    # number of chunks (more than 300 with batch_size=4).
    assert len(traces) == 2


def test_compiled_functions_are_reused_across_calls():
    traces = []

    def loss(w, x):
        traces.append(1)
        return jnp.sum(jnp.tanh(w * x))

    jc.check_grads(loss, jnp.ones(10), jnp.ones(10))
    first = len(traces)
    report = jc.check_grads(loss, jnp.full(10, 0.5), jnp.arange(10.0))
    assert report.passed
    assert len(traces) == first


def test_argnums_checks_the_named_argument():
    def loss(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    w, x = jnp.ones((3, 2)) * 0.3, jnp.linspace(-1, 1, 12).reshape(4, 3)
    report = jc.check_grads(loss, w, x, argnums=1)
    assert report.passed and report.size == 12
    assert [leaf.shape for leaf in report.leaves] == [(4, 3)]

    both = jc.check_grads(loss, w, x, argnums=(0, 1))
    assert both.passed and both.size == 18
    assert [leaf.path for leaf in both.leaves] == ["[0]", "[1]"]


def test_has_aux_values_are_ignored_by_the_check():
    case = zoo.with_aux()
    report = jc.check_grads(case.fn, case.params, *case.args, has_aux=True)
    assert report.passed


def test_scalar_and_python_float_leaves():
    params = {"a": 2.0, "b": jnp.float32(0.5), "c": jnp.ones((2,))}

    def loss(p):
        return p["a"] ** 2 * p["b"] + jnp.sum(jnp.exp(p["c"] * p["b"]))

    report = jc.check_grads(loss, params)
    assert report.passed
    assert [leaf.shape for leaf in report.leaves] == [(), (), (2,)]

"""Forward mode, second order, vector-valued functions and custom rules."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck import models, nn
from tests import zoo

REV, FWD = "reverse mode (jax.grad)", "forward mode (jax.jvp)"


def _parts(report):
    return {label: part for label, part in report.parts}


def _softplus_with_rule(factor):
    """softplus with a custom_jvp rule; ``factor`` 1 is right, else wrong."""

    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    @softplus.defjvp
    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        return softplus(x), t * jax.nn.sigmoid(x) * factor

    return softplus


def _dense_loss(activation):
    params = {
        "w": jnp.linspace(-0.5, 0.5, 6).reshape(3, 2),
        "b": jnp.array([0.1, -0.2]),
    }
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)

    def loss(p, x):
        return jnp.sum(activation(x @ p["w"] + p["b"]) ** 2)

    return loss, params, x


# -- forward and reverse mode -------------------------------------------------------


def test_forward_and_reverse_mode_both_checked_and_compared():
    ex = models.mlp_classifier((6, 10, 4), batch=8)
    report = jc.check_grads(ex.fn, ex.params, *ex.args, modes=("rev", "fwd"))
    parts = _parts(report)
    assert report.passed and set(parts) == {REV, FWD}
    assert parts[FWD].relative_error < 1e-8
    assert any("agree with each other" in note for note in report.notes)
    # The second mode reuses every finite difference of the first.
    alone = jc.check_grads(ex.fn, ex.params, *ex.args)
    assert report.evaluations - alone.evaluations < 0.1 * alone.evaluations + 600


def test_a_wrong_custom_jvp_rule_fails_in_both_modes():
    loss, params, x = _dense_loss(_softplus_with_rule(1.1))
    report = jc.check_grads(loss, params, x, modes=("rev", "fwd"))
    parts = _parts(report)
    assert report.verdict is jc.Verdict.WRONG
    assert parts[REV].verdict is parts[FWD].verdict is jc.Verdict.WRONG
    assert {leaf.note for leaf in parts[FWD].leaves} == {"scaled by 1.1"}


def test_a_right_custom_jvp_rule_passes_in_both_modes():
    loss, params, x = _dense_loss(_softplus_with_rule(1.0))
    report = jc.check_grads(loss, params, x, modes=("rev", "fwd"))
    assert report.passed and len(report.parts) == 2


def test_custom_vjp_is_checked_in_reverse_mode_with_a_note():
    broken = zoo.BROKEN["transposed"]().case
    report = jc.check_grads(
        broken.fn, broken.params, *broken.args, modes=("rev", "fwd")
    )
    assert report.verdict is jc.Verdict.WRONG
    assert report.worst[0].path == "['w']"
    assert any(
        "forward mode was not checked" in n and "custom_vjp" in n for n in report.notes
    )


def test_forward_mode_alone_and_in_directional_mode():
    ex = models.mlp_classifier((16, 32, 4), batch=8)
    report = jc.check_grads(
        ex.fn, ex.params, *ex.args, modes=("fwd",), mode="directional"
    )
    assert report.passed and report.mode == "directional"


@pytest.mark.parametrize("modes", [(), ("rev", "rev"), ("backward",), "sideways"])
def test_modes_are_validated(modes):
    with pytest.raises(ValueError, match="modes must be a non-empty tuple"):
        jc.check_grads(lambda w: jnp.sum(w**2), jnp.ones(2), modes=modes)


# -- second order ---------------------------------------------------------------------


def test_second_order_checks_the_whole_hessian_of_a_small_model():
    ex = models.mlp_regression((3, 5, 1), batch=4)
    report = jc.check_grads(ex.fn, ex.params, *ex.args, order=2)
    parts = _parts(report)
    assert report.passed
    second = parts["second order"]
    assert second.verdict is jc.Verdict.CORRECT and second.relative_error < 1e-7
    # Every column: n directions × n entries.
    assert second.checked == report.size**2
    assert any(
        "forward over reverse" in n and "every column" in n for n in second.notes
    )


def test_a_wrong_second_derivative_is_located_to_row_and_column():
    @jax.custom_jvp
    def cube(x):
        return x**3

    @cube.defjvp
    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        # Right first derivative, but its own derivative is lost.
        return cube(x), t * 3 * jax.lax.stop_gradient(x) ** 2

    def loss(p):
        return jnp.sum(cube(p["a"]) * jnp.arange(1.0, 4.0)) + jnp.sum(jnp.sin(p["b"]))

    params = {"a": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([0.3, 0.4])}
    report = jc.check_grads(loss, params, order=2)
    parts = _parts(report)
    assert parts[REV].verdict is jc.Verdict.CORRECT
    assert parts["second order"].verdict is jc.Verdict.WRONG
    worst = parts["second order"].worst[0]
    assert (worst.path, worst.index, worst.column) == ("['a']", (2,), "['a'][2]")
    assert worst.numerical == pytest.approx(3 * 6 * 2.0, rel=1e-6)  # 6·x·3
    assert worst.analytic == 0.0
    assert "× ['a'][2]" in str(report)


def test_second_order_along_random_directions_for_larger_models():
    ex = models.mlp_classifier((16, 32, 4), batch=8)
    report = jc.check_grads(ex.fn, ex.params, *ex.args, order=2, mode="directional")
    second = _parts(report)["second order"]
    assert second.verdict is jc.Verdict.CORRECT
    assert any("random directions" in n for n in second.notes)


def test_second_order_of_a_custom_vjp():
    @jax.custom_vjp
    def square(x):
        return x**2

    square.defvjp(lambda x: (x**2, x), lambda x, ct: (2 * x * ct,))
    report = jc.check_grads(
        lambda w: jnp.sum(square(w) * w), jnp.linspace(-1, 1, 4), order=2
    )
    second = _parts(report)["second order"]
    assert report.passed and second.verdict is jc.Verdict.CORRECT
    assert any("Hessian-vector products by" in n for n in second.notes)


# -- vector-valued functions --------------------------------------------------------------


def _vector_fn(row_error=None):
    """tanh(x @ w); with ``row_error``, a custom_vjp that gets that output wrong."""

    @jax.custom_vjp
    def layer(w, x):
        return jnp.tanh(x @ w)

    def forward(w, x):
        y = jnp.tanh(x @ w)
        return y, (w, x, y)

    def backward(res, ct):
        w, x, y = res
        d = ct * (1 - y**2)
        if row_error is not None:
            d = d.at[row_error].multiply(1.5)
        return x.T @ d, d @ w.T

    layer.defvjp(forward, backward)
    params = {"w": jnp.linspace(-0.4, 0.4, 6).reshape(3, 2)}
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    return (lambda p, x: layer(p["w"], x)), params, x


def test_a_vector_output_is_refused_without_outputs():
    fn, params, x = _vector_fn()
    with pytest.raises(ValueError, match=r"outputs='project' or\s+outputs='jacobian'"):
        jc.check_grads(fn, params, x)


@pytest.mark.parametrize("outputs, parts", [("project", 3), ("jacobian", 8)])
def test_right_vector_functions_pass(outputs, parts):
    fn, params, x = _vector_fn()
    report = jc.check_grads(fn, params, x, outputs=outputs)
    assert report.passed and len(report.parts) == parts


@pytest.mark.parametrize("outputs", ["project", "jacobian"])
def test_a_wrong_output_entry_is_named(outputs):
    fn, params, x = _vector_fn(row_error=(2, 1))
    report = jc.check_grads(fn, params, x, outputs=outputs)
    assert report.verdict is jc.Verdict.WRONG
    assert report.worst[0].output == "output [2, 1]"
    assert "output [2, 1] wrt ['w']" in str(report)


def test_the_jacobian_is_limited_to_small_outputs():
    with pytest.raises(ValueError, match="allows at most 64"):
        jc.check_grads(lambda w: jnp.tanh(w), jnp.ones(100), outputs="jacobian")


def test_cotangents_share_one_compilation():
    traces = []

    def fn(w):
        traces.append(1)
        return jnp.sin(w) * w

    report = jc.check_grads(fn, jnp.linspace(0, 1, 5), outputs="project", cotangents=4)
    assert report.passed and len(report.parts) == 4
    assert len(traces) <= 3  # shape check, gradient, evaluations: not one per w


# -- custom rules and surrogates -------------------------------------------------------------


def test_a_stable_custom_rule_jax_could_not_derive_passes():
    """log-sum-exp of large inputs: the naive gradient overflows, the rule is exact."""

    @jax.custom_jvp
    def logsumexp(x):
        m = jnp.max(x)
        return m + jnp.log(jnp.sum(jnp.exp(x - m)))

    @logsumexp.defjvp
    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        return logsumexp(x), jnp.dot(jax.nn.softmax(x), t)

    x = jnp.array([1000.0, 1001.0, 999.5])
    naive = jax.grad(lambda v: jnp.log(jnp.sum(jnp.exp(v))))(x)
    assert not jnp.all(jnp.isfinite(naive))
    report = jc.check_grads(logsumexp, x, modes=("rev", "fwd"))
    assert report.verdict is jc.Verdict.CORRECT


def test_a_straight_through_surrogate_fails_and_its_declared_form_passes():
    params = {"w": jnp.linspace(-1.0, 1.0, 8).reshape(4, 2) + 0.05}
    x = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)

    def loss(p, x, exact=False):
        quantized = nn.straight_through(p["w"] * 4.0, exact=exact) / 4.0
        return jnp.sum(jnp.tanh(x @ quantized) ** 2)

    surrogate = jc.check_grads(loss, params, x)
    assert surrogate.verdict is jc.Verdict.WRONG
    assert {c.numerical for c in surrogate.worst} == {0.0}  # rounding is flat here

    declared = jc.check_grads(functools.partial(loss, exact=True), params, x)
    assert declared.passed


def test_report_parts_are_json_serialisable():
    ex = models.mlp_regression((3, 4, 1), batch=3)
    d = jc.check_grads(
        ex.fn, ex.params, *ex.args, modes=("rev", "fwd"), order=2
    ).to_dict()
    assert [p["label"] for p in d["parts"]] == [REV, FWD, "second order"]
    assert all(p["report"]["verdict"] == "correct" for p in d["parts"])
    assert np.isfinite(d["relative_error"])

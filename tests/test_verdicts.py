"""Verdicts that can be believed: steps, noise floors, kinks, randomness, bad input."""

from __future__ import annotations

import contextlib

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck import models
from tests import zoo

# -- helpers ------------------------------------------------------------------


@contextlib.contextmanager
def count_compilations():
    """Counts XLA backend compilations inside the block."""
    seen = []

    def listener(name, duration, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def relu_net_at_kink():
    """A ReLU net whose first sample puts hidden unit 0 exactly at zero."""
    params = {
        "w1": jnp.array([[1.0, -1.0, 0.5], [0.5, 1.0, -2.0]]),
        "b1": jnp.array([0.0, 0.3, -0.2]),
        "w2": jnp.array([[1.0], [2.0], [-1.0]]),
    }
    x = jnp.array([[0.0, 0.0], [1.0, 2.0]])

    def loss(p, x):
        h = jax.nn.relu(x @ p["w1"] + p["b1"])
        return jnp.sum((h @ p["w2"]) ** 2)

    return loss, params, x


# -- 1. step size -----------------------------------------------------------------


def _cholesky_loss():
    a = jax.random.normal(jax.random.key(0), (6, 6))
    w = jax.random.normal(jax.random.key(1), (6, 6))

    def loss(a):  # condition number of the SPD matrix is about 1e4
        return jnp.sum(jnp.linalg.cholesky(a @ a.T + 1e-2 * jnp.eye(6)) * w)

    return loss, a, ()


def _logdet_loss():
    a = jax.random.normal(jax.random.key(2), (6, 6))

    def loss(a):
        return jnp.linalg.slogdet(a @ a.T + 1e-2 * jnp.eye(6))[1]

    return loss, a, ()


def _deep_tanh():
    ex = models.deep_mlp(depth=30, width=8)
    return ex.fn, ex.params, ex.args


def _huge_loss():
    ex = models.mlp_classifier((6, 10, 4), batch=8)
    return (lambda p, x, y: 1e6 * ex.fn(p, x, y)), ex.params, ex.args


@pytest.mark.parametrize(
    "make",
    [_cholesky_loss, _logdet_loss, _deep_tanh, _huge_loss],
    ids=["cholesky", "logdet", "tanh30", "loss_1e6"],
)
def test_default_step_reaches_float64_accuracy(make):
    fn, params, args = make()
    report = jc.check_grads(fn, params, *args)
    assert report.verdict is jc.Verdict.CORRECT, str(report)
    assert report.relative_error < 1e-8


def test_step_is_reported_and_an_explicit_eps_wins():
    fn, params, args = _huge_loss()
    auto = jc.check_grads(fn, params, *args)
    assert auto.step_rule == "relative"
    assert auto.eps == pytest.approx(np.cbrt(np.finfo(np.float64).eps))
    assert all(c.step >= auto.eps * 0.99 for c in auto.worst)

    fixed = jc.check_grads(fn, params, *args, eps=1e-4)
    assert fixed.step_rule == "absolute" and fixed.eps == 1e-4
    assert {round(c.step, 12) for c in fixed.worst} == {1e-4}
    assert fixed.passed
    assert "eps 1.00e-04" in str(fixed)


# -- 2. per-leaf verdicts and the resolution floor ----------------------------------


def test_a_bug_in_a_leaf_with_tiny_gradients_is_not_hidden():
    """A vanishing first layer has gradients far below the head's."""
    ex = models.deep_mlp(depth=12, width=8, n_out=4)
    small = [
        {"w": 0.3 * layer["w"], "b": layer["b"]} if i < 12 else layer
        for i, layer in enumerate(ex.params)
    ]

    def corrupt(g):
        g = [dict(layer) for layer in g]
        g[0]["w"] = 1.5 * g[0]["w"]
        return g

    broken = zoo.corrupt_gradient(ex.fn, corrupt)
    grads = jax.grad(ex.fn)(small, *ex.args)
    assert jnp.linalg.norm(grads[0]["w"]) < 1e-5 * jnp.linalg.norm(grads[-1]["b"])

    report = jc.check_grads(broken, small, *ex.args)
    assert report.relative_error < 1e-6  # the global number looks perfect...
    assert report.verdict is jc.Verdict.WRONG  # ...but the first leaf is wrong
    assert report.leaves[1].path == "[0]['w']"
    assert report.leaves[1].verdict is jc.Verdict.WRONG
    assert report.leaves[1].note == "scaled by 1.5"
    assert report.worst[0].path == "[0]['w']"


def test_leaf_below_the_noise_floor_is_unresolved_with_a_remedy():
    def loss(p):
        return 1e6 * jnp.sum(p["big"] ** 2) + 1e-9 * jnp.sum(jnp.sin(p["tiny"]))

    params = {"big": jnp.ones(3), "tiny": jnp.ones(4)}
    report = jc.check_grads(loss, params)
    leaves = {leaf.path: leaf for leaf in report.leaves}
    assert leaves["['big']"].verdict is jc.Verdict.CORRECT
    assert leaves["['tiny']"].verdict is jc.Verdict.UNRESOLVED
    assert leaves["['tiny']"].resolution > 1.0
    assert report.verdict is jc.Verdict.UNRESOLVED and not report.passed
    assert any("['tiny']" in n and "Remedies" in n for n in report.notes)
    assert "UNRESOLVED" in str(report)


def test_unused_parameter_with_zero_gradient_is_correct():
    def loss(p):
        return jnp.sum(jnp.tanh(p["used"]))

    report = jc.check_grads(loss, {"used": jnp.ones(3), "unused": jnp.ones(2)})
    assert report.passed
    assert [leaf.relative_error for leaf in report.leaves] == [
        0.0,
        pytest.approx(0, abs=1e-9),
    ]


# -- 3. kinks -------------------------------------------------------------------------


def test_relu_exactly_at_its_kink_passes_with_the_kink_reported():
    loss, params, x = relu_net_at_kink()
    report = jc.check_grads(loss, params, x)
    assert report.verdict is jc.Verdict.KINKS and report.passed
    assert [(c.path, c.index) for c in report.kinks] == [("['b1']", (0,))]
    kink = report.kinks[0]
    assert kink.numerical != pytest.approx(kink.analytic, rel=1e-3)
    assert "kink" in str(report)


def test_relu_at_its_kink_with_a_wrong_gradient_still_fails():
    loss, params, x = relu_net_at_kink()

    def corrupt(g):
        return {**g, "w2": -g["w2"]}

    report = jc.check_grads(zoo.corrupt_gradient(loss, corrupt), params, x)
    assert report.verdict is jc.Verdict.WRONG
    assert report.worst[0].path == "['w2']"
    assert [(c.path, c.index) for c in report.kinks] == [("['b1']", (0,))]


@pytest.mark.parametrize(
    "fn, x, expected",
    [
        (
            lambda v: jnp.sum(jnp.abs(v) * jnp.arange(1.0, 4.0)),
            [0.0, 1.0, -2.0],
            [(0,)],
        ),
        (lambda v: 3 * jnp.max(v) + v[0], [1.0, 1.0, 0.5], [(0,), (1,)]),
        (
            lambda v: jnp.sort(v) @ jnp.arange(1.0, 5.0),
            [0.3, 0.3, -1.0, 2.0],
            [(0,), (1,)],
        ),
        (lambda v: jnp.sum(jax.nn.relu(v) * 2.0), [0.0, 1.0], [(0,)]),
    ],
    ids=["abs", "max_tie", "sort_tie", "relu"],
)
def test_kinks_are_detected_from_the_evaluations(fn, x, expected):
    report = jc.check_grads(fn, jnp.array(x))
    assert report.verdict is jc.Verdict.KINKS, str(report)
    assert [c.index for c in report.kinks] == expected


def test_strong_curvature_is_not_mistaken_for_a_kink():
    """At a stationary point the one-sided differences differ, smoothly."""
    report = jc.check_grads(lambda v: jnp.sum(jnp.cos(v)), jnp.zeros(4))
    assert report.verdict is jc.Verdict.CORRECT and report.kinks == ()


# -- 4. randomness ----------------------------------------------------------------------


def _noisy_loss(scale):
    """``sum(p²)`` plus fresh host-side noise at every evaluation."""
    rng = np.random.default_rng(0)

    def noise(x):
        return (x + scale * rng.normal()).astype(x.dtype)

    @jax.custom_jvp
    def add_noise(value):
        return jax.pure_callback(
            noise,
            jax.ShapeDtypeStruct((), value.dtype),
            value,
            vmap_method="sequential",
        )

    add_noise.defjvp(lambda primals, tangents: (add_noise(*primals), tangents[0]))

    def loss(p):
        return add_noise(jnp.sum(p**2))

    return loss


def test_nondeterminism_is_measured_and_fails_the_check():
    report = jc.check_grads(_noisy_loss(1e-3), jnp.ones(4))
    assert not report.passed
    assert 1e-5 < report.nondeterminism < 1e-2
    assert any("not deterministic" in n and "nondet_tol" in n for n in report.notes)
    assert not report.deterministic and not report.to_dict()["deterministic"]
    # The verdict line names the cause instead of guessing at a subtle bug.
    assert "measure its randomness" in str(report).splitlines()[-1]


def test_nondet_tol_accepts_a_known_amount_but_noise_still_limits_resolution():
    report = jc.check_grads(_noisy_loss(1e-3), jnp.ones(4), nondet_tol=1e-2)
    assert not any("not deterministic" in n for n in report.notes)
    # Noise of 1e-3 on a loss of 4 swamps a step of 6e-6: nothing is resolved.
    assert report.verdict is jc.Verdict.UNRESOLVED


def test_tiny_noise_within_tolerance_passes():
    report = jc.check_grads(_noisy_loss(1e-13), jnp.ones(4), nondet_tol=1e-11)
    assert report.passed, str(report)


def test_keys_anywhere_are_passed_through_and_never_perturbed():
    params = {
        "w": jnp.linspace(-1.0, 1.0, 3),
        "typed": jax.random.key(0),
        "raw": jax.random.PRNGKey(1),
    }
    seen = []

    def loss(p, x, arg_key, key):
        seen.append((p["typed"], p["raw"], arg_key, key))
        noise = jax.random.normal(p["typed"], (3,)) + jax.random.normal(p["raw"], (3,))
        noise = noise + jax.random.normal(arg_key, (3,)) + jax.random.normal(key, (3,))
        return jnp.sum(jnp.tanh(p["w"] * x + noise))

    report = jc.check_grads(
        loss, params, jnp.arange(3.0), jax.random.PRNGKey(2), key=jax.random.key(3)
    )
    assert report.passed and report.nondeterminism == 0.0
    assert report.size == 3
    assert dict(report.unchecked) == {
        "['raw']": "uint32 array (not differentiable)",
        "['typed']": "PRNG key (never perturbed)",
    }


# -- 5. leaves that are not differentiable ---------------------------------------------


def test_integer_boolean_and_static_leaves_are_left_alone_and_named():
    params = {
        "w": jnp.ones(3),
        "step": jnp.int32(3),
        "mask": jnp.array([True, False, True]),
        "name": "layer",
        "depth": 2,
    }

    def loss(p):
        return (
            jnp.sum(jnp.where(p["mask"], jnp.tanh(p["w"]), 0.0))
            * p["step"]
            * p["depth"]
        )

    report = jc.check_grads(loss, params)
    assert report.passed
    assert [leaf.path for leaf in report.leaves] == ["['w']"]
    assert dict(report.unchecked) == {
        "['depth']": "int (not an array)",
        "['mask']": "bool array (not differentiable)",
        "['name']": "str (not an array)",
        "['step']": "int32 array (not differentiable)",
    }
    assert "not checked" in str(report)


def test_a_pytree_without_floating_leaves_is_a_clear_error():
    with pytest.raises(ValueError, match=r"nothing to check.*\['n'\]: int32 array"):
        jc.check_grads(lambda p: 1.0, {"n": jnp.int32(3)})
    with pytest.raises(ValueError, match="it is empty"):
        jc.check_grads(lambda p: 1.0, {})


# -- 6. precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_low_precision_params_are_checked_in_float64_by_default(dtype):
    ex = models.mlp_classifier((6, 10, 4), batch=8)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), ex.params)
    report = jc.check_grads(ex.fn, params, *ex.args)
    assert report.dtype == "float64"
    assert set(report.given_dtypes) == {str(jnp.dtype(dtype))}
    assert report.relative_error < 1e-8 and report.passed
    assert all(leaf.dtype == str(jnp.dtype(dtype)) for leaf in report.leaves)


@pytest.mark.parametrize(
    "dtype, floor",
    [(jnp.float32, 1e-3), (jnp.bfloat16, 1e-1), (jnp.float16, 5e-2)],
)
def test_native_precision_passes_right_and_fails_wrong(dtype, floor):
    ex = models.mlp_classifier((6, 10, 4), batch=8)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), ex.params)
    x = ex.args[0].astype(dtype)

    right = jc.check_grads(ex.fn, params, x, ex.args[1], dtype="native")
    assert right.passed, str(right)
    assert right.relative_error < floor
    assert right.dtype == str(jnp.dtype(dtype))
    assert right.tolerances == jc.report.tolerances_for(dtype)

    def corrupt(g):
        g = [dict(layer) for layer in g]
        g[1]["b"] = -g[1]["b"]
        return g

    broken = zoo.corrupt_gradient(ex.fn, corrupt)
    wrong = jc.check_grads(broken, params, x, ex.args[1], dtype="native")
    assert wrong.verdict is jc.Verdict.WRONG
    assert wrong.worst[0].path == "[1]['b']"


def test_mixed_dtypes_use_each_leafs_own_tolerance():
    params = {"wide": jnp.linspace(0.1, 1.0, 4), "narrow": jnp.ones(3, jnp.bfloat16)}

    def loss(p):
        return jnp.sum(jnp.sin(p["wide"])) + jnp.sum(
            jnp.cos(p["narrow"].astype(jnp.float32))
        )

    report = jc.check_grads(loss, params, dtype="native")
    leaves = {leaf.path: leaf for leaf in report.leaves}
    assert report.passed
    assert leaves["['wide']"].relative_error < 1e-4
    assert leaves["['narrow']"].dtype == "bfloat16"
    assert report.dtype == "float32"  # the loss's dtype bounds the precision


# -- 7. bad input -------------------------------------------------------------------------


def _raises_before_compiling(exc, match, fn, *args, **kwargs):
    with count_compilations() as compiled, pytest.raises(exc, match=match):
        jc.check_grads(fn, *args, **kwargs)
    assert compiled == [], "the error must come before any compilation"


def test_non_scalar_output_suggests_a_projection_or_has_aux():
    _raises_before_compiling(
        ValueError,
        r"scalar loss; it returned an array of shape \(3,\).*projection.*has_aux=True",
        lambda p: jnp.tanh(p) * 2.0,
        jnp.ones(3),
    )


def test_complex_loss_is_refused():
    _raises_before_compiling(
        ValueError,
        "complex loss",
        lambda p: jnp.sum(p * 1j),
        jnp.ones(3),
    )


def test_argnums_out_of_range():
    _raises_before_compiling(
        ValueError,
        r"argnums=2 is out of range: fn is called with 2 positional argument\(s\)",
        lambda p, x: jnp.sum(p * x),
        jnp.ones(3),
        jnp.ones(3),
        argnums=2,
    )


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan"), float("inf")])
def test_eps_must_be_positive(eps):
    _raises_before_compiling(
        ValueError,
        "eps must be a positive, finite step",
        lambda p: jnp.sum(p),
        jnp.ones(2),
        eps=eps,
    )


def test_eps_below_the_dtype_resolution():
    with pytest.raises(
        ValueError,
        match=r"below the resolution of float32 at \(root\)\[1\] \(value 100\)",
    ):
        jc.check_grads(
            lambda p: jnp.sum(p**2), jnp.array([0.0, 100.0]), eps=1e-6, dtype="native"
        )


def test_key_given_to_a_function_without_a_key_parameter():
    _raises_before_compiling(
        TypeError,
        "takes no keyword argument named `key`",
        lambda p: jnp.sum(p),
        jnp.ones(2),
        key=jax.random.key(0),
    )


def test_nan_loss_and_nan_gradient_name_where():
    with pytest.raises(FloatingPointError, match="fn returned nan"):
        jc.check_grads(lambda p: jnp.sum(jnp.log(p)), jnp.array([1.0, -1.0]))
    with pytest.raises(FloatingPointError, match=r"not finite at \['b'\]\[1\]"):
        jc.check_grads(
            lambda p: jnp.sum(jnp.sqrt(p["b"])) + jnp.sum(p["a"]),
            {"a": jnp.ones(2), "b": jnp.array([1.0, 0.0])},
        )


def test_unknown_mode_and_dtype():
    with pytest.raises(ValueError, match="mode must be one of"):
        jc.check_grads(lambda p: jnp.sum(p), jnp.ones(2), mode="everything")
    with pytest.raises(ValueError, match="floating dtype"):
        jc.check_grads(lambda p: jnp.sum(p), jnp.ones(2), dtype=jnp.int32)


def test_has_aux_without_a_pair():
    with pytest.raises(TypeError, match=r"has_aux=True expects fn to return a pair"):
        jc.check_grads(lambda p: jnp.sum(p), jnp.ones(2), has_aux=True)


# -- complex parameters -------------------------------------------------------------------


def test_complex_parameters_follow_jax_gradient_convention():
    z = jnp.array([1 + 2j, -0.5 + 0.3j, 0.2 - 1j], dtype=jnp.complex64)
    w = jnp.array([1.0, 2.0, 3.0])
    c = jnp.array([1 + 1j, 2 - 1j, 0.5j])

    def loss(p):
        return jnp.sum(jnp.abs(p["z"]) ** 2 * w) + jnp.real(p["z"] @ c)

    report = jc.check_grads(loss, {"z": z, "x": jnp.ones(2)})
    assert report.passed and report.relative_error < 1e-9
    leaf = next(leaf for leaf in report.leaves if leaf.path == "['z']")
    assert leaf.size == 6 and leaf.dtype == "complex64"


def test_a_gradient_missing_its_conjugate_is_caught_on_the_imaginary_part():
    w = jnp.array([1.0, 2.0, 3.0])

    @jax.custom_vjp
    def loss(z):
        return jnp.sum(jnp.abs(z) ** 2 * w)

    # JAX's convention wants 2·w·conj(z); this rule forgets the conjugate.
    loss.defvjp(lambda z: (loss(z), z), lambda z, ct: (ct * 2 * w * z,))
    report = jc.check_grads(loss, jnp.array([1 + 2j, -0.5 + 0.3j, 0.2 - 1j]))
    assert report.verdict is jc.Verdict.WRONG
    assert {c.part for c in report.worst if c.abs_error > 1e-3} == {"imag"}
    assert report.worst[0].index == (2,)
    assert "(root)[2].imag" in str(report)

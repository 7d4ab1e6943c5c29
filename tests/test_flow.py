"""Tests for jaxcheck.flow: taps, gradient norms, diagnose, depth profiles."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import flow, init, nn

# ----------------------------------------------------------------- helpers


def small_model(w, x):
    """Two tapped layers; the tap after the second is the loss's input."""
    h = flow.tap(x, "x")
    h = flow.tap(jnp.tanh(h @ w), "h1")
    h = flow.tap(jnp.sin(h @ w), "h2")
    return jnp.sum(h**2)


def small_inputs():
    w = jax.random.normal(jax.random.key(0), (3, 3))
    x = jax.random.normal(jax.random.key(1), (4, 3))
    return w, x


def reference_stats(w, x):
    """‖∂J/∂h‖ and rms(h) of small_model's three taps, by splitting the model."""
    h1 = jnp.tanh(x @ w)
    h2 = jnp.sin(h1 @ w)
    g_x = jax.grad(lambda x: small_model(w, x))(x)
    g_h1 = jax.grad(lambda h1: jnp.sum(jnp.sin(h1 @ w) ** 2))(h1)
    g_h2 = 2 * h2
    signal = [jnp.linalg.norm(g) for g in (g_x, g_h1, g_h2)]
    rms = [jnp.sqrt(jnp.mean(h**2)) for h in (x, h1, h2)]
    return np.array(signal), np.array(rms)


_LOSSES = {}


def tapped_loss(activation):
    """J = Σ v ⊙ MLP(x) with a tap on the input and after every layer.

    One function object per activation, as a user would write it.
    """
    if activation not in _LOSSES:
        phi = nn.get_activation(activation)

        def loss(params, x, v):
            h = flow.tap(x, "h0")
            for i, layer in enumerate(params):
                h = flow.tap(phi(nn.dense(layer, h)), f"h{i + 1}")
            return jnp.sum(v * h)

        _LOSSES[activation] = loss
    return _LOSSES[activation]


def diagnose_mlp(activation, scheme, depth=150, width=32, batch=32, seed=0):
    """diagnose() of a freshly initialised tapped MLP, in float64."""
    with jax.enable_x64(True):
        key_p, key_x, key_v = jax.random.split(jax.random.key(seed), 3)
        params = init.mlp_params(
            key_p, [width] * (depth + 1), scheme, dtype=jnp.float64
        )
        x = jax.random.normal(key_x, (batch, width), jnp.float64)
        v = jax.random.normal(key_v, (batch, width), jnp.float64)
        return flow.diagnose(tapped_loss(activation), params, x, v)


@pytest.fixture(autouse=True)
def no_global_state_left():
    """Every test leaves the x64 flag and the collector stack as it found them."""
    x64 = jax.config.jax_enable_x64
    yield
    assert jax.config.jax_enable_x64 == x64
    assert flow._collectors() == []


# --------------------------------------------------------------------- tap


def test_tap_is_the_identity_outside_a_collector():
    x = jnp.arange(3.0)
    assert flow.tap(x, "x") is x
    np.testing.assert_array_equal(
        jax.grad(lambda x: jnp.sum(flow.tap(x, "x") ** 2))(x), 2 * x
    )


def test_value_and_grads_are_those_of_jax():
    w, x = small_inputs()
    value, grad, _ = flow.value_grad_and_taps(small_model)(w, x)
    ref_value, ref_grad = jax.value_and_grad(small_model)(w, x)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5)


def test_taps_record_signal_norm_and_rms():
    w, x = small_inputs()
    _, _, taps = flow.value_grad_and_taps(small_model)(w, x)
    signal, rms = reference_stats(w, x)
    assert taps.names == ("x", "h1", "h2")
    np.testing.assert_allclose(taps.signal, signal, rtol=1e-5)
    np.testing.assert_allclose(taps.rms, rms, rtol=1e-5)
    np.testing.assert_array_equal(taps.count, [12, 12, 12])
    np.testing.assert_allclose(taps["h1"]["signal"], signal[1], rtol=1e-5)


def test_taps_under_jit_and_no_state_between_calls():
    w, x = small_inputs()
    f = jax.jit(flow.value_grad_and_taps(small_model))
    first = f(w, x)[2]
    second = f(2 * w, x)[2]  # same compiled function, new values
    np.testing.assert_allclose(first.signal, reference_stats(w, x)[0], rtol=1e-5)
    np.testing.assert_allclose(second.signal, reference_stats(2 * w, x)[0], rtol=1e-5)
    assert first.names == second.names == ("x", "h1", "h2")
    # a tap used after the collection is again the identity
    assert flow.tap(x, "x") is x


def test_taps_under_outer_vmap_are_per_example():
    w, x = small_inputs()
    per_example = jax.vmap(flow.value_grad_and_taps(small_model), in_axes=(None, 0))
    _, grads, taps = per_example(w, x)
    assert grads.shape == (4, 3, 3)
    assert taps.signal.shape == (4, 3)
    for i in (0, 3):
        np.testing.assert_allclose(
            taps.signal[i], reference_stats(w, x[i : i + 1])[0], rtol=1e-5
        )
    # squared norms add up over the batch
    pooled = jnp.sqrt(jnp.sum(taps.signal**2, axis=0))
    np.testing.assert_allclose(pooled, reference_stats(w, x)[0], rtol=1e-5)


def test_taps_inside_an_inner_vmap_pool_over_the_batch():
    w, x = small_inputs()

    def per_example_model(w, x):
        def one(xi):
            h = flow.tap(xi, "x")
            h = flow.tap(jnp.tanh(h @ w), "h1")
            return flow.tap(jnp.sin(h @ w), "h2")

        return jnp.sum(jax.vmap(one)(x) ** 2)

    _, _, taps = jax.jit(flow.value_grad_and_taps(per_example_model))(w, x)
    signal, rms = reference_stats(w, x)
    np.testing.assert_allclose(taps.signal, signal, rtol=1e-5)
    np.testing.assert_allclose(taps.rms, rms, rtol=1e-5)
    np.testing.assert_array_equal(taps.count, [12, 12, 12])


def test_a_tap_inside_scan_pools_over_iterations():
    w, x = small_inputs()
    w = w / 2

    def scanned(w, x):
        def body(h, _):
            return flow.tap(jnp.tanh(h @ w), "h"), None

        return jnp.sum(jax.lax.scan(body, x, None, length=3)[0] ** 2)

    def unrolled(w, x):
        h = x
        for i in range(3):
            h = flow.tap(jnp.tanh(h @ w), f"h{i}")
        return jnp.sum(h**2)

    _, _, pooled = flow.value_grad_and_taps(scanned)(w, x)
    _, _, each = flow.value_grad_and_taps(unrolled)(w, x)
    assert pooled.names == ("h",)
    np.testing.assert_allclose(
        pooled.signal[0], jnp.sqrt(jnp.sum(each.signal**2)), rtol=1e-5
    )
    np.testing.assert_array_equal(pooled.count, [36])


def test_argnums_and_has_aux():
    def model(a, b, x):
        h = flow.tap(x * a, "h")
        return jnp.sum(h * b), {"mean": jnp.mean(h)}

    f = flow.value_grad_and_taps(model, argnums=(0, 1), has_aux=True)
    (value, aux), (grad_a, grad_b), taps = f(2.0, 3.0, jnp.ones(4))
    assert float(value) == 24.0
    assert float(aux["mean"]) == 2.0
    assert (float(grad_a), float(grad_b)) == (12.0, 8.0)
    np.testing.assert_allclose(taps.signal, [6.0])  # ∂J/∂h = 3 in 4 entries


def test_negative_and_out_of_range_argnums():
    def model(a, x):
        return jnp.sum(flow.tap(a * x, "h"))

    _, grad, _ = flow.value_grad_and_taps(model, argnums=-1)(2.0, jnp.ones(3))
    np.testing.assert_allclose(grad, [2.0, 2.0, 2.0])
    with pytest.raises(
        ValueError, match=r"argnums=2 is out of range for a call with 2"
    ):
        flow.value_grad_and_taps(model, argnums=2)(2.0, jnp.ones(3))


def test_a_tap_that_does_not_reach_the_loss():
    def model(w, x):
        flow.tap(x * 2, "unused")
        return jnp.sum(flow.tap(x * w, "used"))

    _, _, taps = flow.value_grad_and_taps(model)(1.0, jnp.ones(4))
    assert float(taps["unused"]["signal"]) == 0.0
    assert float(taps["unused"]["count"]) == 0.0
    assert math.isnan(float(taps["unused"]["rms"]))
    assert float(taps["used"]["signal"]) == 2.0


def test_taps_under_checkpoint_and_in_the_branches_of_cond():
    def model(w, x):
        h = jax.checkpoint(lambda x: flow.tap(jnp.tanh(x * w), "a"))(x)
        h = jax.lax.cond(
            jnp.sum(x) > 0,
            lambda h: flow.tap(2 * h, "positive"),
            lambda h: flow.tap(3 * h, "negative"),
            h,
        )
        return jnp.sum(h)

    _, _, taps = jax.jit(flow.value_grad_and_taps(model))(1.0, jnp.ones(3))
    assert taps.names == ("a", "positive", "negative")
    np.testing.assert_allclose(
        taps.signal, [2 * math.sqrt(3), math.sqrt(3), 0.0], rtol=1e-6
    )
    np.testing.assert_array_equal(taps.count, [3, 3, 0])  # the branch not taken
    assert math.isnan(float(taps.rms[2]))


def test_no_taps():
    _, grad, taps = flow.value_grad_and_taps(lambda w: w**2)(3.0)
    assert float(grad) == 6.0
    assert len(taps) == 0
    assert taps.signal.shape == (0,)


def test_the_collector_stack_is_emptied_after_an_error():
    def broken(w):
        flow.tap(w, "w")
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        flow.value_grad_and_taps(broken)(jnp.ones(2))


@pytest.mark.parametrize(
    ("h", "name", "match"),
    [
        (jnp.ones(2), 3, r"tap: name must be a string; received 3"),
        (jnp.arange(3), "h", r"tap\('h'\): expected a real floating array; .*int32"),
        ([1.0, 2.0], "h", r"received list with dtype None"),
    ],
)
def test_tap_rejects_bad_arguments(h, name, match):
    with pytest.raises(TypeError, match=match):
        flow.tap(h, name)


def test_taps_unknown_name():
    _, _, taps = flow.value_grad_and_taps(small_model)(*small_inputs())
    with pytest.raises(
        KeyError, match=r"No tap named 'h9'; the taps are \('x', 'h1', 'h2'\)"
    ):
        taps["h9"]


# ---------------------------------------------------------- gradient_norms


def test_gradient_norms_per_leaf_and_per_layer():
    params = init.mlp_params(jax.random.key(0), [4, 8, 2])
    x = jax.random.normal(jax.random.key(1), (5, 4))

    def loss(params, x):
        return jnp.sum(nn.mlp(params, x) ** 2)

    norms = flow.gradient_norms(loss, params, x)
    grads = jax.grad(loss)(params, x)
    assert list(norms.leaves) == ["[0]['b']", "[0]['w']", "[1]['b']", "[1]['w']"]
    for i in range(2):
        for name in ("w", "b"):
            expected = float(jnp.linalg.norm(grads[i][name]))
            assert norms.leaves[f"[{i}]['{name}']"] == pytest.approx(expected, rel=1e-5)
            assert norms.layers[f"[{i}]"][f"['{name}']"] == pytest.approx(
                expected, rel=1e-5
            )
        layer = math.hypot(norms.leaves[f"[{i}]['b']"], norms.leaves[f"[{i}]['w']"])
        assert norms.layer_norms[f"[{i}]"] == pytest.approx(layer)
    assert norms.sequential
    assert norms.layer_ratio == pytest.approx(
        norms.layer_norms["[0]"] / norms.layer_norms["[1]"]
    )
    assert set(norms.leaf_ratios) == {"['b']", "['w']"}
    assert norms.loss == pytest.approx(float(loss(params, x)), rel=1e-6)
    json.dumps(norms.to_dict())
    assert "[1]['w']" in str(norms)


def test_gradient_norms_of_a_dict_and_of_non_float_leaves():
    params = {
        "scale": jnp.array(2.0),
        "steps": 3,
        "enc": {"w": jnp.ones(3)},
        "name": "m",
    }

    def loss(p, x):
        return p["scale"] * jnp.sum(p["enc"]["w"] * x) * p["steps"]

    norms = flow.gradient_norms(loss, params, jnp.arange(3.0))
    assert norms.leaves == pytest.approx(
        {"['enc']['w']": 2 * 3 * math.sqrt(5), "['scale']": 9.0}
    )
    assert list(norms.layers) == ["['enc']", "['scale']"]
    assert norms.layers["['scale']"] == {"": 9.0}
    assert not norms.sequential
    assert norms.layer_ratio is None
    assert norms.leaf_ratios == {}


def test_gradient_norms_passes_the_key():
    params = [{"w": jnp.ones((4, 100)), "b": jnp.zeros(100)}]

    def loss(p, x, key):
        return jnp.sum(nn.dropout(nn.dense(p[0], x), 0.5, key))

    x = jnp.ones(4)
    a = flow.gradient_norms(loss, params, x, key=jax.random.key(0))
    b = flow.gradient_norms(loss, params, x, key=jax.random.key(0))
    c = flow.gradient_norms(loss, params, x, key=jax.random.key(1))
    assert a.leaves == b.leaves
    assert a.leaves != c.leaves


def test_gradient_norms_do_not_underflow_in_float32():
    # each entry of the gradient is 1e-30: a plain sum of squares (1e-60)
    # underflows in float32, a norm scaled by the largest entry does not
    norms = flow.gradient_norms(
        lambda w: 1e-30 * jnp.sum(w), jnp.ones(100, jnp.float32)
    )
    assert norms.leaves[""] == pytest.approx(1e-29, rel=1e-5)


def test_tapped_signals_do_not_underflow_in_float32():
    # ∂J/∂h has entries of 1e-30, representable in float32, but its squares
    # are not: the tap statistics must not read it as zero.
    def loss(w, x):
        h = flow.tap(x * w, "h0")
        return 1e-30 * jnp.sum(flow.tap(h, "h1"))

    w, x = jnp.ones(100, jnp.float32), jnp.ones(100, jnp.float32)
    report = flow.diagnose(loss, w, x)
    assert report.signal["h0"] == pytest.approx(1e-29, rel=1e-5)
    assert report.signal_ratio == pytest.approx(1.0, rel=1e-5)
    assert not jax.config.jax_enable_x64 and w.dtype == jnp.float32


def test_gradient_norms_without_float_leaves_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"no floating leaf to differentiate; .* types \['int'\]"
    ):
        flow.gradient_norms(lambda p: 0.0, {"n": 3})


# ----------------------------------------------------------------- diagnose

# (activation, initialiser, depth, verdict, and bounds on the signal ratio
# ‖∂J/∂h_0‖ / ‖∂J/∂h_depth‖), width 32, float64. ReLU runs 60 layers: its
# verdicts are clear by then, and a smaller unrolled model compiles faster.
NETWORKS = [
    pytest.param(
        "tanh", init.scaled(0.5), 150, "vanishing", 1e-49, 1e-43, id="tanh-0.5"
    ),
    pytest.param("tanh", init.scaled(2.0), 150, "exploding", 1e7, 1e11, id="tanh-2.0"),
    pytest.param("tanh", "lecun_normal", 150, "healthy", 1e-3, 1.0, id="tanh-lecun"),
    pytest.param(
        "linear", init.scaled(0.9), 150, "vanishing", 1e-9, 1e-5, id="linear-0.9"
    ),
    pytest.param(
        "linear", init.scaled(1.1), 150, "exploding", 1e4, 1e8, id="linear-1.1"
    ),
    pytest.param("relu", "lecun_normal", 60, "vanishing", 1e-12, 1e-7, id="relu-lecun"),
    pytest.param("relu", "he_normal", 60, "healthy", 1e-2, 10.0, id="relu-he"),
]


@pytest.mark.parametrize(
    ("activation", "scheme", "depth", "verdict", "low", "high"), NETWORKS
)
def test_diagnose_verdicts(activation, scheme, depth, verdict, low, high):
    report = diagnose_mlp(activation, scheme, depth=depth)
    assert report.verdict == verdict
    assert report.basis == "signal"
    assert low < report.signal_ratio < high
    assert report.ratio == report.signal_ratio
    assert list(report.signal) == [f"h{i}" for i in range(depth + 1)]
    assert len(report.gradients.layers) == depth


def test_diagnose_linear_0_9_signal_vanishes_while_weight_gradients_balance():
    report = diagnose_mlp("linear", init.scaled(0.9))
    assert 1e-9 < report.signal_ratio < 1e-6  # 0.9**150 ≈ 1.4e-7
    ratios = report.gradients.leaf_ratios
    assert 1 / 3 < ratios["['w']"] < 3  # the weight gradients barely change
    assert ratios["['b']"] < 1e-6  # the bias gradient is the batch-summed signal
    text = str(report)
    assert "VANISHING" in text
    assert "['w']" in text and "signal ratio" in text


def test_diagnose_signal_matches_direct_gradients():
    with jax.enable_x64(True):
        params = init.mlp_params(jax.random.key(0), [8] * 6, dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (4, 8), jnp.float64)
        v = jax.random.normal(jax.random.key(2), (4, 8), jnp.float64)
        loss = tapped_loss("tanh")
        report = flow.diagnose(loss, params, x, v)
        grad_x_norm = float(jnp.linalg.norm(jax.grad(loss, argnums=1)(params, x, v)))
        v_norm = float(jnp.linalg.norm(v))
        x_rms = float(jnp.sqrt(jnp.mean(x**2)))
        value = float(loss(params, x, v))
    assert report.signal["h0"] == pytest.approx(grad_x_norm, rel=1e-12)
    assert report.signal["h5"] == pytest.approx(v_norm, rel=1e-12)
    assert report.activation_rms["h0"] == pytest.approx(x_rms, rel=1e-12)
    assert report.loss == pytest.approx(value, rel=1e-12)


def test_diagnose_without_taps_falls_back_to_layer_gradients_and_says_so():
    params = init.mlp_params(jax.random.key(0), [8, 8, 8, 2])

    def loss(params, x):
        return jnp.sum(nn.mlp(params, x) ** 2)

    report = flow.diagnose(loss, params, jnp.ones((4, 8)))
    assert report.basis == "layer gradients"
    assert report.signal == {} and report.signal_ratio is None
    assert report.ratio == pytest.approx(report.gradients.layer_ratio)
    assert "no taps" in str(report)


def test_diagnose_undetermined_without_taps_or_layers():
    report = flow.diagnose(lambda w, x: jnp.sum(w * x), jnp.ones(3), jnp.ones(3))
    assert report.verdict == "undetermined"
    assert math.isnan(report.ratio)
    assert "UNDETERMINED" in str(report)


def test_diagnose_custom_thresholds_and_report():
    report = diagnose_mlp("tanh", "lecun_normal", seed=1)
    assert report.verdict == "healthy"
    again = diagnose_mlp("tanh", "lecun_normal", seed=1)
    assert again.signal_ratio == report.signal_ratio  # deterministic
    with jax.enable_x64(True):
        params = init.mlp_params(jax.random.key(1), [32] * 151, dtype=jnp.float64)
        x = jnp.ones((32, 32), jnp.float64)
        tight = flow.diagnose(
            tapped_loss("tanh"),
            params,
            x,
            x,
            vanishing_below=0.99,
            exploding_above=1.01,
        )
    assert tight.verdict == "vanishing"
    assert f"{tight.ratio:.3e}" in str(tight)
    data = json.loads(json.dumps(tight.to_dict()))
    assert data["verdict"] == tight.verdict
    assert data["vanishing_below"] == 0.99
    assert len(data["signal"]) == 151


@pytest.mark.parametrize(("below", "above"), [(0.0, 10.0), (2.0, 10.0), (1e-3, 0.5)])
def test_diagnose_rejects_bad_thresholds(below, above):
    with pytest.raises(
        ValueError, match=r"0 < vanishing_below <= 1 <= exploding_above"
    ):
        flow.diagnose(
            lambda w: jnp.sum(w),
            jnp.ones(2),
            vanishing_below=below,
            exploding_above=above,
        )


# --------------------------------------------------------------- mean field


def brute_force_moments(phi, dphi, q):
    z = np.linspace(-12, 12, 400_001)
    density = np.exp(-(z**2) / 2) / np.sqrt(2 * np.pi)
    u = np.sqrt(q) * z
    return (
        np.trapezoid(density * phi(u) ** 2, z),
        np.trapezoid(density * dphi(u) ** 2, z),
    )


@pytest.mark.parametrize("sigma_w", [0.5, 1.0, 2.0, 6.0])
def test_mean_field_tanh_matches_brute_force_integration(sigma_w):
    s2 = sigma_w**2
    field = flow.mean_field("tanh", s2, depth=3, input_moment=1.3)
    q = s2 * 1.3
    for layer in range(3):
        phi_sq, slope_sq = brute_force_moments(
            np.tanh, lambda u: 1 / np.cosh(u) ** 2, q
        )
        assert field.q[layer] == pytest.approx(q, rel=1e-8)
        assert field.chi[layer] == pytest.approx(s2 * slope_sq, rel=1e-8)
        q = s2 * phi_sq


def test_mean_field_relu_and_linear_are_exact():
    relu = flow.mean_field("relu", [2.0, 1.0, 3.0])
    np.testing.assert_allclose(relu.chi, [1.0, 0.5, 1.5], rtol=1e-12)
    np.testing.assert_allclose(relu.q, [2.0, 1.0, 1.5], rtol=1e-12)
    linear = flow.mean_field("linear", 1.21, depth=3)
    np.testing.assert_allclose(linear.chi, 1.21, rtol=1e-12)
    np.testing.assert_allclose(linear.q, [1.21, 1.21**2, 1.21**3], rtol=1e-12)


def test_mean_field_tanh_lecun_gain_tends_to_one():
    chi = flow.mean_field("tanh", 1.0, depth=400).chi
    assert np.all(chi < 1) and np.all(np.diff(chi) > 0)
    assert chi[-1] > 0.99


def test_mean_field_accepts_a_callable_and_checks_depth():
    chi = flow.mean_field(lambda u: 2 * u, 1.0, depth=3).chi
    np.testing.assert_allclose(chi, 4.0, rtol=1e-12)
    with pytest.raises(ValueError, match=r"pass depth=... with a single sigma_w2"):
        flow.mean_field("tanh", 1.0)
    with pytest.raises(ValueError, match=r"depth=3 but sigma_w2 has 2 entries"):
        flow.mean_field("tanh", [1.0, 1.0], depth=3)
    with pytest.raises(
        ValueError, match=r"depth must be a positive integer; received 0"
    ):
        flow.mean_field("tanh", 1.0, depth=0)


# ------------------------------------------------------------ depth profiles


def test_depth_profile_shapes_and_float64_without_changing_the_config():
    before = jax.config.jax_enable_x64
    profile = flow.depth_profile(10, 8, "tanh", "lecun_normal", key=0, batch=4)
    assert jax.config.jax_enable_x64 == before
    assert jnp.ones(1).dtype == (jnp.float64 if before else jnp.float32)
    for name, length in [
        ("signal", 11),
        ("activation_scale", 11),
        ("prediction", 11),
        ("weight_grad", 10),
        ("chi", 10),
    ]:
        array = getattr(profile, name)
        assert isinstance(array, np.ndarray) and array.dtype == np.float64
        assert array.shape == (length,)
    assert profile.ratio == pytest.approx(profile.signal[0] / profile.signal[-1])
    assert profile.prediction[-1] == profile.signal[-1]
    # ∂J/∂h_depth = v, a standard normal 4×8 matrix
    assert 0.6 * math.sqrt(32) < profile.signal[-1] < 1.4 * math.sqrt(32)
    assert 0.6 < profile.activation_scale[0] < 1.4  # the input is standard normal


@pytest.mark.parametrize(("weight", "depth"), [(1.1, 150), (0.9, 150), (0.5, 150)])
def test_a_scalar_chain_gives_exactly_the_weight_to_the_depth(weight, depth):
    chain = jax.nn.initializers.constant(weight)
    profile = flow.depth_profile(depth, 1, "linear", chain, key=3, batch=1)
    assert profile.ratio == pytest.approx(weight**depth, rel=1e-12)
    assert profile.predicted_ratio == pytest.approx(weight**depth, rel=1e-12)
    np.testing.assert_allclose(profile.chi, weight**2, rtol=1e-12)
    assert profile.weight_ratio == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(
        profile.activation_scale / profile.activation_scale[0],
        weight ** np.arange(depth + 1),
        rtol=1e-12,
    )


def test_depth_profile_follows_the_mean_field_in_a_wide_network():
    profile = flow.depth_profile(20, 256, "tanh", init.scaled(1.5), key=0, batch=32)
    log_gap = np.abs(np.log(profile.signal / profile.prediction))
    assert log_gap.max() < 0.25
    # forward: rms(h_l)² = E[φ(√q_l z)²] = q_{l+1} / σ_w²
    field = flow.mean_field("tanh", profile.chi * 0 + 2.25, input_moment=1.0)
    np.testing.assert_allclose(
        profile.activation_scale[1:-1] ** 2, field.q[1:] / 2.25, rtol=0.1
    )


def test_depth_profile_key_as_int_or_key_and_verdicts():
    a = flow.depth_profile(10, 8, "relu", "he_normal", key=5, batch=4)
    b = flow.depth_profile(10, 8, "relu", "he_normal", key=jax.random.key(5), batch=4)
    np.testing.assert_array_equal(a.signal, b.signal)
    assert a.verdict == "healthy"
    assert a.init == "he_normal" and a.activation == "relu"
    chain = flow.depth_profile(
        10, 8, jnp.tanh, jax.nn.initializers.constant(0.1), batch=4
    )
    assert (chain.activation, chain.init) == ("tanh", "constant")
    assert (
        flow.depth_profile(10, 8, "tanh", init.scaled(0.2), key=0).verdict
        == "vanishing"
    )
    assert "Depth profile: relu, he_normal" in str(a)
    assert json.loads(json.dumps(a.to_dict()))["depth"] == 10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"depth": 0}, ValueError, r"depth must be a positive integer; received 0"),
        ({"width": 2.5}, ValueError, r"width must be a positive integer; received 2.5"),
        ({"batch": -1}, ValueError, r"batch must be a positive integer; received -1"),
        ({"activation": "swish"}, ValueError, r"Unknown activation 'swish'"),
        ({"init": "kaiming"}, ValueError, r"Unknown initialisation scheme 'kaiming'"),
    ],
)
def test_depth_profile_errors(kwargs, error, match):
    arguments = {"depth": 3, "width": 4, **kwargs}
    with pytest.raises(error, match=match):
        flow.depth_profile(**arguments)


# ------------------------------------------------------- the seed experiment

# label -> (lower, upper) bound of ‖∂J/∂h_0‖ / ‖∂J/∂h_150‖ for every seed, at
# width 64, batch 64, float64; the mean-field prediction is in the middle.
SEED_BANDS = {
    "linear, gain 1.1": (1e5, 1e8),  # 1.1**150 ≈ 1.6e6
    "linear, gain 0.9": (1e-9, 1e-6),  # 0.9**150 ≈ 1.4e-7
    "tanh, LeCun": (1e-3, 1.0),
    "tanh, std 0.5/√fan_in": (1e-48, 1e-43),  # 0.5**150 ≈ 7e-46
    "tanh, std 2/√fan_in": (1e8, 1e11),
    "ReLU, He": (1e-3, 10.0),
    "ReLU, LeCun": (1e-27, 1e-21),  # 2**-75 ≈ 2.6e-23
}
VERDICTS = {
    "linear, gain 1.1": "exploding",
    "linear, gain 0.9": "vanishing",
    "tanh, LeCun": "healthy",
    "tanh, std 0.5/√fan_in": "vanishing",
    "tanh, std 2/√fan_in": "exploding",
    "ReLU, He": "healthy",
    "ReLU, LeCun": "vanishing",
}


@pytest.fixture(scope="module")
def experiment():
    return flow.seed_experiment(depth=150, width=64, batch=64, seeds=(0, 1, 2))


def test_seed_experiment_reproduces_the_150_layer_table(experiment):
    assert [r.label for r in experiment.results] == [
        s.label for s in flow.DEFAULT_SCHEMES
    ]
    for label, (low, high) in SEED_BANDS.items():
        result = experiment[label]
        assert len(result.ratios) == 3
        assert all(low < r < high for r in result.ratios), (label, result.ratios)
        assert result.verdict == VERDICTS[label]
        # finite width moves the measurement off the mean field by at most ~2 decades
        for measured, predicted in zip(result.ratios, result.predicted, strict=True):
            assert abs(math.log10(measured / predicted)) < 2.0, label
    assert experiment["scalar chain, w = 1.1"].ratios == pytest.approx(
        (1.1**150,) * 3, rel=1e-12
    )
    assert experiment["scalar chain, w = 0.9"].ratios == pytest.approx(
        (0.9**150,) * 3, rel=1e-12
    )


def test_seed_experiment_weight_gradients_stay_balanced_in_linear_nets(experiment):
    for label in ("linear, gain 1.1", "linear, gain 0.9"):
        assert all(1 / 3 < r < 3 for r in experiment[label].weight_ratios)


def test_seed_experiment_table_and_dict(experiment):
    text = str(experiment)
    assert "150 layers (width 64, batch 64, float64)" in text
    assert "seed 0" in text and "seed 2" in text and "mean field" in text
    lines = text.splitlines()
    for result in experiment.results:
        (row,) = [line for line in lines if line.strip().startswith(result.label)]
        assert f"{result.ratios[0]:.2e}" in row
        assert row.endswith(result.verdict)
    data = json.loads(json.dumps(experiment.to_dict()))
    assert data["seeds"] == [0, 1, 2]
    assert data["results"][0]["label"] == "linear, gain 1.1"
    assert data["results"][0]["verdict"] == "exploding"
    with pytest.raises(KeyError, match=r"No scheme labelled 'sigmoid'"):
        experiment["sigmoid"]


def test_seed_experiment_with_custom_schemes():
    schemes = [flow.Scheme("tanh 1.2", "tanh", init.scaled(1.2), width=8)]
    table = flow.seed_experiment(
        depth=10, width=16, batch=4, seeds=(7,), schemes=schemes
    )
    (result,) = table.results
    assert (result.width, result.batch, len(result.ratios)) == (8, 4, 1)
    assert result.init == "scaled(1.2)"
    with pytest.raises(ValueError, match=r"at least one seed and one scheme"):
        flow.seed_experiment(depth=10, seeds=())

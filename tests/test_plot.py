"""Tests for jaxcheck.plot: figures with the right lines and bars (Agg backend)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from jaxcheck import flow, init, nn, plot  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def profiles():
    return {
        label: flow.depth_profile(10, 8, activation, scheme, key=0, batch=4)
        for label, activation, scheme in [
            ("tanh, LeCun", "tanh", "lecun_normal"),
            ("tanh, 0.5", "tanh", init.scaled(0.5)),
            ("ReLU, He", "relu", "he_normal"),
        ]
    }


def test_import_jaxcheck_does_not_import_matplotlib():
    code = "import sys, jaxcheck, jaxcheck.flow; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_depth_profiles_one_line_per_scheme_on_log_axes(profiles):
    fig = plot.plot_depth_profiles(profiles, title="schemes")
    assert isinstance(fig, Figure)
    signal_ax, scale_ax = fig.axes[:2]
    assert len(signal_ax.get_lines()) == 3
    assert len(scale_ax.get_lines()) == 3
    assert signal_ax.get_yscale() == "log" and scale_ax.get_yscale() == "log"
    labels = [t.get_text() for t in signal_ax.get_legend().get_texts()]
    assert labels == list(profiles)
    line = signal_ax.get_lines()[1]
    assert list(line.get_xdata()) == list(range(11))
    assert list(line.get_ydata()) == list(profiles["tanh, 0.5"].signal)
    assert fig._suptitle.get_text() == "schemes"


def test_depth_profiles_with_prediction_and_from_a_sequence(profiles):
    fig = plot.plot_depth_profiles(list(profiles.values()), prediction=True)
    signal_ax = fig.axes[0]
    assert len(signal_ax.get_lines()) == 6
    dashed = [line for line in signal_ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 3
    labels = [t.get_text() for t in signal_ax.get_legend().get_texts()]
    assert labels[0] == "tanh, lecun_normal"


def test_depth_profiles_accepts_a_single_profile(profiles):
    fig = plot.plot_depth_profiles(profiles["ReLU, He"])
    assert len(fig.axes[0].get_lines()) == 1


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ([], ValueError, "received no profiles"),
        (["not a profile"], TypeError, "expects DepthProfile objects"),
    ],
)
def test_depth_profiles_rejects_bad_input(bad, error, match):
    with pytest.raises(error, match=match):
        plot.plot_depth_profiles(bad)


def mlp_loss(params, x):
    h = x
    for i, layer in enumerate(params):
        h = flow.tap(jnp.tanh(nn.dense(layer, h)), f"h{i + 1}")
    return jnp.sum(h**2)


def test_gradient_norms_one_bar_per_leaf():
    params = init.mlp_params(jax.random.key(0), [4, 8, 8, 2])
    norms = flow.gradient_norms(mlp_loss, params, jnp.ones((3, 4)))
    fig = plot.plot_gradient_norms(norms)
    (ax,) = fig.axes
    bars = ax.patches
    assert len(bars) == len(norms.leaves) == 6
    assert [bar.get_width() for bar in bars] == pytest.approx(
        list(norms.leaves.values())
    )
    assert [t.get_text() for t in ax.get_yticklabels()] == list(norms.leaves)
    assert ax.get_xscale() == "log"
    linear = plot.plot_gradient_norms(norms, log=False, title="norms")
    assert linear.axes[0].get_xscale() == "linear"
    assert linear.axes[0].get_title() == "norms"


def test_diagnosis_shows_taps_and_layers():
    params = init.mlp_params(jax.random.key(0), [8] * 6)
    report = flow.diagnose(mlp_loss, params, jnp.ones((4, 8)))
    fig = plot.plot_gradient_norms(report)  # a Diagnosis works too
    assert len(fig.axes[0].patches) == 10
    fig = plot.plot_diagnosis(report)
    signal_ax, weight_ax = fig.axes
    (line,) = signal_ax.get_lines()
    assert list(line.get_ydata()) == pytest.approx(list(report.signal.values()))
    assert len(weight_ax.patches) == 5
    assert report.verdict in fig._suptitle.get_text()


def test_diagnosis_without_taps():
    params = init.mlp_params(jax.random.key(0), [4, 8, 2])

    def loss(params, x):
        return jnp.sum(nn.mlp(params, x) ** 2)

    fig = plot.plot_diagnosis(flow.diagnose(loss, params, jnp.ones((2, 4))))
    assert fig.axes[0].get_lines() == []
    assert fig.axes[0].texts[0].get_text() == "no taps"
    assert len(fig.axes[1].patches) == 2


@pytest.mark.parametrize(
    ("function", "match"),
    [
        (
            plot.plot_gradient_norms,
            "expects the result of jaxcheck.flow.gradient_norms",
        ),
        (plot.plot_diagnosis, "expects the result of jaxcheck.flow.diagnose"),
    ],
)
def test_wrong_result_type_is_a_clear_error(function, match):
    with pytest.raises(TypeError, match=match):
        function({"[0]['w']": 1.0})

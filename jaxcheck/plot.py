"""Figures for the gradient-health diagnostics of :mod:`jaxcheck.flow`.

matplotlib is an optional dependency (``pip install jaxcheck[plot]``); it is
imported inside each function, so ``import jaxcheck`` never imports it. Every
function returns the matplotlib ``Figure`` and shows nothing; call
``fig.savefig(...)`` or let a notebook display it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxcheck.flow import DepthProfile, Diagnosis, GradientNorms

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_depth_profiles", "plot_diagnosis", "plot_gradient_norms"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "jaxcheck.plot needs matplotlib, which is not installed; install it "
            "with `pip install jaxcheck[plot]` (or `pip install matplotlib`)."
        ) from None
    return plt


def _named_profiles(
    profiles: Sequence[DepthProfile] | Mapping[str, DepthProfile] | DepthProfile,
) -> list[tuple[str, DepthProfile]]:
    if isinstance(profiles, DepthProfile):
        profiles = [profiles]
    named = (
        list(profiles.items())
        if isinstance(profiles, Mapping)
        else [(f"#{i}", p) for i, p in enumerate(profiles)]
    )
    for label, p in named:
        if not isinstance(p, DepthProfile):
            raise TypeError(
                "plot_depth_profiles expects DepthProfile objects (from "
                f"jaxcheck.flow.depth_profile); received {type(p).__name__} for "
                f"{label!r}."
            )
    if not isinstance(profiles, Mapping):
        named = [(f"{p.activation}, {p.init}", p) for _, p in named]
    if not named:
        raise ValueError("plot_depth_profiles: received no profiles to plot.")
    return named


def plot_depth_profiles(
    profiles: Sequence[DepthProfile] | Mapping[str, DepthProfile] | DepthProfile,
    *,
    prediction: bool = False,
    title: str | None = None,
) -> Figure:
    """Signal norm and activation scale against depth, one line per scheme.

    The left panel shows ‖∂J/∂h_l‖ (log scale) for l = 0 … depth, the right
    panel the RMS of h_l. A straight line on the left is a constant gain per
    layer; its slope is the log of that gain.

    Args:
        profiles: :class:`~jaxcheck.flow.DepthProfile` objects, as a sequence
            (labelled "activation, init") or a mapping from label to profile.
        prediction: also draw the mean-field prediction of each signal as a
            dashed line of the same colour.
        title: a title for the figure.

    Returns:
        The figure, with two axes.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from jaxcheck import flow, plot
        >>> schemes = ("lecun_normal", "he_normal")
        >>> profiles = {s: flow.depth_profile(10, 8, "tanh", s) for s in schemes}
        >>> fig = plot.plot_depth_profiles(profiles)
        >>> [len(ax.get_lines()) for ax in fig.axes]
        [2, 2]
    """
    plt = _pyplot()
    named = _named_profiles(profiles)
    fig, (ax_signal, ax_scale) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, p in named:
        layers = np.arange(p.depth + 1)
        (line,) = ax_signal.plot(layers, p.signal, label=label)
        if prediction:
            ax_signal.plot(
                layers,
                p.prediction,
                linestyle="--",
                color=line.get_color(),
                label=f"{label} (mean field)",
            )
        ax_scale.plot(layers, p.activation_scale, color=line.get_color(), label=label)
    ax_signal.set_yscale("log")
    ax_signal.set_xlabel("layer l")
    ax_signal.set_ylabel("‖∂J/∂h_l‖")
    ax_signal.set_title("backpropagated signal")
    ax_scale.set_yscale("log")
    ax_scale.set_xlabel("layer l")
    ax_scale.set_ylabel("rms(h_l)")
    ax_scale.set_title("activation scale")
    ax_signal.legend(fontsize="small")
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_gradient_norms(
    norms: GradientNorms | Diagnosis, *, log: bool = True, title: str | None = None
) -> Figure:
    """One horizontal bar per parameter leaf: its gradient norm ‖∂J/∂θ‖.

    Args:
        norms: a :class:`~jaxcheck.flow.GradientNorms` (or a
            :class:`~jaxcheck.flow.Diagnosis`, whose weight gradients are used).
        log: use a logarithmic axis for the norms.
        title: a title for the axes.

    Returns:
        The figure, with one axes holding one bar per leaf, in pytree order
        from top to bottom.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import flow, init, nn, plot
        >>> params = init.mlp_params(jax.random.key(0), [4, 8, 2])
        >>> loss = lambda p, x: jnp.sum(nn.mlp(p, x) ** 2)
        >>> norms = flow.gradient_norms(loss, params, jnp.ones((3, 4)))
        >>> len(plot.plot_gradient_norms(norms).axes[0].patches)
        4
    """
    if isinstance(norms, Diagnosis):
        norms = norms.gradients
    if not isinstance(norms, GradientNorms):
        raise TypeError(
            "plot_gradient_norms expects the result of jaxcheck.flow.gradient_norms "
            f"or diagnose; received {type(norms).__name__}."
        )
    plt = _pyplot()
    labels = list(norms.leaves)
    values = np.array([norms.leaves[k] for k in labels])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.5))
    positions = np.arange(len(labels))
    ax.barh(positions, values)
    ax.set_yticks(positions, labels)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("‖∂J/∂θ‖")
    ax.set_title(title or "gradient norm per leaf")
    fig.tight_layout()
    return fig


def plot_diagnosis(diagnosis: Diagnosis, *, title: str | None = None) -> Figure:
    """The two views of :func:`~jaxcheck.flow.diagnose` side by side.

    The left panel shows ‖∂J/∂h‖ at every tap (log scale; empty when the model
    has no taps), the right panel the weight-gradient norm of every layer, so
    a vanishing signal hidden behind balanced weight gradients is visible.

    Args:
        diagnosis: the result of :func:`jaxcheck.flow.diagnose`.
        title: a title for the figure; the verdict by default.

    Returns:
        The figure, with two axes: one line of taps, one bar per layer.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import flow, init, plot
        >>> def loss(params, x):
        ...     for i, layer in enumerate(params):
        ...         x = flow.tap(jnp.tanh(x @ layer["w"]), f"h{i + 1}")
        ...     return jnp.sum(x)
        >>> params = init.mlp_params(jax.random.key(0), [8] * 6)
        >>> fig = plot.plot_diagnosis(flow.diagnose(loss, params, jnp.ones((4, 8))))
        >>> len(fig.axes[0].get_lines()), len(fig.axes[1].patches)
        (1, 5)
    """
    if not isinstance(diagnosis, Diagnosis):
        raise TypeError(
            "plot_diagnosis expects the result of jaxcheck.flow.diagnose; received "
            f"{type(diagnosis).__name__}."
        )
    plt = _pyplot()
    fig, (ax_signal, ax_weights) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(diagnosis.signal)
    if names:
        ax_signal.plot(np.arange(len(names)), list(diagnosis.signal.values()), "o-")
        ax_signal.set_yscale("log")
        step = max(1, len(names) // 12)
        ticks = np.arange(0, len(names), step)
        ax_signal.set_xticks(ticks, [names[i] for i in ticks], rotation=45)
    else:
        ax_signal.text(0.5, 0.5, "no taps", ha="center", transform=ax_signal.transAxes)
    ax_signal.set_ylabel("‖∂J/∂h‖")
    ax_signal.set_title("backpropagated signal (taps)")
    layer_norms = diagnosis.gradients.layer_norms
    layers = list(layer_norms)
    positions = np.arange(len(layers))
    ax_weights.bar(positions, list(layer_norms.values()))
    step = max(1, len(layers) // 12)
    ax_weights.set_xticks(positions[::step], layers[::step], rotation=45)
    ax_weights.set_yscale("log")
    ax_weights.set_ylabel("‖∂J/∂θ‖")
    ax_weights.set_title("weight gradients (layers)")
    fig.suptitle(title or f"gradient health: {diagnosis.verdict}")
    fig.tight_layout()
    return fig

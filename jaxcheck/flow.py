"""Gradient-health diagnostics: is the backpropagated signal vanishing or exploding?

In a deep network the gradient is multiplied, layer after layer, by a Jacobian
whose typical gain depends on the initialisation. A gain of 1.1 over 150 layers
grows the gradient by 1.1^150 ≈ 1.6e6; a gain of 0.9 shrinks it to ≈ 1.4e-7.

What vanishes or explodes is the gradient with respect to each layer's
*activations*, ∂J/∂h_l (the backpropagated signal). The gradient with respect
to a layer's *weights* is that signal times the layer's input, and in a linear
network the two factors change in opposite directions: with gain 0.9 over 150
layers the signal ratio ∂J/∂h_0 / ∂J/∂h_150 is ≈ 1e-7 while the first and last
weight gradients have nearly equal norms. This module therefore reports both.

The pieces:

* :func:`tap` marks an activation inside any model, one line per layer;
  :func:`value_grad_and_taps` returns the loss, the gradient and, for every tap,
  ‖∂J/∂h‖ and the RMS of h. It works under ``jax.jit`` and ``jax.vmap``.
* :func:`gradient_norms` gives the gradient norm of every parameter leaf and of
  every top-level group (layer).
* :func:`diagnose` combines the two into a :class:`Diagnosis` with a verdict.
* :func:`depth_profile` measures a freshly initialised deep MLP and compares it
  with the mean-field prediction; :func:`seed_experiment` tabulates the classic
  schemes over several seeds.

How a tap works. ``tap(h, name)`` is the identity outside
:func:`value_grad_and_taps`. Inside it, the function is traced twice: once
under ``jax.eval_shape`` to learn the tap names (nothing is computed), then
under ``jax.value_and_grad`` with extra inputs: one zero "probe" of three
numbers per tap. Each tap passes ``h`` through a ``jax.custom_vjp`` identity of
``(h, probe)`` whose backward pass returns the cotangent ∂J/∂h unchanged to
``h`` and, as the "gradient" of the probe, the statistics
``[‖∂J/∂h‖², Σh², h.size]``. The gradient with respect to the probes is
therefore the table of statistics, obtained functionally: no host callback, no
global array, nothing kept between calls (the only state is a thread-local
stack that says which probes belong to the trace in progress, and it is emptied
when the trace ends). The statistics are sums, so they pool correctly when a
tap sits inside a function that is vmapped *inside* the model (the batch's
squared norms add up to the full ‖∂J/∂h‖²) or inside a loop body (the total
over iterations).

References:
    S. Hochreiter, "Untersuchungen zu dynamischen neuronalen Netzen", 1991;
    Y. Bengio, P. Simard and P. Frasconi, "Learning long-term dependencies with
    gradient descent is difficult", IEEE TNN 1994 (vanishing gradients).

    B. Poole, S. Lahiri, M. Raghu, J. Sohl-Dickstein and S. Ganguli,
    "Exponential expressivity in deep neural networks through transient
    chaos", NeurIPS 2016; S. S. Schoenholz, J. Gilmer, S. Ganguli and
    J. Sohl-Dickstein, "Deep Information Propagation", ICLR 2017 (mean field,
    χ₁ = σ_w²·E[φ′(z)²]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck import init as _init
from jaxcheck import nn as _nn

__all__ = [
    "DEFAULT_SCHEMES",
    "EXPLODING_ABOVE",
    "VANISHING_BELOW",
    "DepthProfile",
    "Diagnosis",
    "GradientNorms",
    "MeanField",
    "Scheme",
    "SchemeResult",
    "SeedExperiment",
    "Taps",
    "depth_profile",
    "diagnose",
    "gradient_norms",
    "mean_field",
    "seed_experiment",
    "tap",
    "value_grad_and_taps",
]

VANISHING_BELOW = 1e-3
"""Default threshold: a first/last gradient ratio below this is "vanishing".

With a factor of 1000 between the first and the last layer, one learning rate
cannot serve both: a step that moves the last layer sensibly leaves the first
almost still. The well-initialised 150-layer networks of :func:`seed_experiment`
(tanh with LeCun's scheme, ReLU with He's) measure between 0.02 and 0.3, while
the failures this flags are many decades away (1e-7 to 1e-46, 1e6 to 1e9).
"""

EXPLODING_ABOVE = 1e3
"""Default threshold: a first/last gradient ratio above this is "exploding"."""


# --------------------------------------------------------------------------
# Taps
# --------------------------------------------------------------------------

_STATS = 3  # per tap: ‖∂J/∂h‖², Σh², number of entries


@jax.custom_vjp
def _probe_identity(h: jax.Array, probe: jax.Array) -> jax.Array:
    """``h``, with the statistics of (h, ∂J/∂h) as the gradient of ``probe``."""
    del probe
    return h


def _probe_identity_fwd(h, probe):
    dtype = probe.dtype
    sum_sq = jnp.sum(jnp.square(h.astype(dtype)))
    count = jnp.asarray(h.size, dtype)
    return h, (sum_sq, count)


def _probe_identity_bwd(residuals, g):
    sum_sq, count = residuals
    signal_sq = jnp.sum(jnp.square(g.astype(sum_sq.dtype)))
    return g, jnp.stack([signal_sq, sum_sq, count])


_probe_identity.defvjp(_probe_identity_fwd, _probe_identity_bwd)


class _Collector:
    """What the trace in progress does with taps: learn names, or use probes."""

    def __init__(self, index: dict[str, int] | None = None, probes=None):
        self.discovering = index is None
        self.index: dict[str, int] = {} if index is None else index
        self.probes = probes


_LOCAL = threading.local()


def _collectors() -> list[_Collector]:
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    return _LOCAL.stack


@contextlib.contextmanager
def _collecting(collector: _Collector) -> Iterator[_Collector]:
    stack = _collectors()
    stack.append(collector)
    try:
        yield collector
    finally:
        stack.pop()


def tap(h: jax.Array, name: str) -> jax.Array:
    """Mark ``h`` so that the backpropagated signal ∂J/∂h is recorded under ``name``.

    ``tap`` returns ``h`` unchanged, so adding ``h = tap(h, "layer3")`` after a
    layer changes nothing in the forward pass or the gradient. Under
    :func:`value_grad_and_taps` (and :func:`diagnose`) it records ‖∂J/∂h‖ and
    the RMS of ``h``; anywhere else it does nothing at all. See the module
    docstring for how it works.

    Give every layer its own name (``f"h{i}"``). A name used more than once —
    in a Python loop with a fixed name, inside ``jax.lax.scan`` or in a
    function vmapped inside the model — pools every use: the recorded signal is
    √(Σ‖∂J/∂h‖²) and the RMS is over all entries of all uses. Do not wrap the
    tapped code in its own ``jax.jit`` traced outside the collector: JAX would
    reuse that trace, which has no taps in it. Jit the function returned by
    :func:`value_grad_and_taps` instead.

    Args:
        h: a real floating array (an activation).
        name: a label for the tap.

    Returns:
        ``h``.

    Raises:
        TypeError: if ``name`` is not a string or ``h`` is not a real floating
            array.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxcheck import flow
        >>> flow.tap(jnp.ones(3), "h0")  # the identity outside a collector
        Array([1., 1., 1.], dtype=float32)
    """
    if not isinstance(name, str):
        raise TypeError(f"tap: name must be a string; received {name!r}.")
    dtype = getattr(h, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"tap({name!r}): expected a real floating array; received "
            f"{type(h).__name__} with dtype {dtype}. Tap the activations, after "
            "they are computed in a floating dtype."
        )
    stack = _collectors()
    if not stack:
        return h
    collector = stack[-1]
    if collector.discovering:
        collector.index.setdefault(name, len(collector.index))
        return h
    try:
        row = collector.index[name]
    except KeyError:
        raise RuntimeError(
            f"tap({name!r}) was reached while differentiating but not while the "
            f"taps were being listed ({sorted(collector.index)}). The model must "
            "call the same taps on every trace; avoid Python control flow that "
            "depends on state outside the function."
        ) from None
    return _probe_identity(h, collector.probes[row])


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["signal", "rms", "count"],
    meta_fields=["names"],
)
@dataclasses.dataclass(frozen=True)
class Taps:
    """What the taps recorded, one entry per tap name in the order first reached.

    A pytree (the names are static), so it can be returned from ``jax.jit``
    and batched by ``jax.vmap``; under vmap the arrays gain leading axes.

    Attributes:
        names: the tap names, in the order the forward pass first reached them
            (input side first for a feed-forward model).
        signal: ``(..., len(names))``, ‖∂J/∂h‖ for each tap.
        rms: ``(..., len(names))``, √(mean h²) for each tap; NaN for a tap
            whose output did not reach J (nothing flowed back through it).
        count: ``(..., len(names))``, how many entries were pooled.
    """

    names: tuple[str, ...]
    signal: jax.Array
    rms: jax.Array
    count: jax.Array

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> dict[str, jax.Array]:
        """``{"signal", "rms", "count"}`` of the tap called ``name``."""
        try:
            i = self.names.index(name)
        except ValueError:
            raise KeyError(
                f"No tap named {name!r}; the taps are {self.names}."
            ) from None
        return {
            "signal": self.signal[..., i],
            "rms": self.rms[..., i],
            "count": self.count[..., i],
        }


def _taps_from_stats(names: tuple[str, ...], stats: jax.Array) -> Taps:
    signal_sq, sum_sq, count = stats[:, 0], stats[:, 1], stats[:, 2]
    rms = jnp.where(count > 0, jnp.sqrt(sum_sq / jnp.maximum(count, 1)), jnp.nan)
    return Taps(names=names, signal=jnp.sqrt(signal_sq), rms=rms, count=count)


def value_grad_and_taps(
    fn: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    *,
    has_aux: bool = False,
) -> Callable[..., tuple[Any, Any, Taps]]:
    """Like ``jax.value_and_grad(fn)``, also returning what every :func:`tap` saw.

    The returned function can be jitted and vmapped. ``fn`` is traced twice
    per call (or per compilation when jitted): once abstractly to list the tap
    names, once to differentiate. Tap statistics are computed in JAX's default
    float dtype: in float32, a signal norm below about 1e-19 reads as 0 and one
    above about 1e19 as inf; enable float64 for extreme networks
    (:func:`diagnose` does so for the statistics by itself).

    Args:
        fn: a function returning a scalar (``(scalar, aux)`` with
            ``has_aux``), with ``tap`` calls inside.
        argnums: which positional arguments to differentiate, as in JAX.
        has_aux: whether ``fn`` returns ``(scalar, aux)``.

    Returns:
        A function of ``fn``'s arguments returning ``(value, grads, taps)``,
        where ``value`` and ``grads`` are what ``jax.value_and_grad`` returns
        and ``taps`` is a :class:`Taps`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import flow
        >>> def loss(w, x):
        ...     h = flow.tap(x, "x")
        ...     h = flow.tap(jnp.tanh(h @ w), "h1")
        ...     return jnp.sum(h)
        >>> f = jax.jit(flow.value_grad_and_taps(loss))
        >>> value, grad, taps = f(jnp.zeros((2, 2)), jnp.ones((3, 2)))
        >>> taps.names, taps.signal.tolist()  # ∂J/∂h1 = ones, ∂J/∂x = 0
        (('x', 'h1'), [0.0, 2.4494898319244385])
    """
    requested = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def wrapped(*args: Any, **kwargs: Any) -> tuple[Any, Any, Taps]:
        if not all(-len(args) <= n < len(args) for n in requested):
            raise ValueError(
                f"argnums={argnums!r} is out of range for a call with "
                f"{len(args)} positional argument(s)."
            )
        nums = tuple(n % len(args) for n in requested)
        with _collecting(_Collector()) as listing:
            jax.eval_shape(lambda: fn(*args, **kwargs))
        index = listing.index
        names = tuple(index)

        def with_probes(*args_and_probes: Any) -> Any:
            *fn_args, probes = args_and_probes
            with _collecting(_Collector(index, probes)):
                return fn(*fn_args, **kwargs)

        # One probe array per tap rather than rows of one array: the gradient
        # of a row would be scattered back into the whole array once per tap.
        probes = [jnp.zeros(_STATS) for _ in names]
        grad_fn = jax.value_and_grad(
            with_probes, argnums=(*nums, len(args)), has_aux=has_aux
        )
        value, grads = grad_fn(*args, probes)
        *arg_grads, stats = grads
        stats = jnp.stack(stats) if stats else jnp.zeros((0, _STATS))
        arg_grads = arg_grads[0] if isinstance(argnums, int) else tuple(arg_grads)
        return value, arg_grads, _taps_from_stats(names, stats)

    return wrapped


# --------------------------------------------------------------------------
# Gradient norms
# --------------------------------------------------------------------------


def _scaled_norms(a: jax.Array, ids: np.ndarray, n: int) -> jax.Array:
    """‖·‖₂ of each segment of the non-negative vector ``a``, without underflow.

    Each segment is scaled by the power of two of its largest entry before
    squaring (``ldexp``: exact, and opaque to the compiler's algebraic
    rewriting), so squares of tiny or huge entries neither underflow nor
    overflow.
    """
    segments = {"segment_ids": ids, "num_segments": n, "indices_are_sorted": True}
    largest = jax.ops.segment_max(a, **segments)
    _, exponent = jnp.frexp(jnp.where(largest > 0, largest, 1))
    sum_sq = jax.ops.segment_sum(jnp.square(jnp.ldexp(a, -exponent[ids])), **segments)
    return jnp.ldexp(jnp.sqrt(sum_sq), exponent)


def _leaf_norms(leaves: Sequence[jax.Array]) -> jax.Array:
    """‖leaf‖₂ of every leaf, as one vector, in a handful of operations.

    The leaves are concatenated so that the norms are two segment reductions
    instead of a few operations per leaf, which keeps compilation fast for
    models with hundreds of leaves. Complex leaves use |z|.
    """
    dtype = jnp.result_type(*(jnp.finfo(g.dtype).dtype for g in leaves), jnp.float32)
    ids = np.repeat(np.arange(len(leaves)), [g.size for g in leaves])
    a = jnp.concatenate([jnp.abs(g).astype(dtype).ravel() for g in leaves])
    return _scaled_norms(a, ids, len(leaves))


def _ratio(first: float, last: float) -> float:
    first, last = float(first), float(last)
    if last == 0.0:
        return math.nan if first == 0.0 else math.inf
    return first / last


@dataclasses.dataclass(frozen=True)
class GradientNorms:
    """Gradient norms of a loss with respect to every parameter leaf.

    Attributes:
        loss: the value of the loss.
        leaves: ``keystr(path) -> ‖∂J/∂leaf‖`` for every floating leaf, in
            pytree order (integer, boolean and non-array leaves are not
            differentiated and not listed).
        layers: the same norms grouped by the first entry of the path —
            ``[0]``, ``[1]``, ... for a list of layers, ``['encoder']`` for a
            dict — as ``group -> {rest of the path -> norm}``; a leaf at the top
            level has the rest ``""``.
        sequential: whether the top level of the parameters is a list or a
            tuple, so that the groups are layers in order (first = input side).
    """

    loss: float
    leaves: dict[str, float]
    layers: dict[str, dict[str, float]]
    sequential: bool

    @property
    def layer_norms(self) -> dict[str, float]:
        """``group -> √(Σ‖∂J/∂leaf‖²)`` over the leaves of each group."""
        return {
            k: math.sqrt(sum(v**2 for v in group.values()))
            for k, group in self.layers.items()
        }

    @property
    def layer_ratio(self) -> float | None:
        """First over last layer gradient norm; None without layer order."""
        if not self.sequential or len(self.layers) < 2:
            return None
        norms = list(self.layer_norms.values())
        return _ratio(norms[0], norms[-1])

    @property
    def leaf_ratios(self) -> dict[str, float]:
        """First over last layer, per leaf the two layers share (``['w']``, ...).

        Empty without layer order. This separates the weights, whose gradient
        ratio can stay near one while the signal vanishes, from the biases,
        whose gradient is the batch sum of the signal itself.
        """
        if not self.sequential or len(self.layers) < 2:
            return {}
        groups = list(self.layers.values())
        first, last = groups[0], groups[-1]
        return {k: _ratio(first[k], last[k]) for k in first if k in last}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields and the ratios."""
        return {
            "loss": self.loss,
            "leaves": dict(self.leaves),
            "layers": {k: dict(v) for k, v in self.layers.items()},
            "sequential": self.sequential,
            "layer_norms": self.layer_norms,
            "layer_ratio": self.layer_ratio,
            "leaf_ratios": self.leaf_ratios,
        }

    def table(self, keep: int = 8) -> list[str]:
        """The per-layer norms as lines of text (middle rows elided)."""
        suffixes = list(next(iter(self.layers.values()), {}))
        columns = (
            suffixes
            if 1 < len(suffixes) <= 4
            and all(list(g) == suffixes for g in self.layers.values())
            else None
        )
        width = max([len(k) for k in self.layers] + [5])
        if columns:
            head = "".join(f"  {'‖∂J/∂θ' + c + '‖':>14}" for c in columns)
            rows = [
                f"  {k:<{width}}" + "".join(f"  {g[c]:>14.3e}" for c in columns)
                for k, g in self.layers.items()
            ]
        else:
            head = f"  {'‖∂J/∂θ‖':>14}"
            rows = [f"  {k:<{width}}  {v:>14.3e}" for k, v in self.layer_norms.items()]
        return [f"  {'layer':<{width}}{head}", *_elide(rows, keep)]

    def __str__(self) -> str:
        lines = [f"Gradient norms (loss = {self.loss:.6g})"]
        width = max([len(k) for k in self.leaves] + [4])
        lines.append(f"  {'leaf':<{width}}  ‖∂J/∂θ‖")
        rows = [f"  {k:<{width}}  {v:.3e}" for k, v in self.leaves.items()]
        lines += _elide(rows)
        if len(self.layers) > 1:
            lines += self.table()
        if self.layer_ratio is not None:
            lines.append(f"  first/last layer: {_ratios_text(self)}")
        return "\n".join(lines)


def _ratios_text(norms: GradientNorms) -> str:
    parts = [f"{norms.layer_ratio:.3e}"]
    leaf = norms.leaf_ratios
    if len(leaf) > 1:
        parts.append("(" + ", ".join(f"{k} {v:.3e}" for k, v in leaf.items()) + ")")
    return " ".join(parts)


def _is_float_leaf(leaf: Any) -> bool:
    if isinstance(leaf, float | complex):
        return True
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def _is_array_leaf(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


class _Split(NamedTuple):
    """A parameter pytree taken apart for differentiation.

    Floating leaves are differentiated; other array leaves (integer counters,
    masks) are passed to the compiled function as data; anything else (Python
    ints, strings) is kept as a static constant, as the model may use it for
    control flow.
    """

    paths: list[tuple[Any, ...]]
    diff: list[Any]
    arrays: list[Any]
    treedef: Any
    kinds: tuple[str, ...]
    statics: tuple[Any, ...]


def _split(params: Any) -> _Split:
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths, diff, arrays, statics, kinds = [], [], [], [], []
    for path, leaf in flat:
        if _is_float_leaf(leaf):
            kinds.append("diff")
            paths.append(path)
            diff.append(leaf)
        elif _is_array_leaf(leaf):
            kinds.append("array")
            arrays.append(leaf)
        else:
            kinds.append("static")
            statics.append(leaf)
    if not diff:
        types = sorted({type(leaf).__name__ for _, leaf in flat}) or ["none"]
        raise ValueError(
            "The parameters have no floating leaf to differentiate; received a "
            f"pytree with {len(flat)} leaves of types {types}. Pass the "
            "trainable parameters (floating arrays) as the first argument."
        )
    return _Split(paths, diff, arrays, treedef, tuple(kinds), tuple(statics))


def _norms_and_taps(diff, arrays, key, args, *, fn, treedef, kinds, statics):
    """Loss, per-leaf gradient norms and taps; compiled by ``_compiled``."""

    def loss(diff_leaves, *a):
        sources = {"diff": iter(diff_leaves), "array": iter(arrays)}
        sources["static"] = iter(statics)
        params = jax.tree_util.tree_unflatten(
            treedef, [next(sources[kind]) for kind in kinds]
        )
        return fn(params, *a) if key is None else fn(params, *a, key=key)

    value, grads, taps = value_grad_and_taps(loss)(diff, *args)
    return value, _leaf_norms(grads), taps


# One compilation per loss function and parameter structure: diagnosing the
# same model again (say, every few hundred training steps) reuses it.
_compiled = jax.jit(
    _norms_and_taps, static_argnames=("fn", "treedef", "kinds", "statics")
)


def _gradient_norms_and_taps(fn, params, args, key) -> tuple[GradientNorms, Taps]:
    split = _split(params)
    static = {
        "fn": fn,
        "treedef": split.treedef,
        "kinds": split.kinds,
        "statics": split.statics,
    }
    try:
        hash(split.statics)
    except TypeError:  # an unhashable constant leaf: compile for this call only
        run = jax.jit(functools.partial(_norms_and_taps, **static))
    else:
        run = functools.partial(_compiled, **static)
    # Squared signal norms are accumulated in float64 (the model's own arrays
    # keep their dtypes): in float32, a signal below about 1e-19 would square
    # to zero and a vanishing network would read as exactly 0.
    with jax.enable_x64(True):
        value, norms, taps = run(split.diff, split.arrays, key, args)
        taps = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), taps)
    norms = np.asarray(norms, dtype=np.float64).tolist()
    paths = split.paths
    leaves = {jax.tree_util.keystr(p): n for p, n in zip(paths, norms, strict=True)}
    layers: dict[str, dict[str, float]] = {}
    for p, n in zip(paths, norms, strict=True):
        group = layers.setdefault(jax.tree_util.keystr(p[:1]), {})
        group[jax.tree_util.keystr(p[1:])] = n
    sequential = isinstance(params, list | tuple)
    return GradientNorms(float(value), leaves, layers, sequential), taps


def gradient_norms(
    fn: Callable[..., Any],
    params: Any,
    *args: Any,
    key: jax.Array | None = None,
) -> GradientNorms:
    """The gradient norm of every parameter leaf, grouped by layer.

    One jitted forward and backward pass. Norms are computed on the device in
    the parameters' dtype, scaled by the largest entry so that tiny or huge
    gradients do not under- or overflow.

    Args:
        fn: the loss, called as ``fn(params, *args)`` (or with ``key=key``).
        params: any pytree of parameters; floating leaves are differentiated.
            A list of layers gives the groups an order.
        *args: further arguments of ``fn`` (data, labels, ...); they are
            traced by ``jax.jit``, so bind static settings into ``fn`` with
            ``functools.partial``.
        key: a PRNG key passed to ``fn`` as ``key=key`` when given.

    Returns:
        A :class:`GradientNorms`.

    Raises:
        ValueError: if ``params`` has no floating leaf.
        TypeError: if ``fn`` does not return a real scalar (raised by JAX).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import flow
        >>> params = [{"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}]
        >>> norms = flow.gradient_norms(
        ...     lambda p, x: jnp.sum(x @ p[0]["w"] + p[0]["b"]), params, jnp.ones(2))
        >>> {k: round(v, 4) for k, v in norms.leaves.items()}
        {"[0]['b']": 1.4142, "[0]['w']": 2.0}
        >>> list(norms.layers)
        ['[0]']
    """
    return _gradient_norms_and_taps(fn, params, args, key)[0]


# --------------------------------------------------------------------------
# Verdicts and diagnose
# --------------------------------------------------------------------------


def _verdict(ratio: float | None, below: float, above: float) -> str:
    if ratio is None or math.isnan(ratio):
        return "undetermined"
    if ratio < below:
        return "vanishing"
    if ratio > above:
        return "exploding"
    return "healthy"


def _check_thresholds(below: float, above: float) -> None:
    if not 0 < below <= 1 <= above:
        raise ValueError(
            "Expected thresholds 0 < vanishing_below <= 1 <= exploding_above; "
            f"received vanishing_below={below!r}, exploding_above={above!r}."
        )


def _elide(rows: list[str], keep: int = 8) -> list[str]:
    if len(rows) <= 2 * keep + 1:
        return rows
    return [*rows[:keep], f"  ... {len(rows) - 2 * keep} more ...", *rows[-keep:]]


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """Gradient health of one loss at one point: signal and weight gradients.

    Attributes:
        verdict: ``"vanishing"``, ``"exploding"``, ``"healthy"``, or
            ``"undetermined"`` when there are fewer than two taps and no layer
            order (or the ratio is 0/0).
        basis: what decided the verdict: ``"signal"`` (first/last tap ratio
            of ‖∂J/∂h‖) when the model has at least two taps, otherwise
            ``"layer gradients"`` (first/last layer ratio of ‖∂J/∂θ‖), or
            ``"none"``.
        ratio: the ratio that decided the verdict (NaN when undetermined).
        vanishing_below: the verdict is vanishing when ``ratio`` is below it.
        exploding_above: the verdict is exploding when ``ratio`` is above it.
        signal: tap name -> ‖∂J/∂h‖, in forward order (empty without taps).
        activation_rms: tap name -> RMS of h.
        signal_ratio: ‖∂J/∂h‖ at the first tap over the last, or None.
        gradients: the per-leaf and per-layer parameter-gradient norms, with
            their first/last ``layer_ratio`` and per-leaf ``leaf_ratios``.
    """

    verdict: str
    basis: str
    ratio: float
    vanishing_below: float
    exploding_above: float
    signal: dict[str, float]
    activation_rms: dict[str, float]
    signal_ratio: float | None
    gradients: GradientNorms

    @property
    def loss(self) -> float:
        """The value of the loss."""
        return self.gradients.loss

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields."""
        return {
            "verdict": self.verdict,
            "basis": self.basis,
            "ratio": self.ratio,
            "vanishing_below": self.vanishing_below,
            "exploding_above": self.exploding_above,
            "signal": dict(self.signal),
            "activation_rms": dict(self.activation_rms),
            "signal_ratio": self.signal_ratio,
            "gradients": self.gradients.to_dict(),
        }

    def __str__(self) -> str:
        below, above = self.vanishing_below, self.exploding_above
        if self.verdict == "undetermined":
            head = (
                "Gradient health: UNDETERMINED (add flow.tap(h, name) after at "
                "least two layers, or pass the layers as a list)"
            )
        else:
            rule = {
                "vanishing": f"< {below:.0e}",
                "exploding": f"> {above:.0e}",
                "healthy": f"within [{below:.0e}, {above:.0e}]",
            }[self.verdict]
            head = (
                f"Gradient health: {self.verdict.upper()} "
                f"({self.basis} ratio first/last = {self.ratio:.3e} {rule})"
            )
        lines = [head, f"  loss = {self.loss:.6g}"]
        if self.signal:
            width = max([len(k) for k in self.signal] + [3])
            lines.append(f"  {'tap':<{width}}  {'‖∂J/∂h‖':>10}  {'rms(h)':>10}")
            rows = [
                f"  {k:<{width}}  {v:>10.3e}  {self.activation_rms[k]:>10.3e}"
                for k, v in self.signal.items()
            ]
            lines += _elide(rows)
        else:
            lines.append(
                "  no taps: parameter gradients alone can look balanced while the "
                "backpropagated signal vanishes; add flow.tap(h, name) per layer."
            )
        lines += self.gradients.table()
        if self.signal_ratio is not None:
            lines.append(f"  signal ratio (first/last tap): {self.signal_ratio:.3e}")
        if self.gradients.layer_ratio is not None:
            lines.append(
                f"  gradient ratio (first/last layer): {_ratios_text(self.gradients)}"
            )
        return "\n".join(lines)


def diagnose(
    fn: Callable[..., Any],
    params: Any,
    *args: Any,
    key: jax.Array | None = None,
    vanishing_below: float = VANISHING_BELOW,
    exploding_above: float = EXPLODING_ABOVE,
) -> Diagnosis:
    """Is the gradient of ``fn`` vanishing, exploding or healthy across depth?

    One jitted forward and backward pass gives the gradient norm of every
    parameter leaf and layer and, for every :func:`tap` in the model, the norm
    of the backpropagated signal ‖∂J/∂h‖ and the RMS of h. The verdict compares
    the first and the last tap (input side over output side). Without taps it
    falls back to the first and last layer's gradient norms, which can miss a
    vanishing signal (see the module docstring), and the report says so.

    Args:
        fn: the loss, called as ``fn(params, *args)`` (or with ``key=key``).
        params: any pytree of parameters; a list of layers gives layer order.
        *args: further arguments of ``fn``; they are traced by ``jax.jit``,
            so bind static settings into ``fn`` with ``functools.partial``.
        key: a PRNG key passed to ``fn`` as ``key=key`` when given.
        vanishing_below: ratios below this are "vanishing" (default 1e-3).
        exploding_above: ratios above this are "exploding" (default 1e3).

    Returns:
        A :class:`Diagnosis`; ``str()`` of it is a readable report.

    Raises:
        ValueError: for thresholds outside ``0 < below <= 1 <= above``,
            parameters without floating leaves, or a call under ``jax.vmap``.
        TypeError: if ``fn`` does not return a real scalar (raised by JAX).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck import flow, init
        >>> def loss(params, x):
        ...     h = flow.tap(x, "h0")
        ...     for i, layer in enumerate(params):
        ...         h = flow.tap(jnp.tanh(h @ layer["w"]), f"h{i + 1}")
        ...     return jnp.sum(h)
        >>> params = init.mlp_params(jax.random.key(0), [16] * 11, init.scaled(0.5))
        >>> x = jax.random.normal(jax.random.key(1), (8, 16))
        >>> report = flow.diagnose(loss, params, x)
        >>> report.verdict, report.basis
        ('vanishing', 'signal')
    """
    _check_thresholds(vanishing_below, exploding_above)
    norms, taps = _gradient_norms_and_taps(fn, params, args, key)
    signal_values = np.asarray(taps.signal, dtype=np.float64)
    rms_values = np.asarray(taps.rms, dtype=np.float64)
    if signal_values.ndim != 1:
        raise ValueError(
            "diagnose: expected one statistic per tap; received shape "
            f"{signal_values.shape}. Call diagnose outside jax.vmap."
        )
    signal = {n: float(v) for n, v in zip(taps.names, signal_values, strict=True)}
    rms = {n: float(v) for n, v in zip(taps.names, rms_values, strict=True)}
    signal_ratio = (
        _ratio(signal_values[0], signal_values[-1]) if len(taps) >= 2 else None
    )
    if signal_ratio is not None:
        basis, ratio = "signal", signal_ratio
    elif norms.layer_ratio is not None:
        basis, ratio = "layer gradients", norms.layer_ratio
    else:
        basis, ratio = "none", math.nan
    return Diagnosis(
        verdict=_verdict(ratio, vanishing_below, exploding_above),
        basis=basis,
        ratio=float(ratio),
        vanishing_below=vanishing_below,
        exploding_above=exploding_above,
        signal=signal,
        activation_rms=rms,
        signal_ratio=signal_ratio,
        gradients=norms,
    )


# --------------------------------------------------------------------------
# Mean field
# --------------------------------------------------------------------------

# Composite Gauss–Legendre quadrature against the standard normal density.
# Panels are cut both on a fixed grid in z and on a grid in u = √q·z, so that
# an activation that saturates or has a kink within |u| ≲ 20 (tanh, ReLU) is
# resolved however large or small the variance q is; no node falls on a
# breakpoint, so ReLU's kink at 0 is integrated exactly.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)
_Z_MAX = 10.0
_Z_BREAKS = np.linspace(-_Z_MAX, _Z_MAX, 41)
_U_BREAKS = np.linspace(-20.0, 20.0, 81)


def _gaussian_moments(phi, q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """E[φ(√q·z)²] and E[φ′(√q·z)²] for z ~ N(0, 1)."""
    s = jnp.sqrt(q)
    u_breaks = jnp.clip(_U_BREAKS / jnp.maximum(s, 1e-300), -_Z_MAX, _Z_MAX)
    breaks = jnp.sort(jnp.concatenate([jnp.asarray(_Z_BREAKS), u_breaks]))
    mid = (breaks[1:] + breaks[:-1]) / 2
    half = (breaks[1:] - breaks[:-1]) / 2
    z = mid[:, None] + half[:, None] * _GL_X
    weights = half[:, None] * _GL_W * jnp.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    u = s * z
    value, slope = jax.jvp(phi, (u,), (jnp.ones_like(u),))
    return jnp.sum(weights * value**2), jnp.sum(weights * slope**2)


@functools.partial(jax.jit, static_argnums=0)
def _moments(phi, q: jax.Array) -> jax.Array:
    """``[E[φ(√q·z)²], E[φ′(√q·z)²]]``, compiled once per activation."""
    return jnp.stack(_gaussian_moments(phi, q))


def _mean_field_recursion(
    phi, sigma_w2: np.ndarray, input_moment: float
) -> tuple[np.ndarray, np.ndarray]:
    """q_l and χ_l for l = 1 … len(sigma_w2), in float64.

    The recursion over the layers runs on the host, one small compiled call
    per layer, so that no depth needs a compilation of its own.
    """
    depth = len(sigma_w2)
    q = np.empty(depth)
    chi = np.empty(depth)
    q_l = float(sigma_w2[0] * input_moment)
    with jax.enable_x64(True):
        for layer in range(depth):
            phi_sq, slope_sq = np.asarray(_moments(phi, q_l))
            q[layer] = q_l
            chi[layer] = sigma_w2[layer] * slope_sq
            q_l = float(sigma_w2[min(layer + 1, depth - 1)] * phi_sq)
    return q, chi


class MeanField(NamedTuple):
    """Mean-field quantities of a deep network, per layer (input side first).

    Attributes:
        q: ``(depth,)``, the pre-activation variance of each layer.
        chi: ``(depth,)``, χ₁ = σ_w²·E[φ′(z)²] of each layer, the factor by
            which backpropagating through that layer multiplies ‖∂J/∂h‖².
    """

    q: np.ndarray
    chi: np.ndarray


def mean_field(
    activation: str | Callable[[jax.Array], jax.Array],
    sigma_w2: float | Sequence[float] | np.ndarray,
    depth: int | None = None,
    input_moment: float = 1.0,
) -> MeanField:
    """The mean-field variance q_l and gradient gain χ_l of a deep network.

    For a wide network with zero biases and weights of variance σ_w²/fan_in,
    the pre-activations of layer l are Gaussian with variance
    q_1 = σ_w²·E[x²] and q_{l+1} = σ_w²·E[φ(√q_l·z)²], and backpropagating
    through layer l multiplies ‖∂J/∂h‖² by χ_l = σ_w²·E[φ′(√q_l·z)²]
    (Poole et al. 2016; Schoenholz et al. 2017). For a linear activation
    χ = σ_w², for ReLU χ = σ_w²/2, for tanh χ depends on q and is computed
    here by composite Gauss–Legendre quadrature over the Gaussian, in float64
    under a scoped ``jax.enable_x64``.

    Args:
        activation: a name from :data:`jaxcheck.nn.ACTIVATIONS` or an
            elementwise callable.
        sigma_w2: σ_w² = fan_in·Var(w), one per layer or one for all.
        depth: the number of layers when ``sigma_w2`` is a single number.
        input_moment: E[x²] of the network input.

    Returns:
        A :class:`MeanField` of float64 numpy arrays.

    Raises:
        ValueError: if ``depth`` is missing for a scalar ``sigma_w2`` or
            inconsistent with a sequence.

    Example:
        >>> from jaxcheck import flow
        >>> flow.mean_field("relu", 2.0, depth=3).chi.round(6).tolist()
        [1.0, 1.0, 1.0]
        >>> flow.mean_field("linear", [1.21, 0.81]).chi.round(6).tolist()
        [1.21, 0.81]
    """
    phi = _nn.get_activation(activation)
    if depth is not None:
        depth = _positive_int(depth, "depth")
    s2 = np.atleast_1d(np.asarray(sigma_w2, dtype=np.float64))
    if s2.ndim != 1 or s2.size == 0:
        raise ValueError(
            f"sigma_w2 must be a number or a 1-D sequence; received shape {s2.shape}."
        )
    if s2.size == 1 and depth is not None:
        s2 = np.full(depth, s2[0])
    elif s2.size == 1 and np.ndim(sigma_w2) == 0:
        raise ValueError(
            "mean_field: pass depth=... with a single sigma_w2 (one value for "
            "every layer), or pass one sigma_w2 per layer."
        )
    elif depth is not None and depth != s2.size:
        raise ValueError(
            f"mean_field: depth={depth} but sigma_w2 has {s2.size} entries."
        )
    q, chi = _mean_field_recursion(phi, s2, float(input_moment))
    return MeanField(q, chi)


# --------------------------------------------------------------------------
# Depth profiles
# --------------------------------------------------------------------------


def _draw_network(key, w_init, depth, width, batch):
    """Stacked float64 weights ``(depth, width, width)``, input x and readout v.

    Layer ``l`` is drawn from ``fold_in(key_w, l)``, one layer at a time rather
    than under ``vmap``: every operation then has a shape that does not depend
    on the depth, so it compiles once per width and is reused for every depth
    and every scheme.
    """
    k_w, k_x, k_v = jax.random.split(key, 3)
    shape = (width, width)
    weights = jnp.stack(
        [w_init(jax.random.fold_in(k_w, i), shape, jnp.float64) for i in range(depth)]
    )
    x = jax.random.normal(k_x, (batch, width), jnp.float64)
    v = jax.random.normal(k_v, (batch, width), jnp.float64)
    return weights, x, v


@functools.partial(jax.jit, static_argnums=0)
def _profile(phi, weights, x, v):
    """Tap statistics, ‖∂J/∂W_l‖, σ_w² and E[x²] of a deep MLP."""

    def loss(weights, probes):
        h = _probe_identity(x, probes[0])

        def layer(h, w_and_probe):
            w, probe = w_and_probe
            return _probe_identity(phi(h @ w), probe), None

        h, _ = jax.lax.scan(layer, h, (weights, probes[1:]))
        return jnp.sum(v * h)

    probes = jnp.zeros((weights.shape[0] + 1, _STATS), x.dtype)
    grad_w, stats = jax.grad(loss, argnums=(0, 1))(weights, probes)
    rows = jnp.abs(grad_w).reshape(grad_w.shape[0], -1)
    ids = np.repeat(np.arange(rows.shape[0]), rows.shape[1])
    weight_grad = _scaled_norms(rows.ravel(), ids, rows.shape[0])

    # σ_w² = fan_in · mean(W²), measured on the drawn weights
    sigma_w2 = weights.shape[1] * jnp.mean(weights**2, axis=(1, 2))
    return stats, weight_grad, sigma_w2, jnp.mean(x**2)


def _label(obj: Any) -> str:
    """A short name for an activation or initialiser."""
    if isinstance(obj, str):
        return obj
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if qualname is None:
        return repr(obj)
    # a closure made by a factory, such as jax.nn.initializers.constant(0.9)
    return qualname.split(".<locals>")[0]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer; received {value!r}.")
    return int(value)


def _as_key(key: jax.Array | int) -> jax.Array:
    if isinstance(key, int | np.integer):
        return jax.random.key(int(key))
    return key


@dataclasses.dataclass(frozen=True, eq=False)
class DepthProfile:
    """Signal and activation scale through a freshly initialised deep MLP.

    The network is h_0 = x, h_l = φ(h_{l-1} W_l) for l = 1 … depth, with
    ``width × width`` weights, zero biases, a standard-normal input batch
    ``x`` and the loss J = Σ v ⊙ h_depth for a fixed standard-normal ``v`` of
    the same shape, so ∂J/∂h_depth = v excites every direction.

    Attributes:
        depth, width, batch: the network and batch size.
        activation: the activation's name.
        init: the initialiser's name.
        signal: ``(depth + 1,)``, ‖∂J/∂h_l‖ for l = 0 … depth.
        activation_scale: ``(depth + 1,)``, the RMS of h_l.
        weight_grad: ``(depth,)``, ‖∂J/∂W_l‖ for l = 1 … depth.
        chi: ``(depth,)``, mean-field χ₁ of each layer, using σ_w² =
            fan_in·mean(W_l²) measured on the drawn weights.
        prediction: ``(depth + 1,)``, the mean-field signal,
            signal[depth]·∏_{k>l} √χ_k.
        ratio: signal[0] / signal[depth].
        weight_ratio: weight_grad[0] / weight_grad[-1].
        verdict: ``"vanishing"``, ``"exploding"`` or ``"healthy"`` from ``ratio``.
        vanishing_below, exploding_above: the thresholds used.
    """

    depth: int
    width: int
    batch: int
    activation: str
    init: str
    signal: np.ndarray
    activation_scale: np.ndarray
    weight_grad: np.ndarray
    chi: np.ndarray
    prediction: np.ndarray
    ratio: float
    weight_ratio: float
    verdict: str
    vanishing_below: float = VANISHING_BELOW
    exploding_above: float = EXPLODING_ABOVE

    @property
    def predicted_ratio(self) -> float:
        """The mean-field prediction of ``ratio``, ∏ √χ_l."""
        return float(self.prediction[0] / self.prediction[-1])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields (arrays become lists)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.tolist() if isinstance(value, np.ndarray) else value
        out["predicted_ratio"] = self.predicted_ratio
        return out

    def __str__(self) -> str:
        head = (
            f"Depth profile: {self.activation}, {self.init}, depth {self.depth}, "
            f"width {self.width}, batch {self.batch} (float64)\n"
            f"  ‖∂J/∂h_0‖ / ‖∂J/∂h_{self.depth}‖ = {self.ratio:.3e} "
            f"(mean field {self.predicted_ratio:.3e}) -> {self.verdict}\n"
            f"  ‖∂J/∂W_1‖ / ‖∂J/∂W_{self.depth}‖ = {self.weight_ratio:.3e}\n"
            f"  {'layer':>5}  {'‖∂J/∂h‖':>10}  {'mean field':>10}  {'rms(h)':>10}"
        )
        rows = [
            f"  {i:>5}  {s:>10.3e}  {p:>10.3e}  {a:>10.3e}"
            for i, (s, p, a) in enumerate(
                zip(self.signal, self.prediction, self.activation_scale, strict=True)
            )
        ]
        return "\n".join([head, *_elide(rows, keep=5)])


def depth_profile(
    depth: int,
    width: int,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    init: str | Callable[..., jax.Array] = "lecun_normal",
    key: jax.Array | int = 0,
    *,
    batch: int = 64,
    vanishing_below: float = VANISHING_BELOW,
    exploding_above: float = EXPLODING_ABOVE,
) -> DepthProfile:
    """Measure how the backpropagated signal changes through a deep MLP.

    Builds the network described in :class:`DepthProfile` with ``depth``
    square layers drawn by ``init``, runs one forward and backward pass in
    float64 (inside a scoped ``jax.enable_x64``, so the caller's setting is
    unchanged), records ‖∂J/∂h_l‖ and the RMS of h_l at every layer and
    compares the signal with the mean-field prediction (:func:`mean_field`).
    The layers run in a ``jax.lax.scan`` over stacked weights, so a depth of
    hundreds compiles as fast as a depth of one; the compiled function is
    reused for every call with the same activation and shapes.

    The mean field describes an infinitely wide network. At finite width the
    log of the signal norm picks up a random walk whose variance and negative
    drift grow like depth/width, strongest for ReLU (Hanin, 2018): with
    150 layers of width 64, He's scheme, for which the mean field predicts a
    ratio of one, measures between about 0.02 and 0.3 depending on the seed.

    References:
        B. Hanin, "Which Neural Net Architectures Give Rise to Exploding and
        Vanishing Gradients?", NeurIPS 2018.

    Args:
        depth: the number of hidden layers.
        width: their width (also the input width).
        activation: a name from :data:`jaxcheck.nn.ACTIVATIONS` or a callable.
        init: a scheme name from :data:`jaxcheck.init.SCHEMES` or an
            initialiser callable ``(key, shape, dtype) -> Array``.
        key: a PRNG key, or an int seed for ``jax.random.key``.
        batch: the number of input rows.
        vanishing_below: ratios below this are "vanishing".
        exploding_above: ratios above this are "exploding".

    Returns:
        A :class:`DepthProfile`.

    Raises:
        ValueError: for a non-positive ``depth``, ``width`` or ``batch``, an
            unknown activation or scheme name, or invalid thresholds.

    Example:
        >>> import jax
        >>> from jaxcheck import flow, init
        >>> chain = jax.nn.initializers.constant(0.9)  # a scalar chain, w = 0.9
        >>> p = flow.depth_profile(150, 1, "linear", chain, batch=1)
        >>> round(p.ratio / 0.9**150, 9), p.verdict
        (1.0, 'vanishing')
        >>> flow.depth_profile(20, 32, "relu", "he_normal", key=0).signal.shape
        (21,)
    """
    depth = _positive_int(depth, "depth")
    width = _positive_int(width, "width")
    batch = _positive_int(batch, "batch")
    _check_thresholds(vanishing_below, exploding_above)
    phi = _nn.get_activation(activation)
    w_init = _init.resolve(init)
    key = _as_key(key)

    with jax.enable_x64(True):
        weights, x, v = _draw_network(key, w_init, depth, width, batch)
        stats, weight_grad, sigma_w2, input_moment = map(
            np.asarray, _profile(phi, weights, x, v)
        )

    _, chi = _mean_field_recursion(phi, sigma_w2, float(input_moment))

    signal = np.sqrt(stats[:, 0])
    scale = np.sqrt(stats[:, 1] / stats[:, 2])
    gains = np.sqrt(chi)
    prediction = signal[-1] * np.concatenate([np.cumprod(gains[::-1])[::-1], [1.0]])
    ratio = _ratio(signal[0], signal[-1])
    return DepthProfile(
        depth=depth,
        width=width,
        batch=batch,
        activation=_label(activation),
        init=_label(init),
        signal=signal,
        activation_scale=scale,
        weight_grad=weight_grad,
        chi=chi,
        prediction=prediction,
        ratio=ratio,
        weight_ratio=_ratio(weight_grad[0], weight_grad[-1]),
        verdict=_verdict(ratio, vanishing_below, exploding_above),
        vanishing_below=vanishing_below,
        exploding_above=exploding_above,
    )


# --------------------------------------------------------------------------
# The seed experiment
# --------------------------------------------------------------------------


class Scheme(NamedTuple):
    """One row of :func:`seed_experiment`: an activation and an initialiser.

    Attributes:
        label: the name shown in the table.
        activation: a name from :data:`jaxcheck.nn.ACTIVATIONS` or a callable.
        init: a scheme name or an initialiser callable.
        width: overrides the experiment's width (1 for a scalar chain).
        batch: overrides the experiment's batch size.
    """

    label: str
    activation: str | Callable[[jax.Array], jax.Array]
    init: str | Callable[..., jax.Array]
    width: int | None = None
    batch: int | None = None


DEFAULT_SCHEMES: tuple[Scheme, ...] = (
    Scheme("linear, gain 1.1", "linear", _init.scaled(1.1)),
    Scheme("linear, gain 0.9", "linear", _init.scaled(0.9)),
    Scheme("tanh, LeCun", "tanh", "lecun_normal"),
    Scheme("tanh, std 0.5/√fan_in", "tanh", _init.scaled(0.5)),
    Scheme("tanh, std 2/√fan_in", "tanh", _init.scaled(2.0)),
    Scheme("ReLU, He", "relu", "he_normal"),
    Scheme("ReLU, LeCun", "relu", "lecun_normal"),
    Scheme(
        "scalar chain, w = 1.1",
        "linear",
        jax.nn.initializers.constant(1.1),
        width=1,
        batch=1,
    ),
    Scheme(
        "scalar chain, w = 0.9",
        "linear",
        jax.nn.initializers.constant(0.9),
        width=1,
        batch=1,
    ),
)
"""The schemes of the classic experiment: gains above, at and below one."""


@dataclasses.dataclass(frozen=True)
class SchemeResult:
    """One scheme of a :class:`SeedExperiment`, over every seed.

    Attributes:
        label: the scheme's label.
        activation: the activation's name.
        init: the initialiser's name.
        width: the width used.
        batch: the batch size used.
        ratios: ‖∂J/∂h_0‖ / ‖∂J/∂h_depth‖, one per seed.
        predicted: the mean-field prediction of each ratio.
        weight_ratios: ‖∂J/∂W_1‖ / ‖∂J/∂W_depth‖, one per seed.
        verdicts: the verdict of each seed.
    """

    label: str
    activation: str
    init: str
    width: int
    batch: int
    ratios: tuple[float, ...]
    predicted: tuple[float, ...]
    weight_ratios: tuple[float, ...]
    verdicts: tuple[str, ...]

    @property
    def verdict(self) -> str:
        """The verdict shared by every seed, or ``"mixed"``."""
        return self.verdicts[0] if len(set(self.verdicts)) == 1 else "mixed"


@dataclasses.dataclass(frozen=True)
class SeedExperiment:
    """How the signal ratio of deep MLPs depends on the initialisation scheme.

    ``str()`` is a table with one row per scheme and one column per seed;
    ``to_dict()`` is JSON-serialisable; ``experiment["tanh, LeCun"]`` is the
    :class:`SchemeResult` with that label.

    Attributes:
        depth: the number of layers.
        width: the default width.
        batch: the default batch size.
        seeds: the seeds, one network per seed and scheme.
        results: one :class:`SchemeResult` per scheme.
    """

    depth: int
    width: int
    batch: int
    seeds: tuple[int, ...]
    results: tuple[SchemeResult, ...]

    def __getitem__(self, label: str) -> SchemeResult:
        for result in self.results:
            if result.label == label:
                return result
        raise KeyError(
            f"No scheme labelled {label!r}; the labels are "
            f"{[r.label for r in self.results]}."
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the experiment and its results."""
        return {
            "depth": self.depth,
            "width": self.width,
            "batch": self.batch,
            "seeds": list(self.seeds),
            "results": [
                {**dataclasses.asdict(r), "verdict": r.verdict} for r in self.results
            ],
        }

    def __str__(self) -> str:
        d = self.depth
        label_w = max([len(r.label) for r in self.results] + [6])
        seed_cols = [f"seed {s}" for s in self.seeds]
        weight_col = f"‖∂J/∂W_1‖/‖∂J/∂W_{d}‖"
        header = (
            f"  {'scheme':<{label_w}}"
            + "".join(f"  {c:>9}" for c in seed_cols)
            + f"  {'mean field':>10}  {weight_col:>24}  verdict"
        )
        lines = [
            f"Backpropagated signal through {d} layers "
            f"(width {self.width}, batch {self.batch}, float64)",
            f"  ratio = ‖∂J/∂h_0‖ / ‖∂J/∂h_{d}‖ with J = Σ v·h_{d}, v ~ N(0, 1); "
            f"healthy within [{VANISHING_BELOW:.0e}, {EXPLODING_ABOVE:.0e}]",
            "",
            header,
        ]
        for r in self.results:
            predicted = math.exp(np.mean(np.log(r.predicted)))
            low = f"{min(r.weight_ratios):.2g}"
            high = f"{max(r.weight_ratios):.2g}"
            weights = low if low == high else f"{low} to {high}"
            lines.append(
                f"  {r.label:<{label_w}}"
                + "".join(f"  {x:>9.2e}" for x in r.ratios)
                + f"  {predicted:>10.2e}  {weights:>24}  {r.verdict}"
            )
        return "\n".join(lines)


def seed_experiment(
    depth: int = 150,
    width: int = 64,
    batch: int = 64,
    seeds: Sequence[int] = (0, 1, 2),
    schemes: Sequence[Scheme] = DEFAULT_SCHEMES,
) -> SeedExperiment:
    """Run :func:`depth_profile` for several schemes and seeds and tabulate it.

    The default schemes are linear networks with gains 1.1 and 0.9 (std
    g/√fan_in), tanh with LeCun's scheme and with std 0.5/√fan_in and
    2/√fan_in, ReLU with He's and with LeCun's scheme, and scalar chains
    (width 1) with weight 1.1 and 0.9, whose ratios are exactly 1.1^depth
    and 0.9^depth. Seed ``s`` draws its network from ``jax.random.key(s)``.
    With the defaults it takes a few seconds on a CPU.

    Args:
        depth: the number of layers.
        width: the width of every layer (unless a scheme overrides it).
        batch: the batch size (unless a scheme overrides it).
        seeds: integer seeds, one network per seed and scheme.
        schemes: the rows of the table.

    Returns:
        A :class:`SeedExperiment`; ``str()`` of it is the table.

    Raises:
        ValueError: for non-positive sizes, no seeds or no schemes.

    Example:
        >>> from jaxcheck import flow
        >>> schemes = [s for s in flow.DEFAULT_SCHEMES if "gain" in s.label]
        >>> table = flow.seed_experiment(depth=150, width=16, batch=8, schemes=schemes)
        >>> [(r.label, r.verdict) for r in table.results]
        [('linear, gain 1.1', 'exploding'), ('linear, gain 0.9', 'vanishing')]
        >>> print(table)  # doctest: +SKIP
    """
    depth = _positive_int(depth, "depth")
    width = _positive_int(width, "width")
    batch = _positive_int(batch, "batch")
    seeds = tuple(int(s) for s in seeds)
    schemes = tuple(schemes)
    if not seeds or not schemes:
        raise ValueError(
            "seed_experiment needs at least one seed and one scheme; received "
            f"seeds={seeds!r} and {len(schemes)} scheme(s)."
        )
    results = []
    for scheme in schemes:
        w = width if scheme.width is None else scheme.width
        b = batch if scheme.batch is None else scheme.batch
        profiles = [
            depth_profile(depth, w, scheme.activation, scheme.init, s, batch=b)
            for s in seeds
        ]
        results.append(
            SchemeResult(
                label=scheme.label,
                activation=profiles[0].activation,
                init=profiles[0].init,
                width=w,
                batch=b,
                ratios=tuple(p.ratio for p in profiles),
                predicted=tuple(p.predicted_ratio for p in profiles),
                weight_ratios=tuple(p.weight_ratio for p in profiles),
                verdicts=tuple(p.verdict for p in profiles),
            )
        )
    return SeedExperiment(depth, width, batch, seeds, tuple(results))

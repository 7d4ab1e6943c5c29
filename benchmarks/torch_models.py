"""M3: ``torch.autograd.gradcheck`` on a torch replica of a workload's model.

Torch is not a dependency of jaxcheck: every function here imports it lazily,
and ``torch_version()`` says whether it can be used. The replica takes the
JAX parameters and data, converted to float64 torch tensors, and its loss is
compared with the JAX float64 loss before anything is timed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from harness import PeakRSS, Result, repeat, timed
from methods import Options, relative_error, spaced_subset
from workloads import Workload, to_float64

from jaxcheck.models import Example

# The replica's loss must match the JAX float64 loss this closely (relative to
# max(1, |loss|)) before gradcheck is timed on it.
AGREEMENT = 1e-12


def torch_version() -> str | None:
    """The installed torch version, or None when torch cannot be imported."""
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


def replica(
    example: Example, activation: str, loss: str
) -> tuple[Callable[..., Any], list[Any]]:
    """A torch loss of the MLP's weights and biases, and those as tensors.

    The model is the MLP of ``jaxcheck.nn.mlp``: ``h = act(h @ w + b)`` for the
    hidden layers and a linear last layer, followed by the mean softmax
    cross-entropy over integer labels or the mean squared error.

    Args:
        example: a workload built from ``jaxcheck.models`` (a list of
            ``{"w", "b"}`` layers and arguments ``(x, y)``).
        activation: "tanh" or "relu".
        loss: "cross_entropy" or "mse".

    Returns:
        ``(fn, tensors)``: ``fn(w0, b0, w1, b1, ...) -> scalar tensor`` and the
        float64 parameters in that order.
    """
    import torch
    import torch.nn.functional as F

    tensors = [
        torch.from_numpy(np.asarray(p[name], dtype=np.float64))
        for p in example.params
        for name in ("w", "b")
    ]
    x_np, y_np = (np.asarray(a) for a in example.args)
    x = torch.from_numpy(x_np.astype(np.float64))
    if loss == "cross_entropy":
        y = torch.from_numpy(y_np.astype(np.int64))
    else:
        y = torch.from_numpy(y_np.astype(np.float64))
    act = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    last = len(tensors) // 2 - 1

    def fn(*params: torch.Tensor) -> torch.Tensor:
        h = x
        for k in range(last + 1):
            h = h @ params[2 * k] + params[2 * k + 1]
            if k < last:
                h = act(h)
        if loss == "cross_entropy":
            return F.cross_entropy(h, y)
        return ((h - y) ** 2).mean()

    return fn, tensors


def on_subset(
    fn: Callable[..., Any], tensors: list[Any], coords: np.ndarray
) -> tuple[Callable[[Any], Any], Any]:
    """``fn`` as a function of a few coordinates only, the others held fixed.

    Args:
        fn: a loss of several tensors.
        tensors: the point, in ``fn``'s argument order.
        coords: indices into the concatenation of the raveled tensors.

    Returns:
        ``(sub_fn, start)``: ``sub_fn(v)`` is ``fn`` at the point with those
        coordinates set to ``v``, and ``start`` their values at the point.
    """
    import torch

    bounds = np.cumsum([0] + [t.numel() for t in tensors])
    owner = np.searchsorted(bounds, coords, side="right") - 1
    parts = []
    for j in np.unique(owner):
        members = np.flatnonzero(owner == j)
        local = torch.from_numpy(coords[members] - bounds[j])
        parts.append((int(j), int(members[0]), int(members[-1]) + 1, local))
    flat = torch.cat([t.reshape(-1) for t in tensors])
    start = flat[torch.from_numpy(coords)].clone()

    def sub_fn(values: torch.Tensor) -> torch.Tensor:
        args = list(tensors)
        for j, lo, hi, local in parts:
            raveled = tensors[j].reshape(-1).index_put((local,), values[lo:hi])
            args[j] = raveled.view(tensors[j].shape)
        return fn(*args)

    return sub_fn, start


def _jax_loss(example: Example) -> float:
    with jax.enable_x64(True):
        params = to_float64(example.params)
        args = to_float64(example.args)
        return float(example.fn(params, *args, **example.check_kwargs()))


@contextlib.contextmanager
def _numerical_gradients(store: list[Any]) -> Iterator[None]:
    """Keeps the numerical Jacobians gradcheck computes, where it can.

    gradcheck returns only a boolean; its private ``_get_numerical_jacobian``
    is wrapped so that its result is kept for the relative error. Where that
    function does not exist (another torch version), nothing is kept.
    """
    module = sys.modules.get("torch.autograd.gradcheck")
    original = getattr(module, "_get_numerical_jacobian", None)
    if original is None:
        yield
        return

    def keep(*args: Any, **kwargs: Any) -> Any:
        jacobians = original(*args, **kwargs)
        store[:] = [jacobians]
        return jacobians

    module._get_numerical_jacobian = keep
    try:
        yield
    finally:
        module._get_numerical_jacobian = original


def _flat_tensors(tree: Any) -> np.ndarray | None:
    """Every tensor inside nested lists and tuples, raveled and concatenated."""
    found: list[np.ndarray] = []

    def visit(node: Any) -> None:
        if isinstance(node, list | tuple):
            for item in node:
                visit(item)
        elif hasattr(node, "numel"):
            found.append(node.detach().cpu().numpy().reshape(-1))

    visit(tree)
    return np.concatenate(found) if found else None


def run_gradcheck(
    workload: Workload, example: Example, options: Options, fast: bool
) -> Result:
    """M3: ``torch.autograd.gradcheck`` in full mode or with ``fast_mode=True``.

    The inputs are the model's weights and biases, as a user would pass them;
    full mode checks every coordinate, or an evenly spaced subset of
    ``options.torch_coords`` (else the workload's ``torch_coords``); the time
    for all of them is then one forward and backward pass plus the rest
    scaled by ``n / subset``. Warm-up is a gradcheck of a tiny function and one
    forward and backward pass; torch has nothing to compile. Torch runs with
    ``options.torch_threads`` intra-op threads: on these small models one
    thread is faster than two, by far when the CPU is shared.
    """
    name = "M3-fast" if fast else "M3-full"
    version = torch_version()
    if version is None:
        return Result(workload.key, name, skipped="torch is not installed")
    import torch

    fn, tensors = replica(example, workload.activation, workload.loss)
    expected, got = _jax_loss(example), float(fn(*tensors))
    if abs(got - expected) > AGREEMENT * max(1.0, abs(expected)):
        return Result(
            workload.key,
            name,
            skipped=f"torch replica loss {got!r} differs from JAX's {expected!r}",
        )

    n = sum(t.numel() for t in tensors)
    k = workload.torch_coords if options.torch_coords is None else options.torch_coords
    coords = spaced_subset(n, None if fast else k)
    if coords.size < n:
        checked_fn, start = on_subset(fn, tensors, coords)
        inputs = (start.requires_grad_(True),)
    else:
        checked_fn = fn
        inputs = tuple(t.clone().requires_grad_(True) for t in tensors)

    def warm_up() -> None:
        # The first gradcheck of a process imports modules lazily.
        tiny = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda t: (t * t).sum(), (tiny,))
        forward_backward()

    def forward_backward() -> None:
        torch.autograd.grad(checked_fn(*inputs), inputs)

    def once() -> tuple[float, bool]:
        torch.manual_seed(0)
        return timed(
            lambda: torch.autograd.gradcheck(
                checked_fn,
                inputs,
                eps=options.eps,
                fast_mode=fast,
                raise_exception=False,
            )
        )

    kept: list[Any] = []
    threads = torch.get_num_threads()
    if options.torch_threads is not None:
        torch.set_num_threads(options.torch_threads)
    try:
        with PeakRSS() as mem:
            warm_up()
            fb_timing = repeat(lambda: timed(forward_backward), 3, 0.0)
            with _numerical_gradients(kept):
                timing = repeat(
                    once, options.repeats, options.min_time, options.max_time
                )
    finally:
        torch.set_num_threads(threads)

    result = Result(workload.key, name)
    result.record_memory(mem)
    result.record_timing(timing)
    result.outcome = "passes" if timing.values[-1] else "fails"
    if fast:
        result.checked, result.unit, result.evaluations = 1, "directions", 2
        return result

    m = coords.size
    result.checked, result.evaluations = n, 2 * n
    grads = torch.autograd.grad(checked_fn(*inputs), inputs)
    analytic = np.concatenate([g.numpy().reshape(-1) for g in grads])
    numerical = _flat_tensors(kept)
    if numerical is not None and numerical.size == m:
        result.rel_error = relative_error(numerical, analytic)
    if m < n:
        fb = fb_timing.median
        result.seconds = fb + max(result.seconds - fb, 0.0) * n / m
        result.extrapolated, result.subset = True, m
        result.notes.append(
            f"M3-full: gradcheck over {m:,} of {n:,} evenly spaced coordinates; "
            "time and rate scaled to all, rel.err over the subset."
        )
    return result

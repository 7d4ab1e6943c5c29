"""The JAX methods: jaxcheck in each mode, the naive loop (M1), check_grads (M2).

Each ``run_*`` function measures one method on one workload and returns a
``harness.Result``. Baselines run in float64 inside ``jax.enable_x64``, on
the workload's parameters and floating inputs cast to float64 (exactly, from
float32), as jaxcheck does by default.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from harness import PeakRSS, Result, Timing, repeat, timed
from jax.flatten_util import ravel_pytree
from workloads import Corruption, Workload, corrupted_loss, to_float64

import jaxcheck
from jaxcheck.models import Example


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings shared by every method.

    Attributes:
        repeats: the least number of timed runs.
        min_time: the least total of timed seconds (cheap methods run more).
        eps: the step of the baselines' finite differences.
        m1_coords: coordinates M1 checks (None: all); the time for all of them
            is then extrapolated.
        torch_coords: coordinates torch's full gradcheck checks (None: the
            workload's default; 0: all).
        corrupt_factor: what the corrupted loss multiplies its entry by.
        max_time: no further timed run starts once the timed runs add up to
            this many seconds; a jaxcheck check whose first run (compilation
            excluded) takes this long is timed by that run alone.
        torch_threads: ``torch.set_num_threads`` for M3 (None: torch's
            default).
    """

    repeats: int = 3
    min_time: float = 1.0
    eps: float = 1e-6
    m1_coords: int | None = None
    torch_coords: int | None = None
    corrupt_factor: float = 1.05
    max_time: float = 30.0
    torch_threads: int | None = 1


def relative_error(numerical: np.ndarray, analytic: np.ndarray) -> float:
    """``‖g_num − g‖ / (‖g_num‖ + ‖g‖)``, 0 when both are zero."""
    denom = np.linalg.norm(numerical) + np.linalg.norm(analytic)
    return float(np.linalg.norm(numerical - analytic) / denom) if denom else 0.0


def spaced_subset(n: int, k: int | None) -> np.ndarray:
    """``k`` coordinates spread evenly over ``range(n)``, or all of them."""
    if k is None or k <= 0 or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def fresh(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A new function object calling ``fn``.

    Compiled functions are cached by function identity, in JAX and in
    jaxcheck; a fresh wrapper makes each method compile its own, so that its
    first call is cold and no method profits from another's compilation.
    """

    def loss(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return loss


# -- jaxcheck --------------------------------------------------------------


def _directions(report: jaxcheck.GradCheckReport) -> int:
    per_leaf = sum(leaf.directions for leaf in report.leaves)
    return per_leaf + sum(1 for d in report.directions if d.path == "(all leaves)")


def run_jaxcheck(
    workload: Workload,
    example: Example,
    mode: str,
    options: Options,
    corruption: Corruption | None = None,
) -> Result:
    """``jaxcheck.check_grads`` in ``mode``, cold once and then warm.

    With ``corruption``, the loss is ``workloads.corrupted_loss`` and the row
    says whether the check failed and whether its worst coordinate is the
    corrupted entry.
    """
    name = "corrupted" if corruption is not None else mode
    fn = fresh(example.fn)
    if corruption is not None:
        fn = corrupted_loss(fn, corruption, len(example.args))
    kwargs = {"mode": mode, "progress": False, **example.check_kwargs()}
    if mode == "sample" and workload.samples is not None:
        kwargs["samples"] = workload.samples

    def check() -> jaxcheck.GradCheckReport:
        return jaxcheck.check_grads(fn, example.params, *example.args, **kwargs)

    def warm() -> tuple[float, jaxcheck.GradCheckReport]:
        report = check()
        return report.seconds - report.compile_seconds, report

    with PeakRSS() as mem:
        cold = check()
        first = cold.seconds - cold.compile_seconds
        if first >= options.max_time:
            timing = Timing([first], [cold])
        else:
            timing = repeat(warm, options.repeats, options.min_time, options.max_time)
    report = timing.values[-1]

    result = Result(workload.key, name)
    result.record_memory(mem)
    result.record_timing(timing)
    result.cold_seconds = cold.seconds
    result.compile_seconds = cold.compile_seconds
    result.evaluations = report.evaluations
    result.rel_error = report.relative_error
    result.outcome = report.verdict.name
    if timing.values[0] is cold:
        result.notes.append(
            f"{name}: timed by its first run alone (compilation excluded), which "
            f"took more than {options.max_time:g} s."
        )
    if mode == "sample" and workload.samples is not None:
        result.notes.append(f"{name}: samples={workload.samples:,}.")
    if mode == "directional":
        result.checked, result.unit = _directions(report), "directions"
        if report.checked:
            result.notes.append(
                f"{name}: bisection also compared {report.checked:,} coordinates."
            )
    else:
        result.checked = report.checked
    recompiled = max(r.compile_seconds for r in timing.values)
    if recompiled > 0.01:
        result.notes.append(f"{name}: warm runs still compiled for {recompiled:.2f} s.")
    if corruption is not None:
        result.outcome += _located(report, corruption)
        result.notes.append(
            f"corrupted: the gradient entry {corruption.location} "
            f"({corruption.gradient:+.3e}, {corruption.share:.2%} of the leaf's "
            f"gradient norm) multiplied by {corruption.factor:g} in a custom_vjp."
        )
    return result


def _located(report: jaxcheck.GradCheckReport, corruption: Corruption) -> str:
    if not report.worst:
        return ", nothing located"
    top = report.worst[0]
    if top.path == corruption.path and tuple(top.index) == corruption.index:
        return f", located {top.location}"
    return f", not located (worst {top.location})"


# -- M1: a Python loop of jitted evaluations --------------------------------


def run_naive_loop(workload: Workload, example: Example, options: Options) -> Result:
    """M1: ``2n`` jitted loss calls on numpy-perturbed copies of the raveled θ.

    One run is the analytic gradient (one jitted call) and the loop over the
    checked coordinates; with ``options.m1_coords`` the loop's time is scaled
    to every coordinate. Compile time is the first call of the loss and of the
    gradient minus a warm call of each.
    """
    eps = options.eps
    with jax.enable_x64(True):
        params = to_float64(example.params)
        args = to_float64(example.args)
        kwargs = example.check_kwargs()
        flat, unravel = ravel_pytree(params)
        theta = np.asarray(flat, dtype=np.float64)
        n = theta.size
        coords = spaced_subset(n, options.m1_coords)

        def flat_loss(t: jax.Array, *a: Any) -> jax.Array:
            return example.fn(unravel(t), *a, **kwargs)

        loss = jax.jit(flat_loss)
        grad = jax.jit(jax.grad(flat_loss))

        def once() -> tuple[float, tuple[np.ndarray, np.ndarray, float]]:
            start = time.perf_counter()
            g = np.asarray(grad(theta, *args))
            grad_seconds = time.perf_counter() - start
            buf = theta.copy()
            g_num = np.empty(coords.size)
            for j, i in enumerate(coords):
                t = theta[i]
                buf[i] = t + eps
                plus = float(loss(buf, *args))
                buf[i] = t - eps
                minus = float(loss(buf, *args))
                buf[i] = t
                g_num[j] = (plus - minus) / (2 * eps)
            loop_seconds = time.perf_counter() - start - grad_seconds
            total = grad_seconds + loop_seconds * n / coords.size
            return total, (g, g_num, loop_seconds)

        with PeakRSS() as mem:
            first = timed(lambda: float(loss(theta, *args)))[0]
            first += timed(lambda: grad(theta, *args).block_until_ready())[0]
            warm = timed(lambda: float(loss(theta, *args)))[0]
            warm += timed(lambda: grad(theta, *args).block_until_ready())[0]
            timing = repeat(once, options.repeats, options.min_time, options.max_time)

    g, g_num, _ = timing.values[-1]
    result = Result(workload.key, "M1", checked=n, evaluations=2 * n + 1)
    result.record_memory(mem)
    result.record_timing(timing)
    result.compile_seconds = max(first - warm, 0.0)
    result.rel_error = relative_error(g_num, g[coords])
    if coords.size < n:
        result.extrapolated, result.subset = True, int(coords.size)
        result.notes.append(
            f"M1: looped over {coords.size:,} of {n:,} evenly spaced coordinates; "
            "time and rate scaled to all, rel.err over the subset."
        )
    return result


# -- M2: jax.test_util.check_grads ------------------------------------------

_RELATIVE = re.compile(r"Max relative difference[^:]*:\s*([-+0-9.eE]+|inf|nan)")


def _projection_difference(f: Callable[[Any], jax.Array], params: Any) -> float:
    """The relative difference of check_grads' projection, ``|a − b| / |b|``.

    ``check_vjp`` (what ``check_grads(order=1, modes=["rev"])`` calls, with the
    same seeded tangent and step) is given tolerances it cannot meet, so that
    it prints the difference; its primal check is made exact by returning
    ``f(params)`` itself as the primal.
    """
    from jax.test_util import check_vjp

    def f_vjp(p: Any) -> tuple[jax.Array, Callable[..., Any]]:
        return f(p), jax.vjp(f, p)[1]

    try:
        check_vjp(f, f_vjp, (params,), atol=1e-300, rtol=1e-300)
    except AssertionError as e:
        match = _RELATIVE.search(str(e))
        return float(match.group(1)) if match else float("nan")
    return 0.0


def run_check_grads(workload: Workload, example: Example, options: Options) -> Result:
    """M2: ``jax.test_util.check_grads(f, (params,), order=1, modes=["rev"])``.

    ``f`` calls a jitted loss. It checks one random projection of the
    gradient: 4 loss evaluations and one backward pass. Its relative error is
    that projection's ``|a − b| / |b|`` (see ``_projection_difference``).
    """
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        params = to_float64(example.params)
        args = to_float64(example.args)
        kwargs = example.check_kwargs()
        jitted = jax.jit(fresh(example.fn))

        def f(p: Any) -> jax.Array:
            return jitted(p, *args, **kwargs)

        def once() -> bool:
            try:
                check_grads(f, (params,), order=1, modes=["rev"])
            except AssertionError:
                return False
            return True

        with PeakRSS() as mem:
            cold, _ = timed(once)
            timing = repeat(
                lambda: timed(once), options.repeats, options.min_time, options.max_time
            )
            difference = _projection_difference(f, params)

    result = Result(workload.key, "M2", checked=1, unit="directions", evaluations=4)
    result.record_memory(mem)
    result.record_timing(timing)
    result.cold_seconds = cold
    result.compile_seconds = max(cold - result.seconds, 0.0)
    result.outcome = "passes" if timing.values[-1] else "fails"
    result.rel_error = difference
    return result

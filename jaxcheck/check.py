"""``check_grads`` and ``assert_grads``: what is checked, at which steps, and how.

A check runs in three passes, all of them compiled:

1. the loss and its analytic gradient at θ (``jax.value_and_grad``);
2. the loss at θ ± hᵢeᵢ for every checked coordinate (the engine, batched);
3. the loss at θ ± (hᵢ/4)eᵢ for the few coordinates whose first difference
   disagrees, to tell a wrong gradient from noise, truncation and kinks.

By default everything runs in float64 inside a scoped ``jax.enable_x64``, so
the caller's configuration and arrays are left as they were.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck import verdict as vd
from jaxcheck.finite_diff import Engine
from jaxcheck.problem import Problem, build
from jaxcheck.report import (
    Coordinate,
    GradCheckError,
    GradCheckReport,
    LeafReport,
    Verdict,
    tolerances_for,
)

MODES = ("full",)
_WORST = 10
_KINKS_LISTED = 100
# Repeated evaluations at θ may differ by a few rounding errors between
# differently compiled functions; this many units of roundoff are not
# reported as non-determinism.
_REPEAT_ROUNDOFF = 1e3


def _measure_dtype(dtype: Any) -> np.dtype | None:
    if dtype is None or (isinstance(dtype, str) and dtype == "native"):
        return None
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"dtype must be a floating dtype such as jnp.float64, or 'native'; "
            f"received {dtype!r}."
        ) from None
    if not jnp.issubdtype(d, jnp.floating):
        raise ValueError(
            f"dtype must be a floating dtype (jnp.float64, jnp.float32) or "
            f"'native'; received {d}."
        )
    return d


def _validate_eps(eps: float | None) -> None:
    if eps is None:
        return
    if not isinstance(eps, int | float | np.floating) or isinstance(eps, bool):
        raise TypeError(f"eps must be a positive float or None; received {eps!r}.")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(
            f"eps must be a positive, finite step; received eps={eps!r}. Leave it "
            "as None to let jaxcheck choose a step for each coordinate."
        )


def _precision_scope(measure: np.dtype | None):
    if measure is not None and measure == np.float64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def relative_step(param_dtype: Any, loss_dtype: Any) -> float:
    """The default relative step for a coordinate of ``param_dtype``.

    A centered difference has truncation error ~h² and round-off error ~u/h,
    balanced at ``h ~ ∛u`` with u the precision of the *loss*. The step must
    also move the parameter by several of its own units in the last place, so
    that θ ± h is not rounded away when the parameter is narrower than the loss
    (bfloat16 weights feeding a float32 loss).
    """
    return max(
        float(np.cbrt(np.finfo(loss_dtype).eps)), 4 * float(np.finfo(param_dtype).eps)
    )


def _steps(
    problem: Problem,
    theta: np.ndarray,
    idx: np.ndarray,
    eps: float | None,
    loss_dtype: Any,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``θᵢ + h`` and ``θᵢ − h``, representable in each leaf's dtype.

    The step is shrunk until both sides are exact in the leaf's dtype, so the
    difference stays centered even for coarse dtypes.
    """
    plus = np.empty(len(idx), dtype=np.float64)
    minus = np.empty(len(idx), dtype=np.float64)
    leaf_of = np.searchsorted(problem.offsets, idx, side="right") - 1
    for k, leaf in enumerate(problem.leaves):
        mine = leaf_of == k
        if not mine.any():
            continue
        dt = leaf.real_dtype
        x = theta[idx[mine]].astype(np.float64)
        if eps is None:
            h = relative_step(dt, loss_dtype) * np.maximum(np.abs(x), 1.0)
        else:
            h = np.full_like(x, eps)
        h = h * scale
        for _ in range(3):
            up = (x + h).astype(dt).astype(np.float64)
            down = (x - h).astype(dt).astype(np.float64)
            symmetric = np.minimum(up - x, x - down)
            if np.all(symmetric == h):
                break
            h = np.where(symmetric > 0, symmetric, h)
        plus[mine], minus[mine] = up, down
    return plus, minus


def _unit_roundoff(dtype: Any) -> float:
    return float(np.finfo(dtype).eps) / 2


def _nonfinite_message(problem: Problem, g: np.ndarray) -> str:
    bad = np.flatnonzero(~np.isfinite(g))
    where = []
    for i in bad[:5]:
        leaf, index, part = problem.locate(int(i))
        where.append(
            f"{leaf.path or '(root)'}{list(index)}{'.' + part if part else ''}"
        )
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return ", ".join(where) + more


def check_grads(
    fn: Callable[..., Any],
    params: Any,
    *args: Any,
    key: Any = None,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    mode: str = "full",
    eps: float | None = None,
    dtype: Any = jnp.float64,
    nondet_tol: float = 0.0,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool | None = None,
) -> GradCheckReport:
    """Checks the gradient of ``fn`` against centered finite differences.

    Every floating coordinate of the differentiated argument is moved by ±hᵢ
    and ``(J(θ + hᵢeᵢ) − J(θ − hᵢeᵢ)) / 2hᵢ`` is compared with ``jax.grad``.
    The perturbed evaluations are batched with ``jax.vmap`` and compiled with
    ``jax.jit``; coordinates whose difference disagrees are evaluated again at
    a smaller step, so that a wrong gradient is told apart from round-off,
    truncation and kinks.

    Args:
        fn: the loss, called as ``fn(params, *args)`` (or with ``key=key``); it
            returns a real scalar, or ``(scalar, aux)`` with ``has_aux``.
        params: any pytree. Floating and complex leaves are checked; integer,
            boolean and PRNG-key leaves and non-array leaves are left alone and
            listed in ``report.unchecked``.
        *args: further arguments of ``fn`` (inputs, labels), held fixed.
        key: a PRNG key passed to ``fn`` as ``key=key`` for the analytic
            gradient and for every perturbed evaluation alike, so stochastic
            models (dropout) are checked with one fixed draw.
        argnums: which positional argument of ``fn`` is checked (0 is
            ``params``), or a tuple of them.
        has_aux: ``fn`` returns ``(loss, aux)``.
        mode: "full" checks every coordinate.
        eps: the finite-difference step. None chooses
            ``hᵢ = ∛(machine eps) · max(|θᵢ|, 1)`` for each coordinate, which
            balances round-off against truncation error.
        dtype: the dtype the check is evaluated in. The default float64 upcasts
            the checked leaves and floating inputs inside a scoped
            ``jax.enable_x64``; "native" (or None) keeps each leaf's dtype and
            uses thresholds that fit it.
        nondet_tol: accepted difference between repeated evaluations of the
            loss at the same point (for a loss that is knowingly noisy).
        batch_size: perturbed evaluations per compiled call; None chooses it
            from the memory one evaluation needs.
        memory_budget: bytes one batch may use; None derives it from the device.
        progress: show a progress bar; None shows one on a terminal for long
            checks.

    Returns:
        A ``GradCheckReport``; ``str(report)`` is a readable table.

    Raises:
        TypeError, ValueError: for arguments that cannot be checked (a
            non-scalar or complex loss, ``argnums`` out of range, nothing
            floating to check, ``eps <= 0``), before anything is compiled.
        FloatingPointError: when the loss or its gradient is not finite at θ.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxcheck as jc
        >>> def loss(p, x):
        ...     return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)
        >>> params = {"w": jnp.ones((3, 2)) * 0.1, "b": jnp.zeros(2)}
        >>> report = jc.check_grads(loss, params, jnp.ones((4, 3)))
        >>> report.passed, report.verdict
        (True, <Verdict.CORRECT: 'correct'>)
    """
    start = time.perf_counter()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; received {mode!r}.")
    _validate_eps(eps)
    if nondet_tol < 0:
        raise ValueError(f"nondet_tol must be >= 0; received {nondet_tol!r}.")
    measure = _measure_dtype(dtype)

    with _precision_scope(measure):
        problem = build(
            fn,
            params,
            args,
            key=key,
            argnums=argnums,
            has_aux=has_aux,
            measure_dtype=measure,
        )
        engine = Engine(
            problem,
            batch_size=batch_size,
            memory_budget=memory_budget,
            progress=progress,
        )
        return _full_check(problem, engine, eps, nondet_tol, start)


def _full_check(
    problem: Problem, engine: Engine, eps: float | None, nondet_tol: float, start: float
) -> GradCheckReport:
    loss, _, g = engine.value_and_grad()
    if not np.isfinite(loss):
        raise FloatingPointError(
            f"fn returned {loss} at the given parameters; a gradient can only be "
            "checked where the loss is finite."
        )
    if not np.isfinite(g).all():
        raise FloatingPointError(
            "The analytic gradient is not finite at "
            f"{_nonfinite_message(problem, g)}; fix the gradient (or the point) "
            "before comparing it with finite differences."
        )
    loss_dtype = engine.loss_dtype
    eval_dtype = _evaluation_dtype(problem, loss_dtype)
    leaf_tols = [
        tolerances_for(min(leaf.real_dtype, loss_dtype, key=_bits))
        for leaf in problem.leaves
    ]
    idx = np.arange(problem.size, dtype=np.int64)
    if eps is not None:
        _check_eps_representable(problem, engine.theta, idx, eps)

    first = _evidence(problem, engine, idx, eps, loss, loss_dtype, 1.0)
    nulls = np.concatenate(engine.nulls) if engine.nulls else np.zeros(0)
    spread = float(np.max(np.abs(nulls - loss))) if len(nulls) else 0.0
    allowed = max(nondet_tol, _REPEAT_ROUNDOFF * np.finfo(loss_dtype).eps * abs(loss))
    first = _with_spread(first, spread)

    status = np.full(problem.size, vd.AGREES, dtype=np.int8)
    numerical = first.central.copy()
    noise = first.sigma.copy()
    rtol = _per_coordinate(problem, [t.correct for t in leaf_tols])
    disagrees, kinky = vd.screen(first, g, rtol, _leaf_scale(problem, g))
    candidates = np.flatnonzero(disagrees | kinky)
    if len(candidates):
        second = _with_spread(
            _evidence(
                problem, engine, idx[candidates], eps, loss, loss_dtype, vd.REFINE
            ),
            spread,
        )
        s, n, z = vd.confirm(
            first.take(candidates), second, g[candidates], rtol[candidates]
        )
        # An agreeing coordinate looked at again only changes if it is a kink.
        recheck = kinky[candidates] & (s != vd.KINK)
        s[recheck] = vd.AGREES
        n[recheck] = first.central[candidates][recheck]
        z[recheck] = first.sigma[candidates][recheck]
        status[candidates], numerical[candidates], noise[candidates] = s, n, z

    notes = []
    nondeterministic = spread > allowed
    if nondeterministic:
        notes.append(
            f"fn is not deterministic: evaluations at the same point differ by "
            f"{spread:.3g} (loss {loss:.6g}). Make randomness explicit (pass "
            "key=... and use it for every random draw), or accept a known amount "
            "with nondet_tol."
        )
    return _assemble(
        problem,
        engine,
        g,
        numerical,
        noise,
        status,
        first,
        leaf_tols,
        loss,
        spread,
        notes,
        nondeterministic,
        eps,
        start,
        mode="full",
        eval_dtype=eval_dtype,
    )


def _per_coordinate(problem: Problem, values: list[float]) -> np.ndarray:
    """A per-leaf value spread over the leaf's coordinates."""
    sizes = [leaf.size for leaf in problem.leaves]
    return np.repeat(np.asarray(values, dtype=np.float64), sizes)


def _leaf_scale(problem: Problem, g: np.ndarray) -> np.ndarray:
    """The RMS of the analytic gradient in each coordinate's leaf."""
    rms = [
        float(np.sqrt(np.mean(np.square(g[leaf.offset : leaf.offset + leaf.size]))))
        if leaf.size
        else 0.0
        for leaf in problem.leaves
    ]
    return _per_coordinate(problem, rms)


def _bits(dtype: np.dtype) -> int:
    return np.finfo(dtype).bits


def _evaluation_dtype(problem: Problem, loss_dtype: np.dtype) -> np.dtype:
    """The dtype that bounds the check's precision: the narrower of the loss
    and the widest checked leaf."""
    widest = max((leaf.real_dtype for leaf in problem.leaves), key=_bits)
    return min(widest, np.dtype(loss_dtype), key=_bits)


def _check_eps_representable(problem, theta, idx, eps) -> None:
    plus, minus = _steps(problem, theta.astype(np.float64), idx, eps, np.float64)
    same = plus == minus
    if same.any():
        i = int(idx[np.flatnonzero(same)[0]])
        leaf, index, _ = problem.locate(i)
        raise ValueError(
            f"eps={eps!r} is below the resolution of {leaf.real_dtype} at "
            f"{leaf.path or '(root)'}{list(index)} (value {float(theta[i]):.6g}): "
            "θ+eps rounds back to θ. Use a larger eps, or eps=None."
        )


def _evidence(problem, engine, idx, eps, loss, loss_dtype, scale) -> vd.Evidence:
    theta = engine.theta.astype(np.float64)
    plus, minus = _steps(problem, theta, idx, eps, loss_dtype, scale)
    both = np.concatenate([idx, idx])
    values = engine.evaluate(both, np.concatenate([plus, minus]))
    n = len(idx)
    f_plus, f_minus = values[:n], values[n:]
    f_base = engine.base_values(idx)
    u = _unit_roundoff(loss_dtype)
    delta = u * np.maximum(np.abs(f_plus), np.abs(f_minus))
    return vd.Evidence(
        up=plus - theta[idx],
        down=theta[idx] - minus,
        f_plus=f_plus,
        f_minus=f_minus,
        f_base=f_base,
        delta_f=np.maximum(delta, u * abs(loss)),
    )


def _with_spread(ev: vd.Evidence, spread: float) -> vd.Evidence:
    return vd.Evidence(
        ev.up, ev.down, ev.f_plus, ev.f_minus, ev.f_base, ev.delta_f + spread
    )


def _assemble(
    problem: Problem,
    engine: Engine,
    g: np.ndarray,
    numerical: np.ndarray,
    noise: np.ndarray,
    status: np.ndarray,
    first: vd.Evidence,
    leaf_tols: list,
    loss: float,
    spread: float,
    notes: list[str],
    nondeterministic: bool,
    eps: float | None,
    start: float,
    mode: str,
    eval_dtype: np.dtype,
) -> GradCheckReport:
    leaves = []
    for leaf, tol in zip(problem.leaves, leaf_tols, strict=True):
        sl = slice(leaf.offset, leaf.offset + leaf.size)
        j = vd.judge_leaf(
            g[sl], numerical[sl], noise[sl], status[sl], tol, leaf.real_shape
        )
        leaves.append(
            LeafReport(
                path=leaf.path,
                shape=leaf.shape,
                dtype=str(leaf.given_dtype),
                size=leaf.size,
                checked=leaf.size,
                relative_error=j.relative_error,
                resolution=j.resolution,
                verdict=j.verdict,
                kinks=j.kinks,
                disagreeing=j.disagreeing,
                note=j.note,
            )
        )

    keep = (status != vd.KINK) & np.isfinite(numerical)
    overall = vd.relative_error(numerical[keep], g[keep])
    verdict = Verdict.worst([leaf.verdict for leaf in leaves])
    if nondeterministic and verdict.rank < Verdict.SUSPECT.rank:
        verdict = Verdict.SUSPECT

    steps = (first.up + first.down) / 2
    worst = _worst(problem, g, numerical, status, steps)
    kink_idx = np.flatnonzero(status == vd.KINK)[:_KINKS_LISTED]
    kinks = tuple(_coordinate(problem, int(i), g, numerical, steps) for i in kink_idx)
    unresolved = [leaf for leaf in leaves if leaf.verdict is Verdict.UNRESOLVED]
    if unresolved:
        notes.append(_unresolved_advice(unresolved, eval_dtype))

    narrowest = min((leaf.real_dtype for leaf in problem.leaves), key=_bits)
    base = relative_step(narrowest, engine.loss_dtype) if eps is None else float(eps)
    return GradCheckReport(
        verdict=verdict,
        passed=verdict.passed,
        relative_error=overall,
        leaves=tuple(leaves),
        worst=worst,
        kinks=kinks,
        unchecked=tuple((s.path, s.reason) for s in problem.skipped),
        eps=base,
        step_rule="relative" if eps is None else "absolute",
        dtype=str(eval_dtype),
        given_dtypes=tuple(str(leaf.given_dtype) for leaf in problem.leaves),
        mode=mode,
        evaluations=engine.evaluations,
        seconds=time.perf_counter() - start,
        compile_seconds=engine.compile_seconds,
        loss=loss,
        nondeterminism=spread,
        notes=tuple(notes),
        tolerances=tolerances_for(eval_dtype),
    )


def _coordinate(problem, i, g, numerical, steps) -> Coordinate:
    leaf, index, part = problem.locate(i)
    return Coordinate(
        path=leaf.path,
        index=index,
        analytic=float(g[i]),
        numerical=float(numerical[i]),
        part=part,
        step=float(steps[i]),
    )


def _worst(problem, g, numerical, status, steps) -> tuple[Coordinate, ...]:
    """Confirmed disagreements first, then the rest, largest error first."""
    candidates = np.flatnonzero(status != vd.KINK)
    error = np.abs(numerical[candidates] - g[candidates])
    error = np.where(np.isfinite(error), error, np.inf)
    confirmed = status[candidates] == vd.DISAGREES
    order = np.lexsort((-error, ~confirmed))[:_WORST]
    chosen = candidates[order]
    if not confirmed.any():
        chosen = chosen[error[order] > 0]
    return tuple(_coordinate(problem, int(i), g, numerical, steps) for i in chosen)


def _unresolved_advice(leaves: list[LeafReport], eval_dtype: np.dtype) -> str:
    names = ", ".join(leaf.path or "(root)" for leaf in leaves[:5])
    more = f" and {len(leaves) - 5} more" if len(leaves) > 5 else ""
    remedies = []
    if eval_dtype != np.float64:
        remedies.append("check in float64 (the default dtype)")
    remedies += [
        "use a larger eps if the loss is smooth on that scale",
        "check at parameters where this leaf's gradient is larger",
    ]
    return (
        f"{names}{more}: the gradient is too small relative to the loss for finite "
        "differences to resolve, so its correctness is unknown. Remedies: "
        + "; ".join(remedies)
        + "."
    )


def assert_grads(fn: Callable[..., Any], params: Any, *args: Any, **kwargs: Any):
    """Like ``check_grads``, but raises ``GradCheckError`` unless the check passes.

    Returns:
        The report, when the check passes.

    Raises:
        GradCheckError: an ``AssertionError`` whose message is the report and
            which carries it as ``.report``.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxcheck as jc
        >>> jc.assert_grads(lambda w: jnp.sum(jnp.sin(w)), jnp.arange(3.0)).verdict
        <Verdict.CORRECT: 'correct'>
    """
    report = check_grads(fn, params, *args, **kwargs)
    if not report.passed:
        raise GradCheckError(report)
    return report

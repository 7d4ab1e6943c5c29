"""``check_grads`` and ``assert_grads``: what is checked, how, and the report.

A check runs in passes, all of them compiled:

1. the loss and its analytic gradient at θ (``jax.value_and_grad``);
2. probes: centered differences along coordinates (``full`` and ``sample``
   modes) or random directions (``directional``), batched by the engine;
3. a second look at h/4 for the few probes that disagree, to tell a wrong
   gradient from noise, truncation and kinks;
4. in directional mode, bisection inside a leaf whose directions disagree,
   down to single coordinates.

By default everything runs in float64 inside a scoped ``jax.enable_x64``, so
the caller's configuration and arrays are left as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck import probes as pb
from jaxcheck import second_order as so
from jaxcheck import vector
from jaxcheck import verdict as vd
from jaxcheck.finite_diff import Engine, ForwardModeUnavailable
from jaxcheck.problem import Problem, build
from jaxcheck.report import (
    Coordinate,
    Direction,
    GradCheckError,
    GradCheckReport,
    LeafReport,
    Tolerances,
    Verdict,
    tolerances_for,
)

MODES = ("auto", "full", "sample", "directional")
_WORST = 10
_KINKS_LISTED = 100
_DIRECTIONS_LISTED = 20
# Repeated evaluations at θ may differ by a few rounding errors between
# differently compiled functions; this many units of roundoff are not
# reported as non-determinism.
_REPEAT_ROUNDOFF = 1e3
DEFAULT_MAX_EVALUATIONS = 200_000
DEFAULT_SAMPLES = 2048
DEFAULT_DIRECTIONS = 4
DEFAULT_TIME_BUDGET = 60.0


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


def _validate(
    mode, eps, nondet_tol, samples, directions, max_evaluations, time_budget
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; received {mode!r}.")
    if eps is not None:
        if not isinstance(eps, int | float | np.floating) or isinstance(eps, bool):
            raise TypeError(f"eps must be a positive float or None; received {eps!r}.")
        if not (np.isfinite(eps) and eps > 0):
            raise ValueError(
                f"eps must be a positive, finite step; received eps={eps!r}. Leave "
                "it as None to let jaxcheck choose a step for each coordinate."
            )
    if not nondet_tol >= 0:
        raise ValueError(f"nondet_tol must be >= 0; received {nondet_tol!r}.")
    for name, value in (
        ("samples", 1 if samples is None else samples),
        ("directions", directions),
        ("max_evaluations", max_evaluations),
    ):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer; received {value!r}.")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(
            f"time_budget must be a positive number of seconds or None; received "
            f"{time_budget!r}."
        )


def _precision_scope(measure: np.dtype | None):
    if measure is not None and measure == np.float64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def _bits(dtype: Any) -> int:
    return np.finfo(dtype).bits


def check_grads(
    fn: Callable[..., Any],
    params: Any,
    *args: Any,
    key: Any = None,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    mode: str = "auto",
    eps: float | None = None,
    dtype: Any = jnp.float64,
    nondet_tol: float = 0.0,
    samples: int | None = None,
    directions: int = DEFAULT_DIRECTIONS,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    time_budget: float | None = DEFAULT_TIME_BUDGET,
    localize: bool = True,
    seed: int = 0,
    modes: Sequence[str] = ("rev",),
    order: int = 1,
    outputs: str = "scalar",
    cotangents: int = 3,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool | None = None,
) -> GradCheckReport:
    """Checks the gradient of ``fn`` against centered finite differences.

    Coordinates (or directions) of the differentiated argument are moved by ±h
    and ``(J(θ + h·v) − J(θ − h·v)) / 2h`` is compared with the analytic
    derivative from ``jax.grad``. The perturbed evaluations are batched with
    ``jax.vmap`` and compiled with ``jax.jit``; probes that disagree are
    evaluated again at a smaller step, so that a wrong gradient is told apart
    from round-off, truncation and kinks.

    Args:
        fn: the loss, called as ``fn(params, *args)`` (or with ``key=key``); it
            returns a real scalar, or ``(scalar, aux)`` with ``has_aux``.
        params: any pytree, such as a dict of arrays, a Flax ``nnx.State`` or
            variable dict, or an Equinox module. Floating and complex leaves are
            checked; integer, boolean and PRNG-key leaves and non-array leaves
            (functions, strings, and Python floats inside an Equinox module)
            are left alone and listed in ``report.unchecked``.
        *args: further arguments of ``fn`` (inputs, labels), held fixed.
        key: a PRNG key passed to ``fn`` as ``key=key`` for the analytic
            gradient and for every perturbed evaluation alike, so stochastic
            models (dropout) are checked with one fixed draw.
        argnums: which positional argument of ``fn`` is checked (0 is
            ``params``), or a tuple of them.
        has_aux: ``fn`` returns ``(loss, aux)``.
        mode: "full" checks every coordinate (2 evaluations each); "sample"
            a stratified sample of ``samples`` coordinates over every leaf;
            "directional" ``directions`` random directions inside every leaf
            and one over the whole tree (2 evaluations each), narrowing a
            failing leaf down to coordinates by bisection; "auto" is "full" when
            its ``2n`` evaluations fit in ``max_evaluations``, and otherwise
            "directional" together with "sample".
        eps: the finite-difference step. None chooses
            ``hᵢ = ∛(machine eps) · max(|θᵢ|, 1)`` for each coordinate, which
            balances round-off against truncation error.
        dtype: the dtype the check is evaluated in. The default float64 upcasts
            the checked leaves and floating inputs inside a scoped
            ``jax.enable_x64``; "native" (or None) keeps each leaf's dtype and
            uses thresholds that fit it.
        nondet_tol: accepted difference between repeated evaluations of the
            loss at the same point (for a loss that is knowingly noisy).
        samples: coordinates to check in "sample" mode (and in "auto" when it
            does not check them all). None means 2048 in "sample" mode, and in
            "auto" as many (up to 2048) as fit in ``time_budget`` at the speed
            measured for the directions.
        directions: random directions per leaf in "directional" mode.
        max_evaluations: the budget of loss evaluations under which "auto"
            checks every coordinate.
        time_budget: seconds "auto" aims to spend in all when it cannot check
            every coordinate; None lets it sample ``samples`` (or 2048).
        localize: in directional mode, bisect failing leaves down to
            coordinates.
        seed: seeds the sampling of coordinates and directions, so a failure
            is reproducible.
        modes: which analytic derivatives to compare with finite differences:
            "rev" (``jax.grad``) and/or "fwd" (``jax.jvp`` along each
            coordinate or direction). Each gets its own part in the report,
            and they are compared with each other. A ``jax.custom_vjp``
            function has no forward rule: "fwd" is then skipped with a note.
        order: 2 also checks Hessian-vector products (``jax.jvp`` of
            ``jax.grad``) against centered differences of the gradient, along
            every coordinate for small problems (the whole Hessian) and random
            directions in every leaf otherwise.
        outputs: "scalar" requires ``fn`` to return a scalar. For a
            vector-valued ``fn``, "project" checks ``⟨w, fn⟩`` for
            ``cotangents`` fixed random ``w``, and "jacobian" checks every
            output entry (for small outputs); the report names the output
            entries that disagree.
        cotangents: how many random cotangents "project" uses.
        batch_size: perturbed evaluations per compiled call; None chooses it
            from the memory one evaluation needs.
        memory_budget: bytes one batch may use; None derives it from the device.
        progress: show a progress bar; None shows one on a terminal for checks
            expected to take more than a few seconds.

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
        >>> report.passed, report.verdict, report.mode
        (True, <Verdict.CORRECT: 'correct'>, 'full')
    """
    start = time.perf_counter()
    _validate(mode, eps, nondet_tol, samples, directions, max_evaluations, time_budget)
    derivatives = _validate_derivatives(modes, order, outputs, cotangents)
    if outputs != "scalar":
        return vector.check_outputs(
            check_grads,
            fn,
            params,
            args,
            outputs=outputs,
            cotangents=cotangents,
            seed=seed,
            key=key,
            argnums=argnums,
            has_aux=has_aux,
            options=dict(
                modes=modes,
                order=order,
                mode=mode,
                eps=eps,
                dtype=dtype,
                nondet_tol=nondet_tol,
                samples=samples,
                directions=directions,
                max_evaluations=max_evaluations,
                time_budget=time_budget,
                localize=localize,
                seed=seed,
                batch_size=batch_size,
                memory_budget=memory_budget,
                progress=progress,
            ),
        )
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
        loss, _, g = engine.value_and_grad()
        _require_finite(problem, loss, g)
        loss_dtype = engine.loss_dtype
        leaf_tols = [
            tolerances_for(min(leaf.real_dtype, loss_dtype, key=_bits))
            for leaf in problem.leaves
        ]
        rtol = np.repeat(
            [t.correct for t in leaf_tols], [leaf.size for leaf in problem.leaves]
        ).astype(np.float64)

        def context(derivative: str) -> pb.Context:
            return pb.Context(
                problem=problem,
                engine=engine,
                g=g,
                loss=loss,
                eps=eps,
                rtol=rtol,
                rng=np.random.default_rng(seed),
                derivative=derivative,
            )

        if eps is not None:
            _check_eps_representable(context("rev"))

        chosen, mode_notes = _choose_mode(mode, problem, max_evaluations)
        plan = _Plan(chosen, mode, samples, directions, localize, time_budget, start)
        parts, notes, probes = [], [], {}
        for derivative in derivatives:
            ctx = context(derivative)
            try:
                coords, dirs, found = _first_order(ctx, plan)
            except ForwardModeUnavailable as error:
                notes.append(_no_forward_mode(error))
                continue
            probes[derivative] = coords, dirs
            report = _assemble(
                ctx,
                coords,
                dirs,
                leaf_tols,
                mode_notes + found,
                nondet_tol,
                start,
                "+".join(chosen),
            )
            parts.append((_LABELS[derivative], report))
        if "rev" in probes and "fwd" in probes:
            notes.append(_compare_derivatives(probes["rev"], probes["fwd"]))
        if order == 2:
            ctx = context("rev")
            parts.append(
                ("second order", _second_order(ctx, mode, directions, leaf_tols, start))
            )
        return _combine(parts, notes, engine, start)


_LABELS = {"rev": "reverse mode (jax.grad)", "fwd": "forward mode (jax.jvp)"}


def _validate_derivatives(modes, order, outputs, cotangents) -> tuple[str, ...]:
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    if (
        not modes
        or any(m not in _LABELS for m in modes)
        or len(set(modes)) != len(modes)
    ):
        raise ValueError(
            f"modes must be a non-empty tuple of distinct entries from ('rev', "
            f"'fwd'); received {modes!r}."
        )
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2; received {order!r}.")
    if outputs not in vector.OUTPUTS:
        raise ValueError(
            f"outputs must be one of {vector.OUTPUTS}; received {outputs!r}."
        )
    if not isinstance(cotangents, int) or cotangents < 1:
        raise ValueError(
            f"cotangents must be a positive integer; received {cotangents!r}."
        )
    return modes


@dataclasses.dataclass(frozen=True)
class _Plan:
    chosen: list[str]
    mode: str
    samples: int | None
    directions: int
    localize: bool
    time_budget: float | None
    start: float


def _first_order(ctx: pb.Context, plan: _Plan):
    """Runs the probes of the chosen modes; returns them and their notes."""
    problem, engine = ctx.problem, ctx.engine
    notes: list[str] = []
    coordinates, dirs, spent = [], pb.Probes.concat([]), 0
    if "full" in plan.chosen:
        coordinates.append(pb.check_coordinates(ctx, np.arange(problem.size)))
    if "directional" in plan.chosen:
        whole = (
            len(problem.leaves) > 1
            and len({str(leaf.real_dtype) for leaf in problem.leaves}) == 1
        )
        dirs = pb.check_directions(
            ctx, *pb.random_directions(ctx, plan.directions, whole)
        )
    if "sample" in plan.chosen:
        n_samples = plan.samples or DEFAULT_SAMPLES
        if plan.mode == "auto" and plan.samples is None and plan.time_budget:
            n_samples = _fit_samples(
                engine, plan.time_budget, plan.start, len(problem.leaves)
            )
            notes.append(
                f"sampled about {n_samples:,} coordinates to fit time_budget="
                f"{plan.time_budget:g} s; pass samples=... for a fixed number."
            )
        coordinates.append(
            pb.check_coordinates(ctx, pb.stratified_sample(ctx, n_samples))
        )
    if "directional" in plan.chosen and plan.localize:
        located, spent = _localise(ctx, dirs, coordinates)
        if located is not None:
            coordinates.append(located)
    if spent:
        notes.append(
            f"bisection spent {spent} direction probes narrowing failing leaves "
            "down to the coordinates in report.worst."
        )
    return _unique(pb.Probes.concat(coordinates)), dirs, notes


def _no_forward_mode(error: Exception) -> str:
    return (
        "forward mode was not checked: fn cannot be differentiated with jax.jvp "
        "(it uses jax.custom_vjp, which defines only a reverse-mode rule); reverse "
        f"mode was checked. JAX said: {str(error).splitlines()[0]}"
    )


def _compare_derivatives(rev, fwd) -> str:
    """How closely jax.grad and jax.jvp agree on the same probes."""
    parts = []
    for a, b in zip(rev, fwd, strict=True):
        if len(a.analytic):
            parts.append((a.analytic, b.analytic))
    ra = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    fa = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    err = vd.relative_error(fa, ra)
    if err <= 1e-10:
        return (
            "forward and reverse mode agree with each other (relative error "
            f"{err:.1e})."
        )
    worst = int(np.argmax(np.abs(ra - fa))) if len(ra) else 0
    return (
        f"forward and reverse mode disagree with each other (relative error "
        f"{err:.1e}; largest difference {abs(ra[worst] - fa[worst]):.3g}); the part "
        "whose verdict is worse is the one with the wrong derivative."
    )


def _combine(parts, notes, engine, start) -> GradCheckReport:
    """One report from the parts: the worst verdict, the first part's detail."""
    primary = parts[0][1]
    if len(parts) == 1 and not notes:
        return dataclasses.replace(
            primary,
            seconds=time.perf_counter() - start,
            evaluations=engine.evaluations,
            compile_seconds=engine.compile_seconds,
        )
    verdict = Verdict.worst([part.verdict for _, part in parts])
    return dataclasses.replace(
        primary,
        verdict=verdict,
        passed=verdict.passed,
        notes=primary.notes + tuple(notes),
        parts=tuple(parts),
        seconds=time.perf_counter() - start,
        evaluations=engine.evaluations,
        compile_seconds=engine.compile_seconds,
    )


def _second_order(ctx, mode, directions, leaf_tols, start) -> GradCheckReport:
    n = ctx.problem.size
    if mode == "full" or (mode == "auto" and n <= so.FULL_HESSIAN_MAX):
        full = True
    else:
        full = False
    lo, hi, seeds = so.hessian_directions(ctx, directions, full)
    h = so.check_hessian(ctx, lo, hi, seeds)
    rows, columns = so.as_probes(ctx.problem, h)
    what = "every column" if full else f"{len(lo)} random directions"
    note = f"{so.describe_method(h.method)}, along {what}."
    report = _assemble(
        ctx,
        rows,
        pb.Probes.concat([]),
        leaf_tols,
        [note],
        float("inf"),
        start,
        "hessian",
    )
    worst = []
    for j in _order(rows)[:_WORST]:
        c = columns[j]
        coordinate = _coordinate(ctx.problem, rows, int(j))
        label = so.column_label(ctx.problem, int(h.lo[c]), int(h.hi[c]), int(h.seed[c]))
        worst.append(dataclasses.replace(coordinate, column=label))
    return dataclasses.replace(report, worst=tuple(worst), kinks=())


def _require_finite(problem: Problem, loss: float, g: np.ndarray) -> None:
    if not np.isfinite(loss):
        raise FloatingPointError(
            f"fn returned {loss} at the given parameters; a gradient can only be "
            "checked where the loss is finite."
        )
    if not np.isfinite(g).all():
        bad = np.flatnonzero(~np.isfinite(g))
        where = []
        for i in bad[:5]:
            leaf, index, part = problem.locate(int(i))
            suffix = f".{part}" if part else ""
            where.append(f"{leaf.path or '(root)'}{list(index)}{suffix}")
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise FloatingPointError(
            f"The analytic gradient is not finite at {', '.join(where)}{more}; fix "
            "the gradient (or the point) before comparing it with finite "
            "differences."
        )


def _check_eps_representable(ctx: pb.Context) -> None:
    idx = np.arange(ctx.problem.size)
    theta = ctx.theta
    plus, minus = pb.coordinate_steps(ctx.problem, theta, idx, ctx.eps, np.float64)
    same = plus == minus
    if same.any():
        i = int(idx[np.flatnonzero(same)[0]])
        leaf, index, _ = ctx.problem.locate(i)
        raise ValueError(
            f"eps={ctx.eps!r} is below the resolution of {leaf.real_dtype} at "
            f"{leaf.path or '(root)'}{list(index)} (value {float(theta[i]):.6g}): "
            "θ+eps rounds back to θ. Use a larger eps, or eps=None."
        )


def _choose_mode(
    mode: str, problem: Problem, max_evaluations: int
) -> tuple[list[str], list[str]]:
    if mode != "auto":
        return [mode], []
    needed = 2 * problem.size
    if needed <= max_evaluations:
        return ["full"], []
    return ["directional", "sample"], [
        f"mode auto: checking every coordinate needs {needed:,} evaluations, over "
        f"max_evaluations={max_evaluations:,}; checked random directions in every "
        "leaf and a stratified sample of coordinates instead."
    ]


def _fit_samples(engine: Engine, budget: float, start: float, n_leaves: int) -> int:
    """How many coordinates fit in what is left of ``budget`` seconds.

    Each costs two evaluations, at the speed measured so far (directions,
    which cost at least as much as coordinates); a quarter of what is left is
    kept for second looks and bisection. Every leaf gets a few whatever the
    budget.
    """
    per_eval = engine.seconds_per_evaluation() or 0.0
    left = 0.75 * (budget - (time.perf_counter() - start))
    fitted = int(left / (2 * per_eval)) if per_eval > 0 else DEFAULT_SAMPLES
    return int(np.clip(fitted, pb.MIN_SAMPLES_PER_LEAF * n_leaves, DEFAULT_SAMPLES))


def _localise(ctx, dirs: pb.Probes, coordinates: list[pb.Probes]):
    """Bisects every leaf with a confirmed disagreeing direction."""
    failing = sorted({int(k) for k in dirs.leaf[dirs.status == vd.DISAGREES] if k >= 0})
    found, spent = [], 0
    for k in failing:
        idx, n = pb.localise(ctx, k)
        spent += n
        if len(idx):
            found.append(idx)
    if not found:
        return None, spent
    return pb.check_coordinates(ctx, np.concatenate(found)), spent


def _unique(coords: pb.Probes) -> pb.Probes:
    """One probe per coordinate; a later (more targeted) probe wins."""
    if not len(coords.lo):
        return coords
    _, last = np.unique(coords.lo[::-1], return_index=True)
    keep = len(coords.lo) - 1 - last
    return coords.take(np.sort(keep))


def _judge_group(
    probes: pb.Probes, mask, tol: Tolerances, shape, directional=None
) -> vd.LeafJudgement:
    return vd.judge_leaf(
        probes.analytic[mask],
        probes.numerical[mask],
        probes.noise[mask],
        probes.status[mask],
        tol,
        shape,
        None if directional is None else directional[mask],
    )


def _assemble(
    ctx: pb.Context,
    coords: pb.Probes,
    dirs: pb.Probes,
    leaf_tols: list[Tolerances],
    notes: list[str],
    nondet_tol: float,
    start: float,
    mode: str,
) -> GradCheckReport:
    problem, engine = ctx.problem, ctx.engine
    both = pb.Probes.concat([coords, dirs])
    is_direction = np.arange(len(both.leaf)) >= len(coords.leaf)
    leaves, verdicts = [], []
    for k, (leaf, tol) in enumerate(zip(problem.leaves, leaf_tols, strict=True)):
        mask = both.leaf == k
        n_coords = int(np.sum(coords.leaf == k))
        full = n_coords == leaf.size and not np.any(dirs.leaf == k)
        j = _judge_group(
            both, mask, tol, leaf.real_shape if full else None, is_direction
        )
        verdicts.append(j.verdict)
        leaves.append(
            LeafReport(
                path=leaf.path,
                shape=leaf.shape,
                dtype=str(leaf.given_dtype),
                size=leaf.size,
                checked=n_coords,
                relative_error=j.relative_error,
                resolution=j.resolution,
                verdict=j.verdict,
                kinks=j.kinks,
                disagreeing=j.disagreeing,
                note=j.note,
                directions=int(np.sum(dirs.leaf == k)),
            )
        )
    whole = dirs.leaf == -1
    if whole.any():
        tol = max(leaf_tols, key=lambda t: t.correct)
        verdicts.append(_judge_group(dirs, whole, tol, None).verdict)

    keep = (both.status != vd.KINK) & np.isfinite(both.numerical)
    overall = vd.relative_error(both.numerical[keep], both.analytic[keep])
    verdict = Verdict.worst(verdicts)

    spread = ctx.spread
    loss = ctx.loss
    allowed = max(
        nondet_tol, _REPEAT_ROUNDOFF * pb.unit_roundoff(engine.loss_dtype) * abs(loss)
    )
    deterministic = spread <= allowed
    if not deterministic:
        notes.append(
            f"fn is not deterministic: evaluations at the same point differ by "
            f"{spread:.3g} (loss {loss:.6g}). Make randomness explicit (pass "
            "key=... and use it for every random draw), or accept a known amount "
            "with nondet_tol."
        )
        verdict = Verdict.worst([verdict, Verdict.SUSPECT])
    unresolved = [leaf for leaf in leaves if leaf.verdict is Verdict.UNRESOLVED]
    eval_dtype = _evaluation_dtype(problem, engine.loss_dtype)
    if unresolved:
        notes.append(_unresolved_advice(unresolved, eval_dtype))

    narrowest = min((leaf.real_dtype for leaf in problem.leaves), key=_bits)
    base = (
        pb.relative_step(narrowest, engine.loss_dtype) if ctx.eps is None else ctx.eps
    )
    return GradCheckReport(
        verdict=verdict,
        passed=verdict.passed,
        relative_error=overall,
        leaves=tuple(leaves),
        worst=_worst(problem, coords),
        kinks=tuple(
            _coordinate(problem, coords, int(i))
            for i in np.flatnonzero(coords.status == vd.KINK)[:_KINKS_LISTED]
        ),
        directions=_directions(problem, dirs),
        unchecked=tuple((s.path, s.reason) for s in problem.skipped),
        eps=float(base),
        step_rule="relative" if ctx.eps is None else "absolute",
        dtype=str(eval_dtype),
        given_dtypes=tuple(str(leaf.given_dtype) for leaf in problem.leaves),
        mode=mode,
        evaluations=engine.evaluations,
        seconds=time.perf_counter() - start,
        compile_seconds=engine.compile_seconds,
        loss=loss,
        nondeterminism=spread,
        deterministic=deterministic,
        notes=tuple(notes),
        tolerances=tolerances_for(eval_dtype),
    )


def _evaluation_dtype(problem: Problem, loss_dtype: np.dtype) -> np.dtype:
    """The dtype that bounds the check's precision: the narrower of the loss
    and the widest checked leaf."""
    widest = max((leaf.real_dtype for leaf in problem.leaves), key=_bits)
    return min(widest, np.dtype(loss_dtype), key=_bits)


def _coordinate(problem: Problem, coords: pb.Probes, j: int) -> Coordinate:
    leaf, index, part = problem.locate(int(coords.lo[j]))
    return Coordinate(
        path=leaf.path,
        index=index,
        analytic=float(coords.analytic[j]),
        numerical=float(coords.numerical[j]),
        part=part,
        step=float(coords.step[j]),
    )


def _order(probes: pb.Probes) -> np.ndarray:
    """Confirmed disagreements alone if there are any, else every probe by error.

    Kinks are left out; larger |analytic − numerical| comes first.
    """
    candidates = np.flatnonzero(probes.status != vd.KINK)
    error = np.abs(probes.numerical[candidates] - probes.analytic[candidates])
    error = np.where(np.isfinite(error), error, np.inf)
    confirmed = probes.status[candidates] == vd.DISAGREES
    order = candidates[np.lexsort((-error, ~confirmed))]
    return order[: int(confirmed.sum())] if confirmed.any() else order


def _worst(problem: Problem, coords: pb.Probes) -> tuple[Coordinate, ...]:
    chosen = [
        j
        for j in _order(coords)[:_WORST]
        if coords.numerical[j] != coords.analytic[j] or coords.status[j] == vd.DISAGREES
    ]
    return tuple(_coordinate(problem, coords, j) for j in chosen)


_STATUS = {
    vd.AGREES: "agrees",
    vd.DISAGREES: "disagrees",
    vd.KINK: "kink",
    vd.UNRESOLVED: "unresolved",
}


def _directions(problem: Problem, dirs: pb.Probes) -> tuple[Direction, ...]:
    out = []
    for j in _order(dirs)[:_DIRECTIONS_LISTED]:
        k = int(dirs.leaf[j])
        if k < 0:
            path, start = "(all leaves)", 0
        else:
            path, start = problem.leaves[k].path, problem.leaves[k].offset
        out.append(
            Direction(
                path=path,
                start=int(dirs.lo[j] - start),
                stop=int(dirs.hi[j] - start),
                seed=int(dirs.seed[j]),
                analytic=float(dirs.analytic[j]),
                numerical=float(dirs.numerical[j]),
                step=float(dirs.step[j]),
                status=_STATUS[int(dirs.status[j])],
            )
        )
    return tuple(out)


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
    # pytest shows a failure at the caller's line, without this frame's
    # arguments (the parameter arrays) in the traceback.
    __tracebackhide__ = True
    report = check_grads(fn, params, *args, **kwargs)
    if not report.passed:
        raise GradCheckError(report)
    return report

"""Second-order checks: Hessian-vector products against differences of gradients.

For a direction v, the Hessian-vector product ``H·v`` (``jax.jvp`` of
``jax.grad``, forward over reverse) is compared entry by entry with
``(∇J(θ + h·v) − ∇J(θ − h·v)) / 2h``. Directions are the coordinate vectors
``eᵢ`` (the whole Hessian, column by column) when the problem is small, and
random ±1/√m directions inside every leaf otherwise. The gradients at the
perturbed points and the products are computed for a chunk of directions at
once, under ``jax.vmap`` and ``jax.jit``, like the first-order probes; every
(direction, entry) pair then goes through the same screening, second look at
h/4, and per-leaf judgement, so a wrong second derivative is located to the
entry (its row) and the direction (its column).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcheck import probes as pb
from jaxcheck import verdict as vd
from jaxcheck.finite_diff import Engine, direction_vector
from jaxcheck.problem import Problem

# Up to this many coordinates, the whole Hessian is checked column by column.
FULL_HESSIAN_MAX = 512
_BATCH_BYTES = 32 << 20


@dataclasses.dataclass
class HessianProbes:
    """Entry-by-entry comparison of H·v with differences of the gradient."""

    analytic: np.ndarray  # (directions, n)
    numerical: np.ndarray
    noise: np.ndarray
    status: np.ndarray
    lo: np.ndarray  # (directions,) support of each direction
    hi: np.ndarray
    seed: np.ndarray
    step: np.ndarray
    method: str  # "forward over reverse" or "reverse over reverse"


def _flat_loss(problem: Problem, engine: Engine):
    _, unravel = ravel_pytree(engine.real)
    structure = problem.structure

    def loss(theta, fixed, key):
        return structure.loss_of_real(list(unravel(theta)), fixed, key)

    return loss


def _make(problem: Problem, engine: Engine, forward: bool):
    """Jitted ``(θ, lo, hi, seed, step, fixed, key) -> (g₊, g₋, H·v)``."""
    loss = _flat_loss(problem, engine)
    grad = jax.grad(loss)

    def hvp(theta, v, fixed, key):
        if forward:
            return jax.jvp(lambda t: grad(t, fixed, key), (theta,), (v,))[1]
        return jax.grad(lambda t: jnp.vdot(grad(t, fixed, key), v))(theta)

    def evaluate(theta, lo, hi, seed, step, fixed, key):
        where = jnp.arange(theta.size, dtype=lo.dtype)

        def one(lo, hi, seed, step):
            unit = (where == lo).astype(theta.dtype)
            v = jnp.where(
                hi - lo == 1, unit, direction_vector(where, lo, hi, seed, theta.dtype)
            )
            up = grad(theta + step * v, fixed, key)
            down = grad(theta - step * v, fixed, key)
            return up, down, hvp(theta, v, fixed, key)

        return jax.vmap(one)(lo, hi, seed, step)

    return jax.jit(evaluate)


class _Runner:
    def __init__(self, problem: Problem, engine: Engine):
        self.problem, self.engine = problem, engine
        self.theta = jnp.asarray(engine.theta)
        self.method = "forward over reverse"
        self._fn = _make(problem, engine, forward=True)
        n = problem.size
        self.batch = int(max(1, min(64, _BATCH_BYTES // max(24 * n, 1))))
        self.evaluations = 0

    def run(self, lo, hi, seeds, steps):
        outs = []
        n = len(lo)
        b = self.batch
        padded = -(-n // b) * b
        arrays = [
            np.resize(np.asarray(x, dtype), padded) if n else np.zeros(padded, dtype)
            for x, dtype in ((lo, np.int32), (hi, np.int32), (seeds, np.uint32))
        ]
        arrays.append(np.resize(np.asarray(steps, np.float64), padded))
        p = self.problem
        for start in range(0, padded, b):
            chunk = [a[start : start + b] for a in arrays]
            try:
                out = self._fn(self.theta, *chunk, list(p.fixed), p.key)
            except TypeError as error:
                if "jvp" not in str(error) or self.method != "forward over reverse":
                    raise
                # A custom_vjp has no forward rule: differentiate the gradient
                # in reverse mode instead.
                self.method = "reverse over reverse"
                self._fn = _make(p, self.engine, forward=False)
                out = self._fn(self.theta, *chunk, list(p.fixed), p.key)
            outs.append([np.asarray(o, dtype=np.float64) for o in out])
        self.evaluations += 2 * padded
        return [np.concatenate([o[i] for o in outs])[:n] for i in range(3)]


def _steps(ctx: pb.Context, lo, hi, scale: float) -> np.ndarray:
    theta = ctx.theta
    out = np.empty(len(lo))
    rel = pb.relative_step(np.float64, ctx.loss_dtype)
    for j, (a, b) in enumerate(zip(lo, hi, strict=True)):
        if ctx.eps is not None:
            out[j] = ctx.eps
        elif b - a == 1:
            out[j] = rel * max(abs(theta[a]), 1.0)
        else:
            out[j] = rel * max(float(np.sqrt(np.mean(np.square(theta[a:b])))), 1.0)
    return out * scale


def _evidence(ctx, runner, lo, hi, seeds, scale, g0) -> tuple[vd.Evidence, np.ndarray]:
    steps = _steps(ctx, lo, hi, scale)
    up, down, hv = runner.run(lo, hi, seeds, steps)
    u = pb.unit_roundoff(ctx.loss_dtype)
    # Rounding in a backward pass scales with the largest terms it sums.
    noise = u * (np.maximum(np.abs(up), np.abs(down)) + np.max(np.abs(g0)))
    h = np.broadcast_to(steps[:, None], up.shape)
    evidence = vd.Evidence(
        up=h.ravel(),
        down=h.ravel(),
        f_plus=up.ravel(),
        f_minus=down.ravel(),
        f_base=np.broadcast_to(g0, up.shape).ravel(),
        delta_f=noise.ravel() + ctx.spread,
    )
    return evidence, hv


def hessian_directions(ctx: pb.Context, per_leaf: int, full: bool):
    """Coordinate directions (every column) or random ones inside every leaf."""
    n = ctx.problem.size
    if full:
        lo = np.arange(n, dtype=np.int64)
        return lo, lo + 1, np.zeros(n, np.int64)
    lo, hi, seeds = pb.random_directions(
        ctx, per_leaf, whole=len(ctx.problem.leaves) > 1
    )
    return lo, hi, seeds


def check_hessian(ctx: pb.Context, lo, hi, seeds) -> HessianProbes:
    """Compares H·v with differences of gradients for every given direction."""
    runner = _Runner(ctx.problem, ctx.engine)
    g0 = ctx.g
    first, hv = _evidence(ctx, runner, lo, hi, seeds, 1.0, g0)
    n = ctx.problem.size
    analytic = hv.ravel()
    rtol = np.tile(ctx.rtol, len(lo))
    status = np.full(analytic.shape, vd.AGREES, dtype=np.int8)
    numerical = first.central.copy()
    noise = first.sigma.copy()
    disagrees, _ = vd.screen(first, analytic, rtol, np.zeros_like(analytic))
    again = np.flatnonzero(disagrees)
    if len(again):
        rows = np.unique(again // n)
        second, _ = _evidence(
            ctx, runner, lo[rows], hi[rows], seeds[rows], vd.REFINE, g0
        )
        # Entries of the re-evaluated directions, in the layout of ``again``.
        where = np.searchsorted(rows, again // n) * n + again % n
        s, v, z = vd.confirm(
            first.take(again), second.take(where), analytic[again], rtol[again]
        )
        status[again], numerical[again], noise[again] = s, v, z
    shape = (len(lo), n)
    ctx.engine.evaluations += runner.evaluations
    return HessianProbes(
        analytic=hv,
        numerical=numerical.reshape(shape),
        noise=noise.reshape(shape),
        status=status.reshape(shape),
        lo=np.asarray(lo),
        hi=np.asarray(hi),
        seed=np.asarray(seeds),
        step=_steps(ctx, lo, hi, 1.0),
        method=runner.method,
    )


def column_label(problem: Problem, lo: int, hi: int, seed: int) -> str:
    """Where a direction points: a coordinate, or a random direction in a leaf."""
    if hi - lo == 1:
        leaf, index, part = problem.locate(lo)
        suffix = f".{part}" if part else ""
        return f"{leaf.path or '(root)'}[{', '.join(map(str, index))}]{suffix}"
    if lo == 0 and hi == problem.size:
        return f"random direction over all leaves (seed {seed})"
    leaf, _, _ = problem.locate(lo)
    return f"random direction in {leaf.path or '(root)'} (seed {seed})"


def as_probes(problem: Problem, h: HessianProbes) -> tuple[pb.Probes, np.ndarray]:
    """The entries as first-order-style probes (rows), and each one's column."""
    d, n = h.analytic.shape
    rows = np.tile(np.arange(n, dtype=np.int64), d)
    columns = np.repeat(np.arange(d), n)
    leaves = np.searchsorted(problem.offsets, rows, side="right") - 1
    probes = pb.Probes(
        analytic=h.analytic.ravel(),
        numerical=h.numerical.ravel(),
        noise=h.noise.ravel(),
        status=h.status.ravel(),
        step=np.repeat(h.step, n),
        leaf=leaves,
        lo=rows,
        hi=rows + 1,
        seed=np.zeros(d * n, np.int64),
    )
    return probes, columns


def describe_method(method: str) -> str:
    return (
        "Hessian-vector products by " + method + " (jax.jvp of jax.grad)"
        if method.startswith("forward")
        else "Hessian-vector products by reverse over reverse (jax.grad of "
        "⟨jax.grad, v⟩): fn has no forward-mode rule"
    )

"""Finite-difference evidence along coordinates and random directions.

A *probe* compares one analytic quantity with its centered finite difference:
a partial derivative ``gᵢ`` for a coordinate probe, a directional derivative
``⟨g, v⟩`` for a direction probe. Every probe is screened at step h and, when
it disagrees, looked at again at h/4 (see ``verdict``). This module turns
probe requests into that evidence; it also draws samples and directions, and
narrows a disagreeing leaf down to single coordinates by bisection.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxcheck import verdict as vd
from jaxcheck.finite_diff import Engine
from jaxcheck.problem import Problem

# Bisection stops at blocks this small, and follows at most this many blocks.
LOCAL_BLOCK = 8
MAX_BLOCKS = 4
# Each leaf gets at least this many sampled coordinates (or all of them).
MIN_SAMPLES_PER_LEAF = 8


def relative_step(param_dtype: Any, loss_dtype: Any) -> float:
    """The default relative step for a coordinate of ``param_dtype``.

    A centered difference has truncation error ~h² and round-off error ~u/h,
    balanced at ``h ~ ∛u`` with u the precision of the *loss*. The step must
    also move the parameter by several of its own units in the last place, so
    that θ ± h is not rounded away when the parameter is narrower than the loss
    (bfloat16 weights feeding a float32 loss).
    """
    loss_eps = float(np.finfo(loss_dtype).eps)
    return max(float(np.cbrt(loss_eps)), 4 * float(np.finfo(param_dtype).eps))


def unit_roundoff(dtype: Any) -> float:
    return float(np.finfo(dtype).eps) / 2


@dataclasses.dataclass
class Context:
    """What every probe of one check shares."""

    problem: Problem
    engine: Engine
    g: np.ndarray  # flat analytic gradient, real layout
    loss: float
    eps: float | None
    rtol: np.ndarray  # per coordinate: the "correct" tolerance of its dtype
    rng: np.random.Generator
    derivative: str = "rev"  # where the analytic side comes from: "rev" or "fwd"

    @property
    def loss_dtype(self) -> np.dtype:
        return self.engine.loss_dtype

    @property
    def theta(self) -> np.ndarray:
        return self.engine.theta.astype(np.float64)

    @property
    def spread(self) -> float:
        """Largest difference between repeated evaluations at θ so far."""
        nulls = self.engine.nulls
        if not nulls:
            return 0.0
        return float(np.max(np.abs(np.concatenate(nulls) - self.loss)))

    def leaf_of(self, flat: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.problem.offsets, flat, side="right") - 1


@dataclasses.dataclass
class Probes:
    """The outcome of a set of probes, aligned arrays."""

    analytic: np.ndarray
    numerical: np.ndarray
    noise: np.ndarray
    status: np.ndarray
    step: np.ndarray
    leaf: np.ndarray  # the probe's leaf; -1 for a direction over every leaf
    lo: np.ndarray  # coordinate probes: the flat index; directions: range start
    hi: np.ndarray  # directions: range end (coordinates: lo + 1)
    seed: np.ndarray  # directions: the seed of v (coordinates: 0)

    @staticmethod
    def concat(parts: list[Probes]) -> Probes:
        fields = [f.name for f in dataclasses.fields(Probes)]
        if not parts:
            empty = {f: np.zeros(0) for f in fields}
            empty.update(status=np.zeros(0, np.int8), leaf=np.zeros(0, np.int64))
            empty.update(lo=np.zeros(0, np.int64), hi=np.zeros(0, np.int64))
            return Probes(**empty)
        return Probes(
            **{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
        )

    def take(self, mask: np.ndarray) -> Probes:
        return Probes(
            **{f.name: getattr(self, f.name)[mask] for f in dataclasses.fields(self)}
        )


def coordinate_steps(
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
    for k in np.unique(leaf_of):
        mine = leaf_of == k
        dt = problem.leaves[k].real_dtype
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


def _noise(ctx: Context, f_plus: np.ndarray, f_minus: np.ndarray) -> np.ndarray:
    u = unit_roundoff(ctx.loss_dtype)
    magnitude = np.maximum(np.maximum(np.abs(f_plus), np.abs(f_minus)), abs(ctx.loss))
    return u * magnitude


def _coordinate_evidence(ctx: Context, idx: np.ndarray, scale: float) -> vd.Evidence:
    theta = ctx.theta
    plus, minus = coordinate_steps(
        ctx.problem, theta, idx, ctx.eps, ctx.loss_dtype, scale
    )
    values = ctx.engine.evaluate(
        np.concatenate([idx, idx]), np.concatenate([plus, minus])
    )
    n = len(idx)
    f_plus, f_minus = values[:n], values[n:]
    return vd.Evidence(
        up=plus - theta[idx],
        down=theta[idx] - minus,
        f_plus=f_plus,
        f_minus=f_minus,
        f_base=ctx.engine.base_values(idx),
        delta_f=_noise(ctx, f_plus, f_minus) + ctx.spread,
    )


def _leaf_scale(ctx: Context, leaves: np.ndarray) -> np.ndarray:
    rms = np.zeros(len(ctx.problem.leaves) + 1)
    for k, leaf in enumerate(ctx.problem.leaves):
        part = ctx.g[leaf.offset : leaf.offset + leaf.size]
        rms[k] = float(np.sqrt(np.mean(np.square(part)))) if leaf.size else 0.0
    rms[-1] = float(np.sqrt(np.mean(np.square(ctx.g)))) if len(ctx.g) else 0.0
    return rms[leaves]


def _judge(first, second_fn, analytic, rtol, leaves, ctx) -> tuple[Any, ...]:
    """Screens probes at h, looks again at h/4, and returns their status."""
    status = np.full(len(analytic), vd.AGREES, dtype=np.int8)
    numerical = first.central.copy()
    noise = first.sigma.copy()
    disagrees, kinky = vd.screen(first, analytic, rtol, _leaf_scale(ctx, leaves))
    again = np.flatnonzero(disagrees | kinky)
    if len(again):
        second = second_fn(again)
        s, n, z = vd.confirm(first.take(again), second, analytic[again], rtol[again])
        # An agreeing probe looked at again only changes if it is a kink.
        recheck = kinky[again] & (s != vd.KINK)
        s[recheck] = vd.AGREES
        n[recheck] = first.central[again][recheck]
        z[recheck] = first.sigma[again][recheck]
        status[again], numerical[again], noise[again] = s, n, z
    return status, numerical, noise


COORDINATE_BLOCK = 1 << 18
"""Coordinates probed per pass: bounds the host memory of a full check.

Each pass holds a few arrays over its ±h points; what is kept between passes
is one probe record per coordinate. The compiled functions and their batch
sizes do not depend on the block, so blocks cost no compilation.
"""


def check_coordinates(ctx: Context, idx: np.ndarray) -> Probes:
    """Coordinate probes: ``gᵢ`` against centered differences, for ``idx``."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) <= COORDINATE_BLOCK:
        return _check_block(ctx, idx)
    blocks = range(0, len(idx), COORDINATE_BLOCK)
    with ctx.engine.progress_over(2 * len(idx)):
        return Probes.concat(
            [_check_block(ctx, idx[i : i + COORDINATE_BLOCK]) for i in blocks]
        )


def _check_block(ctx: Context, idx: np.ndarray) -> Probes:
    first = _coordinate_evidence(ctx, idx, 1.0)

    def second(again):
        return _coordinate_evidence(ctx, idx[again], vd.REFINE)

    if ctx.derivative == "fwd":
        analytic = ctx.engine.jvp_coordinates(idx)
    else:
        analytic = ctx.g[idx]
    leaves = ctx.leaf_of(idx)
    status, numerical, noise = _judge(
        first, second, analytic, ctx.rtol[idx], leaves, ctx
    )
    return Probes(
        analytic=analytic,
        numerical=numerical,
        noise=noise,
        status=status,
        step=(first.up + first.down) / 2,
        leaf=leaves,
        lo=idx,
        hi=idx + 1,
        seed=np.zeros(len(idx), dtype=np.int64),
    )


def _direction_steps(ctx: Context, lo, hi, scale: float) -> np.ndarray:
    theta = ctx.theta
    steps = np.empty(len(lo))
    for j, (a, b) in enumerate(zip(lo, hi, strict=True)):
        leaf = ctx.problem.leaves[ctx.leaf_of(np.array([a]))[0]]
        if ctx.eps is not None:
            steps[j] = ctx.eps
        else:
            rms = float(np.sqrt(np.mean(np.square(theta[a:b])))) if b > a else 0.0
            rel = relative_step(leaf.real_dtype, ctx.loss_dtype)
            steps[j] = rel * max(rms, 1.0)
    return steps * scale


def _direction_evidence(ctx: Context, lo, hi, seeds, scale: float):
    steps = _direction_steps(ctx, lo, hi, scale)
    both = [np.concatenate([x, x]) for x in (lo, hi, seeds)]
    f, proj, norm, base = ctx.engine.evaluate_directions(
        *both, np.concatenate([steps, -steps])
    )
    n = len(lo)
    up, down = norm[:n], norm[n:]
    f_plus, f_minus = f[:n], f[n:]
    analytic = (proj[:n] - proj[n:]) / (up + down)
    evidence = vd.Evidence(
        up=up,
        down=down,
        f_plus=f_plus,
        f_minus=f_minus,
        f_base=base[:n],
        delta_f=_noise(ctx, f_plus, f_minus) + ctx.spread,
    )
    return evidence, analytic


def check_directions(
    ctx: Context, lo: np.ndarray, hi: np.ndarray, seeds: np.ndarray
) -> Probes:
    """Direction probes: ``⟨g, v⟩`` against centered differences along ``v``."""
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    seeds = np.asarray(seeds, np.int64)
    first, analytic = _direction_evidence(ctx, lo, hi, seeds, 1.0)
    if ctx.derivative == "fwd":
        analytic = ctx.engine.jvp_directions(lo, hi, seeds)

    def second(again):
        return _direction_evidence(ctx, lo[again], hi[again], seeds[again], vd.REFINE)[
            0
        ]

    whole = (lo == 0) & (hi == ctx.problem.size)
    leaves = np.where(whole, -1, ctx.leaf_of(lo))
    rtol = np.where(whole, np.max(ctx.rtol), ctx.rtol[lo])
    status, numerical, noise = _judge(first, second, analytic, rtol, leaves, ctx)
    return Probes(
        analytic=analytic,
        numerical=numerical,
        noise=noise,
        status=status,
        step=(first.up + first.down) / 2,
        leaf=leaves,
        lo=lo,
        hi=hi,
        seed=seeds,
    )


def _seeds(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**31 - 1, size=n, dtype=np.int64)


def random_directions(
    ctx: Context, per_leaf: int, whole: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``per_leaf`` directions inside every leaf, plus one over every leaf."""
    lo, hi = [], []
    for leaf in ctx.problem.leaves:
        if leaf.size:
            lo += [leaf.offset] * per_leaf
            hi += [leaf.offset + leaf.size] * per_leaf
    if whole:
        lo.append(0)
        hi.append(ctx.problem.size)
    lo_a, hi_a = np.array(lo, np.int64), np.array(hi, np.int64)
    return lo_a, hi_a, _seeds(ctx.rng, len(lo_a))


def stratified_sample(ctx: Context, samples: int) -> np.ndarray:
    """About ``samples`` coordinates, spread over every leaf by its size.

    Each leaf gets a share proportional to its size, at least
    ``MIN_SAMPLES_PER_LEAF`` (or the whole leaf when smaller), and its share
    is drawn one coordinate per stratum of equal width.
    """
    p = ctx.problem
    chosen = []
    for leaf in p.leaves:
        if not leaf.size:
            continue
        share = round(samples * leaf.size / max(p.size, 1))
        m = min(leaf.size, max(MIN_SAMPLES_PER_LEAF, share))
        edges = np.linspace(0, leaf.size, m + 1).astype(np.int64)
        picks = ctx.rng.integers(edges[:-1], np.maximum(edges[1:], edges[:-1] + 1))
        chosen.append(leaf.offset + np.unique(picks))
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def localise(ctx: Context, k: int) -> tuple[np.ndarray, int]:
    """Narrows leaf ``k`` down to the coordinates where it disagrees.

    Directions supported on halves of the leaf, then on halves of the halves
    that still disagree, and so on, until blocks of ``LOCAL_BLOCK``
    coordinates remain; at most ``MAX_BLOCKS`` blocks are followed. Returns
    the flat indices of the coordinates in the final blocks, to be checked one
    by one, and the number of direction probes spent.
    """
    leaf = ctx.problem.leaves[k]
    active = [(leaf.offset, leaf.offset + leaf.size)]
    final: list[tuple[int, int]] = []
    spent = 0
    while active:
        children = []
        for lo, hi in active:
            mid = (lo + hi) // 2
            children += [(lo, mid), (mid, hi)]
        lo = np.array([c[0] for c in children], np.int64)
        hi = np.array([c[1] for c in children], np.int64)
        probes = check_directions(ctx, lo, hi, _seeds(ctx.rng, len(children)))
        spent += len(children)
        bad = np.flatnonzero(probes.status == vd.DISAGREES)
        if not len(bad):
            break
        significance = np.abs(probes.numerical - probes.analytic) / np.maximum(
            probes.noise, 1e-300
        )
        bad = bad[np.argsort(-significance[bad])][: MAX_BLOCKS - len(final)]
        active = []
        for j in bad:
            block = (int(lo[j]), int(hi[j]))
            (final if block[1] - block[0] <= LOCAL_BLOCK else active).append(block)
    if not final:
        final = active
    idx = [
        np.arange(a, b, dtype=np.int64) for a, b in final if b - a <= 4 * LOCAL_BLOCK
    ]
    return (np.concatenate(idx) if idx else np.zeros(0, np.int64)), spent

"""Vector-valued functions, checked through fixed cotangents.

A function ``f(θ) ∈ Rᵐ`` has a Jacobian, not a gradient. It is checked through
scalar projections ``⟨w, f(θ)⟩``: with ``outputs="project"``, a few random
Gaussian ``w`` (each row of the Jacobian contributes to every projection, so a
wrong row cannot hide); with ``outputs="jacobian"``, every unit vector ``eⱼ``
(the whole Jacobian, row by row, for small outputs). The cotangent is passed to
the projected loss as an argument, so one compilation serves all of them.

When a projection disagrees at a parameter entry, the Jacobian's column at
that entry (``jax.jvp``) is compared with a centered difference of ``f``
itself, to name the output entries that are wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util as jtu

from jaxcheck.report import GradCheckReport, Verdict

OUTPUTS = ("scalar", "project", "jacobian")
# "jacobian" checks one projection per output entry; beyond this many it
# would be slower than useful.
JACOBIAN_MAX = 64
_LOCATED = 3
# Output entries are named when there are at most this many (one reverse
# pass each).
_ROWS_MAX = 4096


def _call(fn, has_aux, key):
    def call(*all_args):
        out = fn(*all_args) if key is None else fn(*all_args, key=key)
        return out[0] if has_aux else out

    return call


def _projected(fn: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
    """``(params, *args, w) -> ⟨w, fn(params, *args)⟩``."""

    def projected(*all_args, **kwargs):
        *rest, w = all_args
        out = fn(*rest, **kwargs)
        if has_aux:
            out = out[0]
        return jnp.sum(w * out)

    return projected


def _output(fn, params, args, key, has_aux) -> jax.ShapeDtypeStruct:
    out = jax.eval_shape(_call(fn, has_aux, key), params, *args)
    if not hasattr(out, "shape"):
        raise TypeError(
            "outputs='project' or 'jacobian' needs fn to return one array; it "
            f"returned {type(out).__name__}. Return a single array (concatenate "
            "several with jnp.concatenate after raveling them)."
        )
    if jnp.issubdtype(out.dtype, jnp.complexfloating):
        raise ValueError(
            f"fn returns a complex array ({out.dtype}); check its real and "
            "imaginary parts as two real outputs, e.g. jnp.stack([z.real, z.imag])."
        )
    return out


def _cotangents(out, outputs: str, count: int, seed: int):
    shape = tuple(out.shape)
    m = int(np.prod(shape, dtype=np.int64))
    if outputs == "jacobian":
        if m > JACOBIAN_MAX:
            raise ValueError(
                f"fn returns {m} entries; outputs='jacobian' checks each one and "
                f"allows at most {JACOBIAN_MAX}. Use outputs='project', which checks "
                "random projections of all of them at once."
            )
        eye = np.eye(m).reshape((m, *shape))
        labels = [f"output {_index(shape, j)}" for j in range(m)]
        return list(eye), labels
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal(shape) for _ in range(count)]
    return ws, [f"cotangent {k}" for k in range(count)]


def _index(shape: tuple[int, ...], j: int) -> str:
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(j, shape)) + "]"


def _locate_outputs(fn, params, args, key, has_aux, coordinate, shape):
    """Output entries whose derivative along one parameter entry disagrees.

    The Jacobian's column at the entry is built from reverse-mode rows (one
    ``jax.vjp`` per output entry, vmapped), since reverse mode is what failed,
    and compared with a centered difference of ``fn`` along the entry.
    """
    flat, treedef = jtu.tree_flatten_with_path(params)
    paths = [jtu.keystr(p) for p, _ in flat]
    m = int(np.prod(shape, dtype=np.int64))
    if coordinate.path not in paths or coordinate.part is not None or m > _ROWS_MAX:
        return []
    k = paths.index(coordinate.path)
    call = _call(fn, has_aux, key)

    with jax.enable_x64(True):
        leaves = [
            jnp.asarray(x, jnp.float64) if _is_floating(x) else x for _, x in flat
        ]

        def along(leaf):
            moved = list(leaves)
            moved[k] = leaf
            return call(jtu.tree_unflatten(treedef, moved), *args).reshape(-1)

        out, vjp = jax.vjp(along, leaves[k])
        rows = jax.vmap(lambda ct: vjp(ct)[0])(jnp.eye(m, dtype=out.dtype))
        analytic = np.asarray(rows[(slice(None), *coordinate.index)], np.float64)
        theta = float(leaves[k][coordinate.index])
        h = float(np.cbrt(np.finfo(np.float64).eps)) * max(abs(theta), 1.0)
        up = along(leaves[k].at[coordinate.index].add(h))
        down = along(leaves[k].at[coordinate.index].add(-h))
        numerical = np.asarray(up - down, np.float64) / (2 * h)
    error = np.abs(analytic - numerical)
    scale = np.abs(analytic) + np.abs(numerical)
    bad = np.flatnonzero(error > 1e-6 * (scale + np.max(scale, initial=0.0)))
    bad = bad[np.argsort(-error[bad])][:_LOCATED]
    return [
        (f"output {_index(shape, int(j))}", float(analytic[j]), float(numerical[j]))
        for j in bad
    ]


def _is_floating(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return isinstance(x, float)
    return jnp.issubdtype(dtype, jnp.floating)


def check_outputs(
    check: Callable[..., GradCheckReport],
    fn: Callable[..., Any],
    params: Any,
    args: tuple[Any, ...],
    *,
    outputs: str,
    cotangents: int,
    seed: int,
    key: Any,
    argnums: Any,
    has_aux: bool,
    options: dict[str, Any],
) -> GradCheckReport:
    """Checks a vector-valued ``fn`` through projections; one report for all."""
    out = _output(fn, params, args, key, has_aux)
    ws, labels = _cotangents(out, outputs, cotangents, seed)
    projected = _projected(fn, has_aux)
    parts = []
    for w, label in zip(ws, labels, strict=True):
        report = check(
            projected,
            params,
            *args,
            w,
            key=key,
            argnums=argnums,
            has_aux=False,
            outputs="scalar",
            **options,
        )
        parts.append((label, report))

    worst_rank = max(part.verdict.rank for _, part in parts)
    label, primary = next(p for p in parts if p[1].verdict.rank == worst_rank)
    notes = [
        f"fn returns an array of shape {tuple(out.shape)}; checked "
        + (
            f"⟨w, fn⟩ for {len(ws)} random Gaussian cotangents w"
            if outputs == "project"
            else "each output entry"
        )
        + f"; the detail below is for {label}."
    ]
    worst = primary.worst
    if outputs == "jacobian":
        worst = tuple(dataclasses.replace(c, output=label) for c in worst)
    if not primary.passed and outputs == "project" and argnums == 0:
        located = []
        for c in primary.worst[:_LOCATED]:
            found = _locate_outputs(fn, params, args, key, has_aux, c, tuple(out.shape))
            if found:
                name, a, n = found[0]
                located.append(
                    dataclasses.replace(c, analytic=a, numerical=n, output=name)
                )
                entries = ", ".join(
                    f"{o} (analytic {a:+.4g}, numerical {v:+.4g})" for o, a, v in found
                )
                notes.append(f"along {c.location} the Jacobian disagrees in {entries}.")
        if located:
            worst = tuple(located)
    verdict = Verdict.worst([part.verdict for _, part in parts])
    total = sum(part.evaluations for _, part in parts)
    return dataclasses.replace(
        primary,
        verdict=verdict,
        passed=verdict.passed,
        worst=worst,
        notes=primary.notes + tuple(notes),
        parts=tuple(parts),
        evaluations=total,
        seconds=sum(part.seconds for _, part in parts),
        compile_seconds=sum(part.compile_seconds for _, part in parts),
    )

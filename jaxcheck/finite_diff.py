"""The engine: the loss at many perturbations of θ, batched and compiled.

A check needs ``J(θ')`` at many points ``θ'`` near θ. The checked leaves (in
real layout, see ``problem``) are raveled with ``jax.flatten_util.ravel_pytree``
into one flat vector, and a point is either

* a **coordinate probe**: one flat index set to a new value, or
* a **direction probe**: θ moved by ``step · v``, with ``v`` a random ±1/√m
  direction supported on a range ``[lo, hi)`` of the flat vector, derived
  inside the compiled function from a seed (so no direction is ever stored).

Leaves are grouped, and each group gets one compiled function per probe kind
that takes a chunk of ``B`` probes inside the group, builds the perturbed
leaves under ``jax.vmap`` and evaluates the loss. Leaves outside the group are
passed unbatched, so XLA computes what does not depend on the group once per
chunk rather than once per probe. Small leaves of one shape and dtype share a
group (a 150-layer network compiles a handful of functions, not 300); a large
leaf has a group of its own, so that a probe copies only that leaf and the
layers before it are not recomputed; a small problem is one group.

The chunk size is fixed per group, the last chunk is padded with unperturbed
probes, and so one compilation serves every chunk, in this check and in later
checks of the same function (executables are cached by problem structure and
input signature). Every unperturbed evaluation is kept: it measures whether
``fn`` returns the same value twice at the same point.

With several devices, the probe axis of every chunk is split across them with
``jax.sharding``; each device evaluates its share of the probes with the same
program, so the results are those of a single device.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcheck.problem import Problem, Structure

# Working-set target for one chunk on a CPU: small chunks stay in cache, which
# measured faster than large ones on every model in the benchmarks.
_CPU_CHUNK_BYTES = 4 << 20
_ACCELERATOR_CHUNK_BYTES = 256 << 20
_MAX_BATCH = 1024
# Problems up to this many coordinates are evaluated as a single group.
_MERGE_BELOW = 4096
# A group holds at most this fraction of the memory budget, so that a chunk
# of several probes fits in the budget.
_GROUP_SHARE = 8
# Leaves larger than this (in entries) are not grouped with others.
_GROUP_LEAF_MAX = 1 << 16
NULLS_PER_GROUP = 2
COORDINATE, DIRECTION = "coordinate", "direction"
JVP_COORDINATE, JVP_DIRECTION = "jvp_coordinate", "jvp_direction"


class ForwardModeUnavailable(Exception):
    """``fn`` cannot be differentiated in forward mode (a ``jax.custom_vjp``)."""


@dataclasses.dataclass(frozen=True)
class _Member:
    leaf: int  # index of the checked leaf
    start: int  # offset inside the group's flat vector
    shape: tuple[int, ...]  # real-layout shape

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _assemble(
    structure: Structure, members: tuple[_Member, ...], vector, others, fixed, key
):
    real = list(others)
    for m in members:
        real[m.leaf] = vector[m.start : m.start + m.size].reshape(m.shape)
    return structure.loss_of_real(real, fixed, key)


def _make_coordinate(structure: Structure, members: tuple[_Member, ...]):
    """``(vector, pos, val, others, fixed, key) -> losses`` for one group.

    ``vector`` holds the group's leaves in real layout, raveled and
    concatenated; ``pos`` and ``val`` are positions inside it and their new
    values. ``others`` is the list of all checked leaves, None at the members.
    """

    def evaluate(vector, pos, val, others, fixed, key):
        # A select over the vector fuses into the consumers of the perturbed
        # leaves; a batched dynamic_update_slice or scatter measured slower.
        where = jnp.arange(vector.size, dtype=pos.dtype)

        def one(p, v):
            moved = jnp.where(where == p, v, vector)
            return _assemble(structure, members, moved, others, fixed, key)

        return jax.vmap(one)(pos, val)

    return evaluate


def signs(seed: jax.Array, n: int, dtype: Any) -> jax.Array:
    """±1 for each of ``n`` entries, from an integer hash of (index, seed).

    A few integer operations per entry (a multiply–xorshift finaliser), so a
    direction over millions of parameters costs about as much as reading them;
    the signs are balanced and independent enough for random directions.
    """
    h = jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B1)
    h = h + seed.astype(jnp.uint32) * jnp.uint32(0x85EBCA77)
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        h = (h ^ (h >> shift)) * jnp.uint32(factor)
    h = h ^ (h >> 16)
    return 1 - 2 * (h >> 31).astype(dtype)


def direction_vector(where, lo, hi, seed, dtype):
    """The ±1/√m direction on ``[lo, hi)`` drawn from ``seed``, zero elsewhere."""
    inside = (where >= lo) & (where < hi)
    count = jnp.maximum(hi - lo, 1).astype(dtype)
    return jnp.where(inside, signs(seed, where.size, dtype), 0) / jnp.sqrt(count)


def _make_direction(structure: Structure, members: tuple[_Member, ...]):
    """``(vector, grad, lo, hi, seed, step, ...) -> (losses, ⟨g, Δ⟩, ‖Δ‖)``.

    Each probe moves ``vector`` by ``step · v`` with ``v`` a ±1/√m direction on
    ``[lo, hi)`` drawn from ``seed``, and also returns the projection of the
    gradient on the displacement actually made (after rounding to the dtype)
    and its norm, so the comparison is exact whatever the dtype.
    """

    def evaluate(vector, grad, lo, hi, seed, step, others, fixed, key):
        where = jnp.arange(vector.size, dtype=lo.dtype)
        wide = jnp.promote_types(vector.dtype, jnp.float32)

        def one(lo, hi, seed, step):
            v = direction_vector(where, lo, hi, seed, wide)
            moved = (vector.astype(wide) + step.astype(wide) * v).astype(vector.dtype)
            shift = moved.astype(wide) - vector.astype(wide)
            loss = _assemble(structure, members, moved, others, fixed, key)
            return loss, jnp.dot(grad.astype(wide), shift), jnp.linalg.norm(shift)

        return jax.vmap(one)(lo, hi, seed, step)

    return evaluate


def _make_jvp_coordinate(structure: Structure, members: tuple[_Member, ...]):
    """``(vector, pos, others, fixed, key) -> ∂J/∂θ_pos`` by forward mode."""

    def evaluate(vector, pos, others, fixed, key):
        where = jnp.arange(vector.size, dtype=pos.dtype)

        def loss(v):
            return _assemble(structure, members, v, others, fixed, key)

        def one(p):
            tangent = (where == p).astype(vector.dtype)
            return jax.jvp(loss, (vector,), (tangent,))[1]

        return jax.vmap(one)(pos)

    return evaluate


def _make_jvp_direction(structure: Structure, members: tuple[_Member, ...]):
    """``(vector, lo, hi, seed, ...) -> ⟨∇J, v⟩`` by forward mode."""

    def evaluate(vector, lo, hi, seed, others, fixed, key):
        where = jnp.arange(vector.size, dtype=lo.dtype)
        wide = jnp.promote_types(vector.dtype, jnp.float32)

        def loss(v):
            return _assemble(structure, members, v, others, fixed, key)

        def one(lo, hi, seed):
            v = direction_vector(where, lo, hi, seed, wide).astype(vector.dtype)
            return jax.jvp(loss, (vector,), (v,))[1]

        return jax.vmap(one)(lo, hi, seed)

    return evaluate


@dataclasses.dataclass(frozen=True)
class _Kind:
    """How one kind of probe is compiled and fed."""

    make: Callable[..., Any]
    points: tuple[int, ...]  # positions of the per-probe arguments
    outputs: int  # arrays returned per probe
    with_grad: bool  # whether the gradient follows the vector in the inputs
    loss: bool  # whether the first output is the loss (padding measures J(θ))


_KINDS = {
    COORDINATE: _Kind(_make_coordinate, (1, 2), 1, False, True),
    DIRECTION: _Kind(_make_direction, (2, 3, 4, 5), 3, True, True),
    JVP_COORDINATE: _Kind(_make_jvp_coordinate, (1,), 1, False, False),
    JVP_DIRECTION: _Kind(_make_jvp_direction, (1, 2, 3), 1, False, False),
}


@dataclasses.dataclass
class _Bundle:
    """Jitted functions of one problem structure, and their executables."""

    value_and_grad: Callable[..., Any]
    jitted: dict[Any, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    executables: dict[Any, Any] = dataclasses.field(default_factory=dict)


class _Cache:
    """A small LRU of jitted functions, keyed by problem structure."""

    def __init__(self, size: int = 32):
        self.size = size
        self._items: collections.OrderedDict[Structure, _Bundle] = (
            collections.OrderedDict()
        )

    def get(self, structure: Structure) -> _Bundle:
        if not structure.hashable:
            return _Bundle(_make_value_and_grad(structure))
        if structure in self._items:
            self._items.move_to_end(structure)
            return self._items[structure]
        bundle = _Bundle(_make_value_and_grad(structure))
        self._items[structure] = bundle
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return bundle

    def clear(self) -> None:
        self._items.clear()


CACHE = _Cache()


def _make_value_and_grad(structure: Structure) -> Callable[..., Any]:
    def value_and_grad(checked, fixed, key):
        (loss, aux), grads = jax.value_and_grad(structure.call, has_aux=True)(
            list(checked), fixed, key
        )
        return loss, aux, grads

    return jax.jit(value_and_grad)


def _signature(tree: Any) -> tuple[Any, ...]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return (
        treedef,
        tuple(
            (
                np.shape(x),
                str(x.dtype),
                bool(getattr(x, "weak_type", False)),
                str(getattr(x, "sharding", "")),
            )
            if hasattr(x, "dtype")
            else (type(x), x)
            for x in leaves
        ),
    )


class _Placement:
    """Where probes run: one device, or the probe axis split over all of them."""

    def __init__(self):
        self.devices = jax.devices()
        self.count = len(self.devices)
        if self.count > 1:
            mesh = Mesh(np.array(self.devices), ("probes",))
            self.split = NamedSharding(mesh, PartitionSpec("probes"))
            self.replicated = NamedSharding(mesh, PartitionSpec())
        self.multiprocess = jax.process_count() > 1

    def jit(self, fn: Callable[..., Any], points: tuple[int, ...], n_args: int):
        """``fn`` jitted; with several devices, the probe axis is split.

        Inputs at ``points`` and every output are split along the probe axis,
        everything else is replicated, so no device talks to another: each
        evaluates its own probes.
        """
        if self.count == 1:
            return jax.jit(fn)
        shardings = [self.replicated] * n_args
        for i in points:
            shardings[i] = self.split
        return jax.jit(fn, in_shardings=tuple(shardings), out_shardings=self.split)

    def gather(self, out: Any) -> np.ndarray:
        """A probe-axis output, whole, on the host."""
        if self.multiprocess:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(out, tiled=True))
        return np.asarray(out)

    def everywhere(self, tree: Any) -> Any:
        if self.count == 1:
            return tree
        return jax.device_put(tree, self.replicated)

    def points(self, array: np.ndarray) -> Any:
        if self.count == 1:
            return array
        if self.multiprocess:
            return jax.make_array_from_callback(
                array.shape, self.split, lambda index: array[index]
            )
        return jax.device_put(array, self.split)


@dataclasses.dataclass
class _Group:
    members: tuple[_Member, ...]
    vector: np.ndarray  # the members' real-layout values, concatenated
    batch: dict[str, int] = dataclasses.field(default_factory=dict)
    executables: dict[str, Any] = dataclasses.field(default_factory=dict)
    base: float = float("nan")  # J(θ) as this group's function computes it
    placed: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.vector.size)


def device_memory_budget() -> int:
    """A default memory budget, in bytes, for one chunk on the default device."""
    device = jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # not every backend reports memory
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] * 0.25)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(total * 0.25, 4 << 30))


class _Progress:
    """A tqdm bar on stderr, shown once the work is known to take a while."""

    def __init__(self, total: int, show: bool | None, after_seconds: float = 3.0):
        self.total, self.show, self.after = total, show, after_seconds
        self.done, self.bar = 0, None
        self.start = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is None and self._wanted():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=self.done,
                desc="jaxcheck",
                unit="eval",
                leave=False,
            )
        elif self.bar is not None:
            self.bar.update(n)

    def _wanted(self) -> bool:
        if self.show is not None:
            return self.show
        if not sys.stderr.isatty():
            return False
        elapsed = time.perf_counter() - self.start
        return elapsed * self.total / max(self.done, 1) > self.after

    @property
    def blocking(self) -> bool:
        """Whether chunks must finish one by one (to time them or show them)."""
        return self.show is not False and (self.show or sys.stderr.isatty())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Memo:
    """Results already computed in one check, looked up by their inputs.

    Keys are rows of a structured array kept sorted, so that a lookup is a
    binary search and each point costs its key and outputs (about 24 bytes for
    a coordinate) instead of the few hundred bytes of a Python dict entry: a
    full check of ten million parameters evaluates twenty million points.
    """

    def __init__(self, key_dtype: np.dtype, width: int):
        self._keys = np.empty(0, dtype=key_dtype)
        self._outs = np.empty((0, width), dtype=np.float64)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which ``keys`` are known, and their outputs (NaN where not)."""
        outs = np.full((len(keys), self._outs.shape[1]), np.nan)
        if not len(self._keys):
            return np.zeros(len(keys), dtype=bool), outs
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = self._keys[at] == keys
        outs[found] = self._outs[at[found]]
        return found, outs

    def add(self, keys: np.ndarray, outs: np.ndarray) -> None:
        # Sort only the new rows and insert them: a full check adds a block at
        # a time, and re-sorting everything known for each would grow as n².
        order = np.argsort(keys, kind="stable")
        keys, outs = keys[order], outs[order]
        at = np.searchsorted(self._keys, keys)
        self._keys = np.insert(self._keys, at, keys)
        self._outs = np.insert(self._outs, at, outs, axis=0)


_COORDINATE_KEY = np.dtype([("index", "<i8"), ("value", "<f8")])
_DIRECTION_KEY = np.dtype(
    [("lo", "<i8"), ("hi", "<i8"), ("seed", "<i8"), ("step", "<f8")]
)


def _keys(dtype: np.dtype, *columns: np.ndarray) -> np.ndarray:
    keys = np.empty(len(columns[0]), dtype=dtype)
    for name, column in zip(dtype.names, columns, strict=True):
        keys[name] = column
    return keys


class Engine:
    """Batched, compiled evaluations of one problem's loss and gradient.

    Args:
        problem: what is checked.
        batch_size: probes per compiled call; None picks it per group from the
            memory one evaluation needs.
        memory_budget: bytes one chunk may use at most; None derives it from the
            device.
        progress: show a progress bar on stderr: True, False, or None for "on a
            terminal, when the work is expected to take more than a few
            seconds".
    """

    def __init__(
        self,
        problem: Problem,
        *,
        batch_size: int | None = None,
        memory_budget: int | None = None,
        progress: bool | None = None,
    ):
        self.problem = problem
        self.real = [jnp.asarray(r) for r in problem.real_leaves()]
        theta, _ = ravel_pytree(self.real)
        self.theta = np.asarray(theta)
        self.batch_size = batch_size
        self.memory_budget = memory_budget or device_memory_budget()
        self.progress = progress
        self.bundle = CACHE.get(problem.structure)
        self.placement = _Placement()
        self.evaluations = 0
        self.compile_seconds = 0.0
        # Wall time and evaluations of the batched passes, per probe kind.
        self.run_seconds = {COORDINATE: 0.0, DIRECTION: 0.0}
        self.run_evaluations = {COORDINATE: 0, DIRECTION: 0}
        self.nulls: list[np.ndarray] = []
        self.loss_dtype = np.dtype(np.float64)
        self.grad: np.ndarray | None = None
        self._eval_bytes = 0
        self._groups: list[_Group] | None = None
        self._whole: _Group | None = None
        self._memo = _Memo(_COORDINATE_KEY, 1)
        self._outer: _Progress | None = None
        self._memo_directions = _Memo(_DIRECTION_KEY, 4)
        n = len(problem.leaves)
        self._leaf_group = np.zeros(n, dtype=np.int64)
        self._leaf_start = np.zeros(n, dtype=np.int64)

    def _compile(self, key: Any, jitted: Callable[..., Any], args: tuple) -> Any:
        executable = self.bundle.executables.get(key)
        if executable is None:
            start = time.perf_counter()
            executable = jitted.trace(*args).lower().compile()
            self.compile_seconds += time.perf_counter() - start
            if self.problem.structure.hashable:
                self.bundle.executables[key] = executable
        return executable

    # -- analytic side -----------------------------------------------------

    def value_and_grad(self) -> tuple[float, Any, np.ndarray]:
        """Loss, aux and the flat analytic gradient (real layout) at θ."""
        p = self.problem
        args = (list(p.checked), list(p.fixed), p.key)
        executable = self._compile(
            ("value_and_grad", _signature(args)), self.bundle.value_and_grad, args
        )
        stats = executable.memory_analysis()
        if stats is not None:
            self._eval_bytes = int(stats.temp_size_in_bytes)
        loss, aux, grads = executable(*args)
        self.loss_dtype = np.dtype(loss.dtype)
        self.evaluations += 1
        real = []
        for leaf, g in zip(p.leaves, grads, strict=True):
            g = np.asarray(g)
            real.append(np.stack([g.real, -g.imag], axis=-1) if leaf.is_complex else g)
        flat = np.concatenate([r.reshape(-1) for r in real]) if real else np.zeros(0)
        self.grad = flat.astype(np.float64)
        return float(loss), aux, self.grad

    # -- groups ------------------------------------------------------------

    def _make_group(self, leaves: list[int]) -> _Group:
        p = self.problem
        members, start = [], 0
        for k in leaves:
            members.append(_Member(k, start, p.leaves[k].real_shape))
            start += p.leaves[k].size
        parts = [self._leaf_values(k) for k in leaves]
        vector = np.concatenate(parts).astype(p.leaves[leaves[0]].real_dtype)
        return _Group(members=tuple(members), vector=vector)

    def _leaf_values(self, k: int) -> np.ndarray:
        leaf = self.problem.leaves[k]
        return self.theta[leaf.offset : leaf.offset + leaf.size]

    def _build_groups(self) -> None:
        p = self.problem
        merge = p.size <= _MERGE_BELOW
        cap = max(self.memory_budget // _GROUP_SHARE, 1)
        kinds: dict[tuple[Any, ...], list[list[int]]] = {}
        for k, leaf in enumerate(p.leaves):
            kind = (str(leaf.real_dtype),) + (() if merge else (leaf.real_shape,))
            if not merge and leaf.size > _GROUP_LEAF_MAX:
                kind += (k,)
            runs = kinds.setdefault(kind, [[]])
            nbytes = leaf.size * leaf.real_dtype.itemsize
            used = sum(p.leaves[j].size for j in runs[-1]) * leaf.real_dtype.itemsize
            if runs[-1] and used + nbytes > cap:
                runs.append([])
            runs[-1].append(k)
        self._groups = []
        for runs in kinds.values():
            for leaves in runs:
                group = self._make_group(leaves)
                for m in group.members:
                    self._leaf_group[m.leaf] = len(self._groups)
                    self._leaf_start[m.leaf] = m.start
                self._groups.append(group)

    def _choose_batch(self, group: _Group, kind: str, points: int) -> int:
        """Probes per chunk for a group: fixed for the group and kind."""
        devices = self.placement.count
        if self.batch_size is not None:
            return _round_up(int(self.batch_size), devices)
        # Directions hold their signs and shift too; forward mode a tangent.
        copies = {COORDINATE: 1, DIRECTION: 3}.get(kind, 2)
        per_point = copies * group.vector.nbytes + self._eval_bytes
        on_cpu = self.placement.devices[0].platform == "cpu"
        target = _CPU_CHUNK_BYTES if on_cpu else _ACCELERATOR_CHUNK_BYTES
        target = min(target, self.memory_budget)
        batch = max(1, target // max(per_point, 1))
        batch = min(batch, _MAX_BATCH, 1 << (points - 1).bit_length())
        return _round_up(1 << (int(batch).bit_length() - 1), devices)

    def _executable(self, group: _Group, kind: str, args: tuple) -> Any:
        if kind not in group.executables:
            key = (kind, group.members, self.placement.count)
            jitted = self.bundle.jitted.get(key)
            if jitted is None:
                spec = _KINDS[kind]
                fn = spec.make(self.problem.structure, group.members)
                jitted = self.placement.jit(fn, spec.points, len(args))
                self.bundle.jitted[key] = jitted
            signature = (key, _signature(args))
            try:
                group.executables[kind] = self._compile(signature, jitted, args)
            except TypeError as error:
                if kind in (JVP_COORDINATE, JVP_DIRECTION) and "jvp" in str(error):
                    raise ForwardModeUnavailable(str(error)) from None
                raise
        return group.executables[kind]

    def _shared(self, group: _Group) -> tuple[Any, Any, Any]:
        """The unbatched inputs of a group's functions, placed once."""
        if "others" not in group.placed:
            in_group = {m.leaf for m in group.members}
            others = [None if k in in_group else r for k, r in enumerate(self.real)]
            group.placed["vector"] = self.placement.everywhere(
                jnp.asarray(group.vector)
            )
            group.placed["others"] = self.placement.everywhere(others)
            group.placed["fixed"] = self.placement.everywhere(list(self.problem.fixed))
            group.placed["key"] = self.placement.everywhere(self.problem.key)
        placed = group.placed
        return placed["others"], placed["fixed"], placed["key"]

    # -- running -----------------------------------------------------------

    def _run(
        self,
        group: _Group,
        kind: str,
        points: list[np.ndarray],
        nulls: list[Any],
        progress: _Progress,
    ) -> list[np.ndarray]:
        """Evaluates ``points`` (arrays of per-probe inputs) in chunks."""
        spec = _KINDS[kind]
        n = len(points[0])
        if kind not in group.batch:
            total = 2 * group.size if kind == COORDINATE else n
            group.batch[kind] = self._choose_batch(group, kind, total + NULLS_PER_GROUP)
        b = group.batch[kind]
        padded = _padded(n + NULLS_PER_GROUP, b)
        full = []
        for values, null in zip(points, nulls, strict=True):
            array = np.full(padded, null, dtype=values.dtype)
            array[:n] = values
            full.append(array)

        others, fixed, key = self._shared(group)
        head = [group.placed["vector"]]
        if spec.with_grad:
            if "grad" not in group.placed:
                grad = np.concatenate(
                    [self.grad[self._range(m.leaf)] for m in group.members]
                )
                group.placed["grad"] = self.placement.everywhere(jnp.asarray(grad))
            head.append(group.placed["grad"])
        tail = [others, fixed, key]

        def chunk(start):
            return [self.placement.points(a[start : start + b]) for a in full]

        run = self._executable(group, kind, (*head, *chunk(0), *tail))
        started = time.perf_counter()
        results = []
        for start in range(0, padded, b):
            out = run(*head, *chunk(start), *tail)
            results.append(out)
            if progress.blocking:
                jax.block_until_ready(out)
                progress.update(b)
        gather = self.placement.gather
        outs = [
            np.concatenate([gather(r[i] if spec.outputs > 1 else r) for r in results])
            for i in range(spec.outputs)
        ]
        outs = [o.astype(np.float64) for o in outs]
        self.run_seconds[kind] = self.run_seconds.get(kind, 0.0) + (
            time.perf_counter() - started
        )
        self.run_evaluations[kind] = self.run_evaluations.get(kind, 0) + padded
        self.evaluations += padded
        if spec.loss:
            self.nulls.append(outs[0][n:])
            group.base = float(outs[0][n])
        return [o[:n] for o in outs]

    def seconds_per_evaluation(self) -> float | None:
        """Measured wall time of one batched loss evaluation, or None before any."""
        kinds = (COORDINATE, DIRECTION)
        n = sum(self.run_evaluations.get(k, 0) for k in kinds)
        return sum(self.run_seconds.get(k, 0.0) for k in kinds) / n if n else None

    def _range(self, k: int) -> slice:
        leaf = self.problem.leaves[k]
        return slice(leaf.offset, leaf.offset + leaf.size)

    def _progress(self, total: int) -> _Progress:
        return self._outer or _Progress(total, self.progress)

    @contextlib.contextmanager
    def progress_over(self, total: int) -> Iterator[None]:
        """One progress bar for ``total`` evaluations made by several calls."""
        self._outer = _Progress(total, self.progress)
        try:
            yield
        finally:
            self._outer.close()
            self._outer = None

    def _locate(self, flat_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The group of each flat coordinate, and its position in the group."""
        if self._groups is None:
            self._build_groups()
        offsets = self.problem.offsets
        leaf_of = np.searchsorted(offsets, flat_index, side="right") - 1
        pos = self._leaf_start[leaf_of] + flat_index - offsets[leaf_of]
        return self._leaf_group[leaf_of], pos

    def _locate_ranges(self, lo: np.ndarray, hi: np.ndarray):
        """The group of each direction's range (-1: all leaves), shifted into it."""
        group_of, start = self._locate(lo)
        offsets = self.problem.offsets
        leaf_of = np.searchsorted(offsets, lo, side="right") - 1
        sizes = np.array([leaf.size for leaf in self.problem.leaves])
        whole = (lo == 0) & (hi == self.problem.size)
        if not np.all(whole | (hi <= offsets[leaf_of] + sizes[leaf_of])):
            raise ValueError("a direction must lie inside one leaf or cover them all")
        shift = np.where(whole, 0, start - lo)
        group_of = np.where(whole, -1, group_of)
        return group_of, (lo + shift).astype(np.int32), (hi + shift).astype(np.int32)

    def _each_group(self, group_of: np.ndarray, kind: str, inputs, nulls, n_out: int):
        """Runs ``kind`` probes group by group; returns ``n_out`` aligned arrays."""
        outs = [np.empty(len(group_of), dtype=np.float64) for _ in range(n_out)]
        progress = self._progress(len(group_of))
        try:
            for gi in np.unique(group_of):
                mine = np.flatnonzero(group_of == gi)
                group = self._whole_group() if gi < 0 else self._groups[gi]
                values = [x(group)[mine] if callable(x) else x[mine] for x in inputs]
                results = self._run(group, kind, values, nulls(group), progress)
                for out, r in zip(outs, results, strict=False):
                    out[mine] = r
                if n_out > len(results):
                    outs[-1][mine] = group.base
        finally:
            if progress is not self._outer:
                progress.close()
        return outs

    def evaluate(self, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The loss at θ with ``θ[flat_index[j]] = values[j]``, for every ``j``.

        Points already evaluated in this check are not evaluated again.
        """
        flat_index = np.asarray(flat_index, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        keys = _keys(_COORDINATE_KEY, flat_index, values)
        known, table = self._memo.lookup(keys)
        todo = ~known
        if todo.any():
            group_of, pos = self._locate(flat_index[todo])
            wanted = values[todo]
            (fresh,) = self._each_group(
                group_of,
                COORDINATE,
                [pos.astype(np.int32), lambda g: wanted.astype(g.vector.dtype)],
                lambda g: [0, g.vector[0]],
                1,
            )
            table[todo, 0] = fresh
            self._memo.add(keys[todo], table[todo])
        return table[:, 0]

    def evaluate_directions(
        self, lo: np.ndarray, hi: np.ndarray, seeds: np.ndarray, steps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The loss at θ moved by ``steps[j]`` along random directions.

        Direction ``j`` is a ±1/√m vector on the flat range ``[lo[j], hi[j])``,
        drawn from ``seeds[j]``; a range is inside one leaf, or covers every
        coordinate. Returns the losses, the projections ``⟨g, Δ⟩`` of the
        analytic gradient on the displacements made, their norms ``‖Δ‖``, and
        J(θ) as computed by the same compiled function. Directions already
        evaluated in this check are not evaluated again.
        """
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        seeds = np.asarray(seeds, np.int64)
        steps = np.asarray(steps, np.float64)
        keys = _keys(_DIRECTION_KEY, lo, hi, seeds, steps)
        known, table = self._memo_directions.lookup(keys)
        todo = ~known
        if todo.any():
            group_of, a, b = self._locate_ranges(lo[todo], hi[todo])
            fresh = self._each_group(
                group_of,
                DIRECTION,
                [a, b, seeds[todo].astype(np.uint32), steps[todo]],
                lambda g: [0, 1, 0, 0.0],
                4,
            )
            table[todo] = np.stack(fresh, axis=1)
            self._memo_directions.add(keys[todo], table[todo])
        return tuple(table[:, i] for i in range(4))

    def jvp_coordinates(self, flat_index: np.ndarray) -> np.ndarray:
        """``∂J/∂θᵢ`` for each flat index, by forward mode (``jax.jvp``).

        Raises:
            ForwardModeUnavailable: if ``fn`` has no forward-mode rule.
        """
        flat_index = np.asarray(flat_index, dtype=np.int64)
        group_of, pos = self._locate(flat_index)
        (out,) = self._each_group(
            group_of, JVP_COORDINATE, [pos.astype(np.int32)], lambda g: [0], 1
        )
        return out

    def jvp_directions(
        self, lo: np.ndarray, hi: np.ndarray, seeds: np.ndarray
    ) -> np.ndarray:
        """``⟨∇J, v⟩`` for each direction (as in ``evaluate_directions``), by
        forward mode.

        Raises:
            ForwardModeUnavailable: if ``fn`` has no forward-mode rule.
        """
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        group_of, a, b = self._locate_ranges(lo, hi)
        seeds = np.asarray(seeds, np.int64).astype(np.uint32)
        (out,) = self._each_group(
            group_of, JVP_DIRECTION, [a, b, seeds], lambda g: [0, 1, 0], 1
        )
        return out

    def _whole_group(self) -> _Group:
        """All checked leaves as one group, for directions over the whole tree."""
        if self._whole is None:
            if len(self._groups) == 1 and len(self._groups[0].members) == len(
                self.problem.leaves
            ):
                self._whole = self._groups[0]
            else:
                dtypes = {str(leaf.real_dtype) for leaf in self.problem.leaves}
                if len(dtypes) > 1:
                    raise ValueError(
                        "a direction over the whole tree needs one dtype; "
                        f"the checked leaves have {sorted(dtypes)}"
                    )
                self._whole = self._make_group(list(range(len(self.problem.leaves))))
        return self._whole

    def base_values(self, flat_index: np.ndarray) -> np.ndarray:
        """J(θ) as computed by the compiled function each coordinate went through.

        One-sided differences subtract this value rather than the one from the
        gradient pass, so that both terms share their rounding.
        """
        leaf_of = np.searchsorted(self.problem.offsets, flat_index, side="right") - 1
        base = np.array([g.base for g in self._groups])
        return base[self._leaf_group[leaf_of]]


def _padded(n: int, batch: int) -> int:
    return -(-n // batch) * batch


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple

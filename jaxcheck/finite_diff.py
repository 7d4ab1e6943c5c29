"""The engine: the loss at many single-coordinate perturbations of θ, batched.

A check needs ``J(θ')`` at points ``θ'`` that differ from θ in one coordinate.
The checked leaves (in real layout, see ``problem``) are raveled with
``jax.flatten_util.ravel_pytree`` into one flat vector, and every requested
point is a pair (flat index, new value).

Leaves are grouped, and each group gets one compiled function that takes a
chunk of ``B`` points inside the group, builds the perturbed leaves under
``jax.vmap`` and evaluates the loss. Leaves outside the group are passed
unbatched, so XLA computes what does not depend on the group once per chunk
rather than once per point. Leaves of one shape and dtype share a group, so a
150-layer network compiles a handful of functions, not 300. A small problem is
one group: there, dispatching fewer calls matters more than reuse.

The chunk size is fixed per group and the last chunk is padded with
unperturbed points, so one compilation serves every chunk of a group, in this
check and in later checks of the same function (compiled executables are cached
by problem structure and input shapes). The padding is not wasted: every
unperturbed evaluation is kept, to measure whether ``fn`` returns the same value
twice at the same point.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcheck.problem import Problem, Structure

# Working-set target for one chunk on a CPU: small chunks stay in cache, which
# measured faster than large ones on every model in the benchmarks.
_CPU_CHUNK_BYTES = 4 << 20
_ACCELERATOR_CHUNK_BYTES = 256 << 20
_MAX_BATCH = 1024
# Problems up to this many coordinates are evaluated as a single group.
_MERGE_BELOW = 4096
NULLS_PER_GROUP = 2


@dataclasses.dataclass(frozen=True)
class _Member:
    leaf: int  # index of the checked leaf
    start: int  # offset inside the group's flat vector
    shape: tuple[int, ...]  # real-layout shape

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass
class _Bundle:
    """Jitted functions of one problem structure, and their executables."""

    value_and_grad: Callable[..., Any]
    groups: dict[tuple[_Member, ...], Callable[..., Any]] = dataclasses.field(
        default_factory=dict
    )
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


def _make_group(structure: Structure, members: tuple[_Member, ...]):
    """Jitted ``(vector, pos, val, others, fixed, key) -> losses`` for a group.

    ``vector`` holds the group's leaves in real layout, raveled and
    concatenated; ``pos`` and ``val`` are positions inside it and their new
    values. ``others`` is the list of all checked leaves, None at the members.
    """

    def evaluate(vector, pos, val, others, fixed, key):
        where = jnp.arange(vector.size, dtype=pos.dtype)

        def one(p, v):
            perturbed = jnp.where(where == p, v, vector)
            real = list(others)
            for m in members:
                real[m.leaf] = perturbed[m.start : m.start + m.size].reshape(m.shape)
            return structure.loss_of_real(real, fixed, key)

        return jax.vmap(one)(pos, val)

    return jax.jit(evaluate)


def _signature(tree: Any) -> tuple[Any, ...]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return (
        treedef,
        tuple(
            (np.shape(x), str(x.dtype), bool(getattr(x, "weak_type", False)))
            if hasattr(x, "dtype")
            else (type(x), x)
            for x in leaves
        ),
    )


@dataclasses.dataclass
class _Group:
    members: tuple[_Member, ...]
    vector: jax.Array  # the members' real-layout values, concatenated
    first: int  # flat index (in θ) of the group's first coordinate
    batch: int
    executable: Any = None
    base: float = float("nan")  # J(θ) as this group's function computes it


def device_memory_budget() -> int:
    """A default memory budget for one chunk, in bytes, from the default device."""
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


class Engine:
    """Batched, compiled evaluations of one problem's loss and gradient.

    Args:
        problem: what is checked.
        batch_size: points per compiled call; None picks it per group from the
            memory one evaluation needs.
        memory_budget: bytes one chunk may use at most; None derives it from the
            device.
        progress: show a progress bar (tqdm) on stderr: True, False, or None
            for "when stderr is a terminal and the work is long".
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
        self.evaluations = 0
        self.compile_seconds = 0.0
        self.nulls: list[np.ndarray] = []
        self.loss_dtype = np.dtype(np.float64)
        self._eval_bytes = 0
        self._groups: list[_Group] | None = None
        self._group_of_leaf = np.zeros(len(problem.leaves), dtype=np.int64)

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
        return float(loss), aux, flat.astype(np.float64)

    # -- numerical side ----------------------------------------------------

    def _build_groups(self) -> None:
        p = self.problem
        merge = p.size <= _MERGE_BELOW
        kinds: dict[tuple[Any, ...], list[int]] = {}
        for k, leaf in enumerate(p.leaves):
            kind = (str(leaf.real_dtype),) + (() if merge else (leaf.real_shape,))
            kinds.setdefault(kind, []).append(k)
        self._groups = []
        for leaves in kinds.values():
            members, start = [], 0
            for k in leaves:
                members.append(_Member(k, start, p.leaves[k].real_shape))
                start += p.leaves[k].size
            parts = [
                self.theta[p.leaves[k].offset : p.leaves[k].offset + p.leaves[k].size]
                for k in leaves
            ]
            vector = np.concatenate(parts).astype(p.leaves[leaves[0]].real_dtype)
            for k in leaves:
                self._group_of_leaf[k] = len(self._groups)
            self._groups.append(
                _Group(
                    members=tuple(members),
                    vector=jnp.asarray(vector),
                    first=p.leaves[leaves[0]].offset,
                    batch=self._choose_batch(vector, 2 * start + NULLS_PER_GROUP),
                )
            )

    def _choose_batch(self, vector: np.ndarray, points: int) -> int:
        """Points per chunk for a group: a power of two, fixed for the group."""
        if self.batch_size is not None:
            return int(self.batch_size)
        per_point = vector.nbytes + self._eval_bytes
        on_cpu = jax.devices()[0].platform == "cpu"
        target = _CPU_CHUNK_BYTES if on_cpu else _ACCELERATOR_CHUNK_BYTES
        target = min(target, self.memory_budget)
        batch = max(1, target // max(per_point, 1))
        batch = min(batch, _MAX_BATCH, 1 << (points - 1).bit_length())
        return 1 << (int(batch).bit_length() - 1)

    def _executable(self, group: _Group, args: tuple) -> Any:
        if group.executable is None:
            jitted = self.bundle.groups.get(group.members)
            if jitted is None:
                jitted = _make_group(self.problem.structure, group.members)
                self.bundle.groups[group.members] = jitted
            key = ("group", group.members, _signature(args))
            group.executable = self._compile(key, jitted, args)
        return group.executable

    def evaluate(self, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The loss at θ with ``θ[flat_index[j]] = values[j]``, for every ``j``."""
        if self._groups is None:
            self._build_groups()
        flat_index = np.asarray(flat_index, dtype=np.int64)
        values = np.asarray(values)
        out = np.empty(len(flat_index), dtype=np.float64)
        if not len(flat_index):
            return out

        offsets = self.problem.offsets
        leaf_of = np.searchsorted(offsets, flat_index, side="right") - 1
        group_of = self._group_of_leaf[leaf_of]
        plan = []
        for gi, group in enumerate(self._groups):
            mine = np.flatnonzero(group_of == gi)
            if len(mine):
                starts = np.zeros(len(self.problem.leaves), dtype=np.int64)
                for m in group.members:
                    starts[m.leaf] = m.start
                within = flat_index[mine] - offsets[leaf_of[mine]]
                plan.append((group, mine, starts[leaf_of[mine]] + within))

        total = sum(
            _padded(len(mine) + NULLS_PER_GROUP, g.batch) for g, mine, _ in plan
        )
        bar = self._progress_bar(total)
        try:
            for group, mine, pos in plan:
                out[mine] = self._run_group(group, pos, values[mine], bar)
        finally:
            if bar is not None:
                bar.close()
        return out

    def _run_group(self, group: _Group, pos, val, bar) -> np.ndarray:
        p = self.problem
        n = len(pos)
        padded = _padded(n + NULLS_PER_GROUP, group.batch)
        vector = np.asarray(group.vector)
        all_pos = np.zeros(padded, dtype=np.int32)
        all_val = np.full(padded, vector[0], dtype=vector.dtype)
        all_pos[:n] = pos
        all_val[:n] = val.astype(vector.dtype)

        others = [None] * len(self.real)
        in_group = {m.leaf for m in group.members}
        for k, r in enumerate(self.real):
            if k not in in_group:
                others[k] = r
        fixed = list(p.fixed)
        b = group.batch
        args = (group.vector, all_pos[:b], all_val[:b], others, fixed, p.key)
        run = self._executable(group, args)

        results = []
        for start in range(0, padded, b):
            stop = start + b
            results.append(
                run(group.vector, all_pos[start:stop], all_val[start:stop], *args[3:])
            )
            if bar is not None:
                results[-1].block_until_ready()
                bar.update(b)
        losses = np.concatenate([np.asarray(r, dtype=np.float64) for r in results])
        self.evaluations += padded
        self.nulls.append(losses[n:])
        group.base = float(losses[n])
        return losses[:n]

    def base_values(self, flat_index: np.ndarray) -> np.ndarray:
        """J(θ) as computed by the compiled function each coordinate went through.

        One-sided differences subtract this value rather than the one from the
        gradient pass, so that both terms share their rounding.
        """
        leaf_of = np.searchsorted(self.problem.offsets, flat_index, side="right") - 1
        base = np.array([g.base for g in self._groups])
        return base[self._group_of_leaf[leaf_of]]

    def _progress_bar(self, total: int):
        show = self.progress
        if show is None:
            show = sys.stderr.isatty() and total >= 200_000
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="jaxcheck", unit="eval", leave=False)


def _padded(n: int, batch: int) -> int:
    return -(-n // batch) * batch

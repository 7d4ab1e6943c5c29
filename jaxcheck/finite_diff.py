"""The engine: the loss at many single-coordinate perturbations of θ, batched.

A check needs ``J(θ')`` at points ``θ'`` that differ from θ in one coordinate.
The checked leaves are raveled with ``jax.flatten_util.ravel_pytree`` into one
flat vector, and every requested point is a pair (flat index, new value).

Leaves are grouped by shape and dtype. Each group gets one compiled function
that takes a chunk of ``B`` points inside that group, builds the perturbed
leaves under ``jax.vmap`` and evaluates the loss, with every other leaf passed
unbatched, so XLA computes the part of the network that does not depend on the
group once per chunk rather than once per point. The chunk size is fixed per
group, the last chunk is padded with unperturbed points, and so one compilation
serves every chunk of a group, in this check and in later checks of the same
function. The padding is not wasted: every unperturbed evaluation is kept to
measure whether ``fn`` returns the same value twice at the same point.
"""

from __future__ import annotations

import collections
import dataclasses
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
_NULLS_PER_GROUP = 2


@dataclasses.dataclass
class _Compiled:
    """The compiled functions of one problem structure."""

    value_and_grad: Callable[..., Any]
    groups: dict[tuple[int, ...], Callable[..., Any]] = dataclasses.field(
        default_factory=dict
    )


class _Cache:
    """A small LRU of jitted functions, keyed by problem structure."""

    def __init__(self, size: int = 32):
        self.size = size
        self._items: collections.OrderedDict[Structure, _Compiled] = (
            collections.OrderedDict()
        )

    def get(self, structure: Structure) -> _Compiled:
        if not structure.hashable:
            return _Compiled(_make_value_and_grad(structure))
        if structure in self._items:
            self._items.move_to_end(structure)
            return self._items[structure]
        compiled = _Compiled(_make_value_and_grad(structure))
        self._items[structure] = compiled
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return compiled

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


def _make_group(structure: Structure, members: tuple[int, ...]) -> Callable[..., Any]:
    """Jitted ``(stack, pos, val, others, fixed, key) -> losses`` for one group.

    ``stack`` holds the group's leaves in real layout, stacked; ``pos`` and
    ``val`` are the flat positions inside the stack and their new values.
    ``others`` is the list of all checked leaves, with None at the members.
    """

    def evaluate(stack, pos, val, others, fixed, key):
        flat = stack.reshape(-1)
        where = jnp.arange(flat.size)

        def one(p, v):
            perturbed = jnp.where(where == p, v, flat).reshape(stack.shape)
            real = list(others)
            for j, k in enumerate(members):
                real[k] = perturbed[j]
            return structure.loss_of_real(real, fixed, key)

        return jax.vmap(one)(pos, val)

    return jax.jit(evaluate)


@dataclasses.dataclass
class _Group:
    members: tuple[int, ...]  # indices of the checked leaves in the group
    member_size: int  # real coordinates per member
    stack: jax.Array
    batch: int
    compiled: Any = None


def device_memory_budget() -> int:
    """A default memory budget in bytes for one chunk, from the default device."""
    device = jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # not every backend reports memory
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] * 0.25)
    try:
        import os

        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(total * 0.25, 4 << 30))


class Engine:
    """Batched, compiled evaluations of one problem's loss and gradient.

    Args:
        problem: what is checked.
        batch_size: points per compiled call; None picks it per group from the
            memory the loss needs and ``memory_budget``.
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
        self.real = problem.real_leaves()
        theta, _ = ravel_pytree(self.real)
        self.theta = np.asarray(theta)
        self.batch_size = batch_size
        self.memory_budget = memory_budget or device_memory_budget()
        self.progress = progress
        self.compiled = CACHE.get(problem.structure)
        self.evaluations = 0
        self.compile_seconds = 0.0
        self.nulls: list[np.ndarray] = []
        self.loss_dtype = np.dtype(np.float64)
        self._base: dict[tuple[Any, ...], float] = {}
        self._eval_bytes = 0
        self._groups: dict[tuple[Any, ...], _Group] | None = None
        self._leaf_group: list[tuple[tuple[Any, ...], int]] = []

    # -- analytic side -----------------------------------------------------

    def value_and_grad(self) -> tuple[float, Any, np.ndarray]:
        """Loss, aux and the flat analytic gradient (real layout) at θ."""
        p = self.problem
        jitted = self.compiled.value_and_grad
        args = (list(p.checked), list(p.fixed), p.key)
        start = time.perf_counter()
        compiled = jitted.trace(*args).lower().compile()
        self.compile_seconds += time.perf_counter() - start
        stats = compiled.memory_analysis()
        if stats is not None:
            self._eval_bytes = int(stats.temp_size_in_bytes)
        loss, aux, grads = compiled(*args)
        self.loss_dtype = np.dtype(loss.dtype)
        self.evaluations += 1
        real = [
            jnp.stack([g.real, -g.imag], axis=-1) if leaf.is_complex else g
            for leaf, g in zip(p.leaves, grads, strict=True)
        ]
        flat, _ = ravel_pytree(real)
        return float(loss), aux, np.asarray(flat, dtype=np.float64)

    # -- numerical side ----------------------------------------------------

    def _build_groups(self) -> None:
        p = self.problem
        by_kind: dict[tuple[Any, ...], list[int]] = {}
        for k, leaf in enumerate(p.leaves):
            kind = (leaf.real_shape, str(leaf.real_dtype))
            by_kind.setdefault(kind, []).append(k)
        self._groups = {}
        self._leaf_group = [None] * len(p.leaves)  # type: ignore[list-item]
        for kind, members in by_kind.items():
            members_t = tuple(members)
            stack = jnp.stack([self.real[k] for k in members_t])
            member_size = p.leaves[members_t[0]].size
            self._groups[kind] = _Group(
                members=members_t,
                member_size=member_size,
                stack=stack,
                batch=self._choose_batch(stack, 2 * stack.size + _NULLS_PER_GROUP),
            )
            for rank, k in enumerate(members_t):
                self._leaf_group[k] = (kind, rank)

    def _choose_batch(self, stack: jax.Array, points: int) -> int:
        """Points per chunk for a group: a power of two, fixed for the group."""
        if self.batch_size is not None:
            return int(self.batch_size)
        per_point = stack.size * stack.dtype.itemsize + self._eval_bytes
        on_cpu = jax.devices()[0].platform == "cpu"
        target = _CPU_CHUNK_BYTES if on_cpu else _ACCELERATOR_CHUNK_BYTES
        target = min(target, self.memory_budget)
        batch = max(1, target // max(per_point, 1))
        batch = min(batch, _MAX_BATCH, 1 << (points - 1).bit_length())
        return 1 << (int(batch).bit_length() - 1)

    def _group_fn(self, kind: tuple[Any, ...]) -> Any:
        group = self._groups[kind]
        if group.compiled is None:
            fns = self.compiled.groups
            if group.members not in fns:
                fns[group.members] = _make_group(self.problem.structure, group.members)
            args = self._group_args(group, np.zeros(group.batch, np.int64))
            start = time.perf_counter()
            group.compiled = fns[group.members].lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return group.compiled

    def _group_args(self, group: _Group, pos: np.ndarray, val: Any = None):
        if val is None:
            val = np.asarray(group.stack.reshape(-1)[0]).repeat(len(pos))
        others = [None if k in group.members else r for k, r in enumerate(self.real)]
        p = self.problem
        return (
            group.stack,
            jnp.asarray(pos, dtype=jnp.int32),
            jnp.asarray(val, dtype=group.stack.dtype),
            others,
            list(p.fixed),
            p.key,
        )

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
        plan = []
        for kind, group in self._groups.items():
            mine = np.flatnonzero(np.isin(leaf_of, group.members))
            if not len(mine):
                continue
            ranks = np.array([self._leaf_group[k][1] for k in leaf_of[mine]])
            pos = ranks * group.member_size + (
                flat_index[mine] - offsets[leaf_of[mine]]
            )
            plan.append((kind, group, mine, pos))

        total = sum(
            _padded(len(mine) + _NULLS_PER_GROUP, g.batch) for _, g, mine, _ in plan
        )
        bar = self._progress_bar(total)
        try:
            for kind, group, mine, pos in plan:
                out[mine] = self._run_group(kind, group, pos, values[mine], bar)
        finally:
            if bar is not None:
                bar.close()
        return out

    def _run_group(self, kind, group: _Group, pos, val, bar) -> np.ndarray:
        fn = self._group_fn(kind)
        n = len(pos)
        padded = _padded(n + _NULLS_PER_GROUP, group.batch)
        null_value = np.asarray(group.stack.reshape(-1)[0])
        all_pos = np.zeros(padded, dtype=np.int64)
        all_val = np.full(padded, null_value, dtype=null_value.dtype)
        all_pos[:n] = pos
        all_val[:n] = val.astype(null_value.dtype)

        _, _, others, fixed, key = self._group_args(group, all_pos[:1])[1:]
        results = []
        for start in range(0, padded, group.batch):
            stop = start + group.batch
            results.append(
                fn(
                    group.stack,
                    jnp.asarray(all_pos[start:stop], dtype=jnp.int32),
                    jnp.asarray(all_val[start:stop]),
                    others,
                    fixed,
                    key,
                )
            )
            if bar is not None:
                results[-1].block_until_ready()
                bar.update(group.batch)
        losses = np.concatenate([np.asarray(r, dtype=np.float64) for r in results])
        self.evaluations += padded
        self.nulls.append(losses[n:])
        self._base[kind] = float(losses[n])
        return losses[:n]

    def base_values(self, flat_index: np.ndarray) -> np.ndarray:
        """J(θ) as computed by the compiled function each coordinate went through.

        One-sided differences subtract this value rather than the one from the
        gradient pass, so that both terms share their rounding.
        """
        leaf_of = np.searchsorted(self.problem.offsets, flat_index, side="right") - 1
        kinds = [self._leaf_group[k][0] for k in range(len(self.problem.leaves))]
        per_leaf = np.array([self._base.get(kind, np.nan) for kind in kinds])
        return per_leaf[leaf_of]

    def _progress_bar(self, total: int):
        show = self.progress
        if show is None:
            show = sys.stderr.isatty() and total >= 20_000
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="jaxcheck", unit="eval", leave=False)


def _padded(n: int, batch: int) -> int:
    return -(-n // batch) * batch

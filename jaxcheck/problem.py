"""The loss under check, reduced to a function of the leaves being checked.

``fn(params, *args)`` is split into what a check perturbs and what it holds
fixed. Every leaf of the positional arguments falls in one of three roles:

* **checked**: a floating or complex array (or a Python float) inside the
  differentiated argument(s). These are perturbed and compared. A Python float
  that is a field of an Equinox module is a hyperparameter (the rate of
  ``eqx.nn.Dropout``), not a parameter: like ``eqx.is_inexact_array``, the
  check leaves it alone.
* **fixed array**: any other array (inputs, labels, integer and boolean leaves,
  PRNG keys, floating arrays outside the differentiated argument). They are
  passed to the compiled functions as arguments and never perturbed.
* **static**: anything that is not an array (activation functions, strings,
  Python ints). They are closed over, as ``jax.jit`` would treat a static
  argument.

Complex checked leaves are handled in a *real layout*: a leaf of shape ``s``
becomes a real array of shape ``s + (2,)`` holding the real and imaginary
parts, so that both are perturbed separately.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util as jtu

CHECKED, FIXED, STATIC = "checked", "fixed", "static"


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One checked leaf and where its coordinates sit in the flat vector."""

    path: str  # jax.tree_util.keystr of the leaf inside the checked argument
    shape: tuple[int, ...]  # the leaf's own shape
    dtype: np.dtype  # dtype it is evaluated in (after any upcast)
    given_dtype: np.dtype  # dtype the caller passed
    offset: int  # first coordinate in the flat real vector
    size: int  # number of real coordinates (twice the entries if complex)

    @property
    def is_complex(self) -> bool:
        return jnp.issubdtype(self.dtype, jnp.complexfloating)

    @property
    def real_shape(self) -> tuple[int, ...]:
        return (*self.shape, 2) if self.is_complex else self.shape

    @property
    def real_dtype(self) -> np.dtype:
        return np.dtype(jnp.finfo(self.dtype).dtype)

    def locate(self, k: int) -> tuple[tuple[int, ...], str | None]:
        """Index inside the leaf (and real/imag part) of its ``k``-th coordinate."""
        index = tuple(int(i) for i in np.unravel_index(k, self.real_shape))
        if self.is_complex:
            return index[:-1], ("real", "imag")[index[-1]]
        return index, None


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A leaf of the checked argument that the check leaves alone, and why."""

    path: str
    reason: str


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _is_inexact(x: Any) -> bool:
    if isinstance(x, float | complex):
        return True
    return _is_array(x) and not _is_key(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def _target_dtype(dtype: np.dtype, measure: np.dtype | None) -> np.dtype:
    """The dtype an inexact leaf is evaluated in."""
    if measure is None:
        return np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return np.dtype(jnp.result_type(measure, jnp.complex64))
    return np.dtype(measure)


def _cast(x: Any, dtype: np.dtype) -> jax.Array:
    """``x`` as a device array of ``dtype``; a new array, the caller's is kept."""
    if x.dtype == dtype:
        return jnp.asarray(x)
    # Converting on the host avoids compiling a conversion per leaf shape.
    return jnp.asarray(np.asarray(x).astype(dtype))


def _describe(x: Any, in_module: bool = False) -> str:
    if in_module and isinstance(x, float | complex):
        return (
            f"{type(x).__name__} field of an Equinox module (a hyperparameter, "
            "not an array)"
        )
    if _is_key(x):
        return "PRNG key (never perturbed)"
    if _is_array(x):
        return f"{x.dtype} array (not differentiable)"
    return f"{type(x).__name__} (not an array)"


def _is_equinox_module(x: Any) -> bool:
    # Equinox is optional: a module can only be given if it has been imported.
    eqx = sys.modules.get("equinox")
    module = getattr(eqx, "Module", None)
    return module is not None and isinstance(x, module)


def _flatten(tree: Any) -> tuple[list[tuple[Any, Any, bool]], Any]:
    """``(path, leaf, inside an Equinox module)`` for every leaf, and the treedef.

    The leaves come in ``jax.tree_util.tree_flatten`` order.
    """
    treedef = jtu.tree_structure(tree)
    outer = jtu.tree_flatten_with_path(tree, is_leaf=_is_equinox_module)[0]
    flat = []
    for path, x in outer:
        if _is_equinox_module(x):
            inner = jtu.tree_flatten_with_path(x)[0]
            flat += [((*path, *p), y, True) for p, y in inner]
        else:
            flat.append((path, x, False))
    return flat, treedef


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """Everything about a problem that does not depend on array values.

    Two checks with equal structures can share compiled functions, so this is
    the key of the compilation cache. It holds no array data.
    """

    fn: Callable[..., Any]
    has_aux: bool
    with_key: bool
    treedef: Any
    roles: tuple[str, ...]
    statics: tuple[Any, ...]  # one entry per leaf; None where not static
    complex_leaves: tuple[bool, ...]  # one entry per checked leaf

    def _key(self) -> tuple[Any, ...]:
        return (
            self.fn,
            self.has_aux,
            self.with_key,
            self.treedef,
            self.roles,
            self.statics,
            self.complex_leaves,
        )

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Structure) and self._key() == other._key()

    @property
    def hashable(self) -> bool:
        try:
            hash(self)
        except TypeError:
            return False
        return True

    def assemble(self, checked: Sequence[Any], fixed: Sequence[Any]) -> list[Any]:
        """The positional arguments of ``fn`` from checked and fixed leaves."""
        checked_it, fixed_it = iter(checked), iter(fixed)
        leaves = []
        for role, static in zip(self.roles, self.statics, strict=True):
            if role == CHECKED:
                leaves.append(next(checked_it))
            elif role == FIXED:
                leaves.append(next(fixed_it))
            else:
                leaves.append(static)
        return list(jtu.tree_unflatten(self.treedef, leaves))

    def call(self, checked: Sequence[Any], fixed: Sequence[Any], key: Any):
        """``fn`` on natural-form leaves; returns ``(loss, aux)``."""
        all_args = self.assemble(checked, fixed)
        out = self.fn(*all_args, key=key) if self.with_key else self.fn(*all_args)
        if self.has_aux:
            if not (isinstance(out, tuple | list) and len(out) == 2):
                raise TypeError(
                    "has_aux=True expects fn to return a pair (loss, aux); it "
                    f"returned {type(out).__name__}. Return `loss, aux` or drop "
                    "has_aux."
                )
            loss, aux = out
        else:
            loss, aux = out, None
        _validate_loss(loss, self.has_aux)
        return loss, aux

    def natural(self, real: Sequence[jax.Array]) -> list[jax.Array]:
        """Checked leaves in natural form from their real layout."""
        return [
            jax.lax.complex(r[..., 0], r[..., 1]) if c else r
            for r, c in zip(real, self.complex_leaves, strict=True)
        ]

    def loss_of_real(
        self, real: Sequence[jax.Array], fixed: Sequence[Any], key: Any
    ) -> jax.Array:
        """The loss as a function of the checked leaves in real layout."""
        return self.call(self.natural(real), fixed, key)[0]


def _validate_loss(loss: Any, has_aux: bool) -> None:
    shape = getattr(loss, "shape", None)
    dtype = getattr(loss, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"fn must return a scalar JAX array; it returned {type(loss).__name__}."
        )
    if shape != ():
        hint = (
            ""
            if has_aux
            else " If fn also returns auxiliary outputs, return `(loss, aux)` and "
            "pass has_aux=True."
        )
        raise ValueError(
            f"fn must return a scalar loss; it returned an array of shape {shape}. "
            "Reduce it to a scalar (for example `jnp.sum(out * w)` with a fixed "
            "random `w`, a projection that still checks every output), or check "
            "it as a vector-valued function with outputs='project' or "
            f"outputs='jacobian'.{hint}"
        )
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(
            f"fn returned a complex loss ({dtype}); gradient checking needs a real "
            "loss. Check a real function of it instead, such as `jnp.abs(z) ** 2` "
            "or `z.real` and `z.imag` separately."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"fn returned a loss of dtype {dtype}; it must be floating to have a "
            "gradient. Compute the loss in floating point."
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A loss, the values it is checked at, and the layout of its coordinates."""

    structure: Structure
    leaves: tuple[Leaf, ...]
    skipped: tuple[Skipped, ...]
    checked: tuple[jax.Array, ...]  # natural form, evaluation dtype
    fixed: tuple[Any, ...]
    key: Any
    size: int  # number of real coordinates

    def real_leaves(self) -> list[np.ndarray]:
        """The checked leaves in real layout, on the host."""
        out = []
        for leaf, c in zip(self.leaves, self.checked, strict=True):
            c = np.asarray(c)
            out.append(np.stack([c.real, c.imag], axis=-1) if leaf.is_complex else c)
        return out

    def locate(self, flat: int) -> tuple[Leaf, tuple[int, ...], str | None]:
        """The leaf, the index in it, and the part of a flat coordinate."""
        k = int(np.searchsorted(self.offsets, flat, side="right")) - 1
        leaf = self.leaves[k]
        index, part = leaf.locate(flat - leaf.offset)
        return leaf, index, part

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        return np.array([leaf.offset for leaf in self.leaves], dtype=np.int64)


def _accepts_key(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C callables
        return True
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return True
    p = sig.parameters.get("key")
    return p is not None and p.kind is not inspect.Parameter.POSITIONAL_ONLY


def _validate_key(key: Any) -> None:
    if _is_key(key):
        return
    if _is_array(key) and key.dtype == np.uint32:
        return
    got = f"{key.dtype} array" if _is_array(key) else type(key).__name__
    raise TypeError(
        f"key must be a PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)); "
        f"received a {got}. Pass the key you give your model's dropout or sampling."
    )


def normalize_argnums(argnums: int | Sequence[int], n_args: int) -> tuple[int, ...]:
    """``argnums`` as a tuple of valid positions, or a clear error."""
    items = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not items or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in items
    ):
        raise TypeError(
            "argnums must be an int or a non-empty tuple of ints; received "
            f"{argnums!r}."
        )
    for a in items:
        if not 0 <= a < n_args:
            raise ValueError(
                f"argnums={argnums!r} is out of range: fn is called with {n_args} "
                f"positional argument(s) (params and {n_args - 1} in args), so "
                f"argnums must lie in 0..{n_args - 1}."
            )
    if len(set(items)) != len(items):
        raise ValueError(f"argnums={argnums!r} repeats a position.")
    return items


def build(
    fn: Callable[..., Any],
    params: Any,
    args: Sequence[Any],
    *,
    key: Any,
    argnums: int | Sequence[int],
    has_aux: bool,
    measure_dtype: np.dtype | None,
) -> Problem:
    """Split ``fn(params, *args)`` into checked leaves, fixed arrays and statics.

    ``measure_dtype`` is the floating dtype the check runs in (inexact leaves and
    floating inputs are cast to it) or None to keep every leaf's own dtype. It
    must be called where that dtype can exist (inside ``jax.enable_x64`` for
    float64).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable; received {type(fn).__name__}.")
    all_args = (params, *args)
    positions = normalize_argnums(argnums, len(all_args))
    if key is not None:
        _validate_key(key)
        if not _accepts_key(fn):
            raise TypeError(
                "key was given, so fn is called as fn(params, *args, key=key), but "
                f"{getattr(fn, '__name__', 'fn')} takes no keyword argument named "
                "`key`. Add a `key` parameter (and use it for dropout or sampling), "
                "or do not pass key."
            )

    flat, treedef = _flatten(all_args)
    roles, statics, fixed, checked = [], [], [], []
    leaves, skipped, complex_leaves = [], [], []
    offset = 0
    for path, x, in_module in flat:
        in_target = path[0].idx in positions
        shown = jtu.keystr(path if len(positions) > 1 else path[1:])
        hyperparameter = in_module and not _is_array(x)
        if in_target and _is_inexact(x) and not hyperparameter:
            x = x if _is_array(x) else jnp.asarray(x)
            dtype = _target_dtype(x.dtype, measure_dtype)
            value = _cast(x, dtype)
            leaf = Leaf(
                path=shown,
                shape=tuple(x.shape),
                dtype=dtype,
                given_dtype=np.dtype(x.dtype),
                offset=offset,
                size=x.size * (2 if jnp.issubdtype(dtype, jnp.complexfloating) else 1),
            )
            offset += leaf.size
            roles.append(CHECKED)
            statics.append(None)
            checked.append(value)
            leaves.append(leaf)
            complex_leaves.append(leaf.is_complex)
            continue
        if in_target:
            skipped.append(Skipped(shown, _describe(x, in_module)))
        if _is_array(x):
            if measure_dtype is not None and _is_inexact(x):
                x = _cast(x, _target_dtype(x.dtype, measure_dtype))
            roles.append(FIXED)
            statics.append(None)
            fixed.append(x)
        else:
            roles.append(STATIC)
            statics.append(x)

    if not leaves:
        found = ", ".join(f"{s.path or '(root)'}: {s.reason}" for s in skipped)
        raise ValueError(
            "There is nothing to check: the differentiated argument (argnums="
            f"{argnums!r}) has no floating or complex leaf"
            + (f" (found {found})." if found else " (it is empty).")
            + " Pass the parameters as floating arrays, for example "
            "`jnp.asarray(w, jnp.float32)`."
        )

    structure = Structure(
        fn=fn,
        has_aux=has_aux,
        with_key=key is not None,
        treedef=treedef,
        roles=tuple(roles),
        statics=tuple(statics),
        complex_leaves=tuple(complex_leaves),
    )
    return Problem(
        structure=structure,
        leaves=tuple(leaves),
        skipped=tuple(skipped),
        checked=tuple(checked),
        fixed=tuple(fixed),
        key=key,
        size=offset,
    )

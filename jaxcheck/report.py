"""What a gradient check found: verdicts, thresholds, and the report.

The verdict follows the classic reading of the relative error
``‖g_num − g‖₂ / (‖g_num‖₂ + ‖g‖₂)`` of a centered finite difference in float64:
about 1e-7 and below is what a correct gradient of a smooth loss gives; below
1e-4 is acceptable only where the loss has kinks; 1e-4 to 1e-2 is suspect; above
1e-2 the gradient is probably wrong. jaxcheck adds one level, ``UNRESOLVED``, for
a leaf whose gradient is too small for finite differences to measure at all.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Sequence
from typing import Any

import numpy as np


class Verdict(enum.Enum):
    """The outcome of a check, from best to worst."""

    CORRECT = "correct"
    KINKS = "kinks"
    UNRESOLVED = "unresolved"
    SUSPECT = "suspect"
    WRONG = "wrong"

    @property
    def rank(self) -> int:
        return list(Verdict).index(self)

    @property
    def passed(self) -> bool:
        return self in (Verdict.CORRECT, Verdict.KINKS)

    @staticmethod
    def worst(verdicts: Sequence[Verdict]) -> Verdict:
        return max(verdicts, key=lambda v: v.rank, default=Verdict.CORRECT)


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Relative-error thresholds for one evaluation dtype.

    Attributes:
        correct: at or below this, a leaf is CORRECT.
        kinks: at or below this, a leaf is acceptable where kinks were found, and
            finite-difference noise this small still counts as a resolved check.
        wrong: above this, a leaf is WRONG; between ``kinks`` and ``wrong`` it
            is SUSPECT.
    """

    correct: float
    kinks: float
    wrong: float


# Float64 holds the classic thresholds. A centered difference in a dtype with
# unit roundoff u has error of order u^(2/3) at best, so narrower dtypes get
# wider thresholds: float32 checks resolve about 1e-3, half precisions 1e-1.
TOLERANCES: dict[str, Tolerances] = {
    "float64": Tolerances(correct=1e-7, kinks=1e-4, wrong=1e-2),
    "float32": Tolerances(correct=1e-4, kinks=3e-2, wrong=1e-1),
    "float16": Tolerances(correct=1e-2, kinks=1e-1, wrong=3e-1),
    "bfloat16": Tolerances(correct=1e-2, kinks=1e-1, wrong=3e-1),
}


def tolerances_for(dtype: Any) -> Tolerances:
    """The thresholds for checks evaluated in ``dtype``."""
    name = str(np.dtype(dtype))
    name = {"complex128": "float64", "complex64": "float32"}.get(name, name)
    try:
        return TOLERANCES[name]
    except KeyError:
        raise ValueError(
            f"No tolerances for dtype {name}; expected one of {sorted(TOLERANCES)}."
        ) from None


MEANING = {
    Verdict.CORRECT: (
        "the analytic gradient matches centered finite differences as closely as "
        "a correct gradient does."
    ),
    Verdict.KINKS: (
        "the gradient matches, except at coordinates where the ±ε step crosses a "
        "kink (ReLU at 0, abs, max, sort ties); there the analytic value is a valid "
        "one-sided derivative, and those coordinates are listed and excluded."
    ),
    Verdict.UNRESOLVED: (
        "no disagreement was found, but some leaf's gradient is too small for "
        "finite differences at this precision to confirm it; see the notes."
    ),
    Verdict.SUSPECT: (
        "the analytic gradient differs from finite differences by more than their "
        "noise allows, but by less than 1e-2: often a subtle bug (a wrong "
        "constant, a missing small term) or a numerically fragile loss."
    ),
    Verdict.WRONG: (
        "the analytic gradient is probably wrong: it differs from finite "
        "differences by more than 1e-2."
    ),
}


_RANDOM = (
    "fn gives different values at the same point, so the finite differences "
    "measure its randomness, not its slope; make the randomness depend on the "
    "key (see the note) and check again."
)


def _index_str(index: tuple[int, ...], part: str | None) -> str:
    text = "[" + ", ".join(str(i) for i in index) + "]" if index else "[]"
    return f"{text}.{part}" if part else text


def _path_str(path: str) -> str:
    return path or "(root)"


@dataclasses.dataclass(frozen=True)
class Coordinate:
    """One checked coordinate.

    Attributes:
        path: pytree path of the leaf, as ``jax.tree_util.keystr`` writes it.
        index: index of the entry inside the leaf.
        analytic: the analytic derivative (``jax.grad``).
        numerical: the centered finite difference.
        part: "real" or "imag" for a complex leaf, else None.
        step: the ε used for this coordinate.
        column: for a second derivative, the coordinate (or direction) it is
            taken along; the entry is then the Hessian's (row, column).
        output: for a vector-valued function, the output entry (or cotangent)
            the derivative belongs to.
    """

    path: str
    index: tuple[int, ...]
    analytic: float
    numerical: float
    part: str | None = None
    step: float = float("nan")
    column: str | None = None
    output: str | None = None

    @property
    def abs_error(self) -> float:
        return abs(self.analytic - self.numerical)

    @property
    def rel_error(self) -> float:
        denom = abs(self.analytic) + abs(self.numerical)
        return self.abs_error / denom if denom else 0.0

    @property
    def location(self) -> str:
        where = _path_str(self.path) + _index_str(self.index, self.part)
        if self.column is not None:
            where += f" × {self.column}"
        if self.output is not None:
            where = f"{self.output} wrt {where}"
        return where

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "index": list(self.index),
            "part": self.part,
            "column": self.column,
            "output": self.output,
            "analytic": self.analytic,
            "numerical": self.numerical,
            "abs_error": self.abs_error,
            "rel_error": self.rel_error,
            "step": self.step,
        }


@dataclasses.dataclass(frozen=True)
class Direction:
    """One random direction checked: ``⟨g, v⟩`` against its finite difference.

    Attributes:
        path: the leaf the direction lies in, or "(all leaves)".
        start: first coordinate of its support, counted inside the leaf's
            flattened real layout.
        stop: one past its last coordinate.
        seed: the seed ``v`` was drawn from (±1/√m entries on the support).
        analytic: ``⟨g, v⟩``, with g from ``jax.grad``.
        numerical: the centered difference along ``v``.
        step: the step along ``v``.
        status: "agrees", "disagrees" (confirmed at two steps), "kink" or
            "unresolved".
    """

    path: str
    start: int
    stop: int
    seed: int
    analytic: float
    numerical: float
    step: float
    status: str

    @property
    def rel_error(self) -> float:
        """``|d_num − d| / (|d_num| + |d|)``."""
        denom = abs(self.analytic) + abs(self.numerical)
        return abs(self.analytic - self.numerical) / denom if denom else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rel_error"] = self.rel_error
        return d


@dataclasses.dataclass(frozen=True)
class LeafReport:
    """The check of one leaf.

    Attributes:
        path: pytree path, as ``jax.tree_util.keystr`` writes it.
        shape: the leaf's shape.
        dtype: the caller's dtype of the leaf.
        size: number of real coordinates (complex entries count twice).
        checked: how many of them were compared one by one.
        relative_error: ``‖g_num − g‖ / (‖g_num‖ + ‖g‖)`` over the compared
            coordinates of this leaf, kinks excluded.
        resolution: the relative error finite-difference noise alone could
            produce here; errors below it cannot be seen.
        verdict: this leaf's verdict.
        kinks: compared coordinates that cross a kink.
        disagreeing: coordinates whose disagreement was confirmed at two steps.
        note: what the numbers suggest, in words (may be empty).
        directions: random directions checked inside this leaf.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    size: int
    checked: int
    relative_error: float
    resolution: float
    verdict: Verdict
    kinks: int = 0
    disagreeing: int = 0
    note: str = ""
    directions: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["verdict"] = self.verdict.value
        return d


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """Everything a gradient check found.

    Attributes:
        verdict: the worst leaf verdict, or SUSPECT when ``fn`` proved not to be
            deterministic.
        passed: True for CORRECT and KINKS.
        relative_error: ``‖g_num − g‖₂ / (‖g_num‖₂ + ‖g‖₂)`` over every compared
            coordinate, kinks excluded.
        leaves: one entry per checked leaf.
        worst: the coordinates with the largest disagreement, worst first.
        kinks: coordinates where the ±ε step crosses a kink.
        directions: the random directions checked (directional mode), those
            that disagree first.
        unchecked: ``(path, reason)`` for leaves that were left alone.
        eps: the base step; with ``step_rule == "relative"`` each coordinate
            uses ``eps * max(|θᵢ|, 1)``.
        step_rule: "relative" (the default) or "absolute" (an explicit eps).
        dtype: the dtype the check was evaluated in.
        given_dtypes: the caller's dtypes of the checked leaves.
        mode: what was checked: "full" (every coordinate), "sample",
            "directional", or "directional+sample" (what "auto" does for
            large models).
        evaluations: loss evaluations, padding and repeats included.
        seconds: wall time of the whole check.
        compile_seconds: of which spent compiling.
        loss: the loss at the checked point.
        nondeterminism: the largest difference between repeated evaluations of
            the loss at the same point (0 for a deterministic ``fn``).
        deterministic: False when that difference is more than round-off (or
            ``nondet_tol``) allows; the finite differences then measure the
            randomness, and the verdict cannot be read as a statement about
            the gradient.
        notes: remarks that qualify the verdict.
        tolerances: the thresholds the verdict used.
        parts: for checks of several things at once (forward and reverse
            mode, second order, several outputs), a labelled report for each;
            the verdict is the worst of them, and the other fields describe the
            first.
    """

    verdict: Verdict
    passed: bool
    relative_error: float
    leaves: tuple[LeafReport, ...]
    worst: tuple[Coordinate, ...]
    kinks: tuple[Coordinate, ...]
    directions: tuple[Direction, ...]
    unchecked: tuple[tuple[str, str], ...]
    eps: float
    step_rule: str
    dtype: str
    given_dtypes: tuple[str, ...]
    mode: str
    evaluations: int
    seconds: float
    compile_seconds: float
    loss: float
    nondeterminism: float
    notes: tuple[str, ...]
    tolerances: Tolerances
    parts: tuple[tuple[str, GradCheckReport], ...] = ()
    deterministic: bool = True

    @property
    def checked(self) -> int:
        return sum(leaf.checked for leaf in self.leaves)

    @property
    def size(self) -> int:
        return sum(leaf.size for leaf in self.leaves)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary of the report."""
        d = {
            "verdict": self.verdict.value,
            "passed": self.passed,
            "relative_error": self.relative_error,
            "leaves": [leaf.to_dict() for leaf in self.leaves],
            "worst": [c.to_dict() for c in self.worst],
            "kinks": [c.to_dict() for c in self.kinks],
            "directions": [d.to_dict() for d in self.directions],
            "unchecked": [{"path": p, "reason": r} for p, r in self.unchecked],
            "eps": self.eps,
            "step_rule": self.step_rule,
            "dtype": self.dtype,
            "given_dtypes": list(self.given_dtypes),
            "mode": self.mode,
            "checked": self.checked,
            "size": self.size,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "compile_seconds": self.compile_seconds,
            "loss": self.loss,
            "nondeterminism": self.nondeterminism,
            "deterministic": self.deterministic,
            "notes": list(self.notes),
            "tolerances": dataclasses.asdict(self.tolerances),
            "parts": [
                {"label": label, "report": part.to_dict()} for label, part in self.parts
            ],
        }
        return json.loads(json.dumps(d, default=_json_default))

    def __str__(self) -> str:
        return render(self)

    def __repr__(self) -> str:
        """A one-line summary; ``str(report)`` is the full table.

        Kept short so that a failing ``assert report.passed`` in a test, or a
        report shown in a list, does not print every leaf and coordinate.

        Example:
            >>> import jax.numpy as jnp
            >>> import jaxcheck as jc
            >>> jc.check_grads(lambda w: jnp.sum(w**2), jnp.ones(3))
            GradCheckReport(CORRECT, relative error 0, 3 of 3 coordinates, mode full)
        """
        where = ""
        if self.worst and not self.passed:
            where = f", worst at {self.worst[0].location}"
        return (
            f"GradCheckReport({self.verdict.name}, relative error "
            f"{_fmt(self.relative_error)}, {self.checked:,} of {self.size:,} "
            f"coordinates, mode {self.mode}{where})"
        )

    def summary(self) -> str:
        """The verdict and the worst coordinate, in one line.

        Example:
            >>> import jax.numpy as jnp
            >>> import jaxcheck as jc
            >>> jc.check_grads(lambda w: jnp.sum(w**2), jnp.ones(2)).summary()
            'CORRECT (relative error 0)'
        """
        line = f"{self.verdict.name} (relative error {_fmt(self.relative_error)})"
        if self.worst and not self.passed:
            c = self.worst[0]
            line += (
                f" at {c.location}: analytic {c.analytic:+.6e}, numerical "
                f"{c.numerical:+.6e}"
            )
        return line


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if not np.isfinite(x):
        return str(x)
    return f"{x:.2e}"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render(report: GradCheckReport, max_leaves: int = 40) -> str:
    """A readable, plain-text rendering of a report."""
    r = report
    given = ", ".join(sorted(set(r.given_dtypes)))
    dtype = r.dtype if given == r.dtype else f"{r.dtype} (parameters given as {given})"
    n_dirs = sum(leaf.directions for leaf in r.leaves)
    n_dirs += sum(1 for d in r.directions if d.path == "(all leaves)")
    dirs = f" and {n_dirs:,} directions" if n_dirs else ""
    head = [
        f"jaxcheck: {r.verdict.name} (relative error {_fmt(r.relative_error)})",
        f"  {r.checked:,} of {r.size:,} coordinates{dirs} checked, mode {r.mode}, "
        f"{dtype}",
    ]

    if r.parts:
        head += ["", "  what was checked:"]
        rows = [["part", "verdict", "rel. error", "worst"]]
        for label, part in r.parts:
            worst = part.worst[0].location if part.worst else ""
            rows.append([label, part.verdict.name, _fmt(part.relative_error), worst])
        head += _table(rows, right={2})
        if len(r.parts) > 1:
            head += ["", f"  {r.parts[0][0]}, in detail:"]

    checked = "checked"
    if r.directions:
        checked = "coords+dirs"
    rows = [["leaf", "shape", checked, "rel. error", "resolution", "verdict", ""]]
    for leaf in r.leaves[:max_leaves]:
        count = f"{leaf.checked:,}"
        if r.directions:
            count += f"+{leaf.directions}"
        rows.append(
            [
                _path_str(leaf.path),
                str(leaf.shape),
                count,
                _fmt(leaf.relative_error),
                _fmt(leaf.resolution),
                leaf.verdict.name,
                leaf.note,
            ]
        )
    body = ["", *_table(rows, right={2, 3, 4})]
    if len(r.leaves) > max_leaves:
        hidden = r.leaves[max_leaves:]
        bad = [x for x in hidden if not x.verdict.passed]
        body.append(f"  ... {len(hidden)} more leaves ({len(bad)} not passing)")
        for leaf in bad[:10]:
            body.append(
                f"  {_path_str(leaf.path)}: {leaf.verdict.name}, "
                f"relative error {_fmt(leaf.relative_error)} {leaf.note}".rstrip()
            )

    if r.worst:
        body += ["", "  worst coordinates (largest |analytic − numerical| first):"]
        rows = [["where", "analytic", "numerical", "abs. error", "rel. error"]]
        for c in r.worst:
            rows.append(
                [
                    c.location,
                    f"{c.analytic:+.6e}",
                    f"{c.numerical:+.6e}",
                    _fmt(c.abs_error),
                    _fmt(c.rel_error),
                ]
            )
        body += _table(rows, right={1, 2, 3, 4})

    failing = [d for d in r.directions if d.status != "agrees"]
    if failing:
        body += ["", "  directions that do not agree (support inside the leaf):"]
        rows = [["leaf", "support", "⟨g, v⟩", "numerical", "rel. error", "status"]]
        for d in failing[:8]:
            rows.append(
                [
                    _path_str(d.path),
                    f"[{d.start}:{d.stop}]",
                    f"{d.analytic:+.6e}",
                    f"{d.numerical:+.6e}",
                    _fmt(d.rel_error),
                    d.status,
                ]
            )
        body += _table(rows, right={2, 3, 4})

    if r.kinks:
        shown = ", ".join(c.location for c in r.kinks[:8])
        more = f" and {len(r.kinks) - 8} more" if len(r.kinks) > 8 else ""
        body += [
            "",
            f"  kinks: {len(r.kinks)} coordinate(s) where ±ε crosses a kink, "
            f"excluded from the verdict: {shown}{more}",
        ]
    if r.unchecked:
        shown = ", ".join(f"{_path_str(p)} ({why})" for p, why in r.unchecked[:8])
        more = f" and {len(r.unchecked) - 8} more" if len(r.unchecked) > 8 else ""
        body += ["", f"  not checked: {shown}{more}"]
    for note in r.notes:
        body += ["", f"  note: {note}"]
    for label, part in r.parts[1:]:
        if part.passed or not part.worst:
            continue
        body += ["", f"  {label}, worst entries:"]
        rows = [["where", "analytic", "numerical", "rel. error"]]
        for c in part.worst[:5]:
            rows.append(
                [
                    c.location,
                    f"{c.analytic:+.6e}",
                    f"{c.numerical:+.6e}",
                    _fmt(c.rel_error),
                ]
            )
        body += _table(rows, right={1, 2, 3})

    step = (
        f"eps {r.eps:.2e} × max(|θ|, 1)"
        if r.step_rule == "relative"
        else f"eps {r.eps:.2e}"
    )
    tail = [
        "",
        f"  {step} · {r.evaluations:,} loss evaluations · {r.seconds:.2f} s "
        f"(compile {r.compile_seconds:.2f} s) · loss {r.loss:.6g}",
        f"  {r.verdict.name}: {MEANING[r.verdict] if r.deterministic else _RANDOM}",
    ]
    return "\n".join(head + body + tail)


class GradCheckError(AssertionError):
    """Raised by ``assert_grads`` when a check does not pass.

    Attributes:
        report: the full ``GradCheckReport``.
    """

    def __init__(self, report: GradCheckReport):
        super().__init__(f"{report.summary()}\n{report}")
        self.report = report

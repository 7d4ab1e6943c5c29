"""From finite-difference evidence to per-coordinate status and per-leaf verdicts.

The rules, for each checked coordinate i with analytic derivative gᵢ:

1. **Screen.** The centered difference cᵢ at step hᵢ is compared with gᵢ. The
   difference is expected to be within ``SIGNIFICANCE`` times the round-off
   noise σᵢ of the difference (σᵢ ≈ u·|J| / 2hᵢ, plus any measured
   non-determinism of ``fn``), plus the dtype's "correct" relative tolerance.
   Coordinates outside that are *candidates*.
2. **Confirm.** Each candidate is evaluated again at hᵢ/4:

   * if the new difference agrees with gᵢ, the first disagreement was
     truncation error or a kink just inside hᵢ: the coordinate *agrees*;
   * if gᵢ lies between the one-sided differences at both steps, and their gap
     does not shrink with the step as it would for a smooth function, the
     step crosses a *kink* (ReLU at 0, abs, max, sort ties) and the analytic
     value is a valid one-sided derivative;
   * if both steps give the same difference and gᵢ is far from it, the
     coordinate *disagrees* — this is the evidence a gradient is wrong;
   * otherwise the two steps disagree with each other: the finite difference
     is too noisy there and the coordinate is *unresolved*.

3. **Judge each leaf** from its relative error, its confirmed disagreements and
   the relative error its noise alone could produce (its resolution).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcheck.report import Tolerances, Verdict

AGREES, DISAGREES, KINK, UNRESOLVED = 0, 1, 2, 3

# A difference is significant beyond this many noise standard deviations.
SIGNIFICANCE = 6.0
# The step used to confirm a candidate, as a fraction of the first step.
REFINE = 0.25
# A smooth function's one-sided gap shrinks like the step (by 4 for REFINE);
# a kink's does not. Gaps that shrink by less than this factor mean a kink.
KINK_SHRINK = 2.5
# One-sided differences of agreeing coordinates that differ by more than this
# fraction of the gradient's scale are looked at again, in case of a kink.
KINK_SCREEN = 0.05
# A leaf whose unresolved coordinates outnumber its confirmed disagreements
# by this factor is judged too noisy rather than wrong.
NOISY_LEAF = 3


@dataclasses.dataclass(frozen=True)
class Evidence:
    """Loss values around θ for a set of coordinates at one step each.

    All arrays are float64 and aligned with the coordinates.
    """

    up: np.ndarray  # (θᵢ + h) − θᵢ, exactly as represented
    down: np.ndarray  # θᵢ − (θᵢ − h)
    f_plus: np.ndarray
    f_minus: np.ndarray
    f_base: np.ndarray  # J(θ) from the same compiled function
    delta_f: np.ndarray  # noise of one loss value

    @property
    def central(self) -> np.ndarray:
        return (self.f_plus - self.f_minus) / (self.up + self.down)

    @property
    def right(self) -> np.ndarray:
        return (self.f_plus - self.f_base) / self.up

    @property
    def left(self) -> np.ndarray:
        return (self.f_base - self.f_minus) / self.down

    @property
    def sigma(self) -> np.ndarray:
        """Noise of the centered difference."""
        return self.delta_f / (self.up + self.down)

    @property
    def sigma_one_sided(self) -> np.ndarray:
        return self.delta_f / np.minimum(self.up, self.down)

    @property
    def finite(self) -> np.ndarray:
        return np.isfinite(self.f_plus) & np.isfinite(self.f_minus)

    def take(self, mask: np.ndarray) -> Evidence:
        return Evidence(
            *(getattr(self, f.name)[mask] for f in dataclasses.fields(self))
        )


def tolerance(ev: Evidence, g: np.ndarray, rtol: np.ndarray) -> np.ndarray:
    """How far the centered difference may be from ``g`` without suspicion.

    ``rtol`` is the relative error a correct gradient reaches in the dtype of
    each coordinate (``Tolerances.correct``).
    """
    c = ev.central
    return SIGNIFICANCE * ev.sigma + rtol * (np.abs(g) + np.abs(c))


def screen(
    ev: Evidence, g: np.ndarray, rtol: np.ndarray, leaf_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates that need a second look: (disagreeing, possible kinks).

    A coordinate disagrees when its centered difference is outside
    ``tolerance``. It may cross a kink, even though it agrees, when its one-sided
    differences differ by more than ``KINK_SCREEN`` of the gradient's scale in
    its leaf: a smooth loss would need a huge curvature for that at this step.
    """
    error = np.abs(ev.central - g)
    disagrees = ~(error <= tolerance(ev, g, rtol))  # NaN counts as disagreeing
    gap = np.abs(ev.right - ev.left)
    scale = np.abs(ev.right) + np.abs(ev.left) + leaf_scale
    kinky = (
        ~disagrees
        & (gap > KINK_SCREEN * scale)
        & (gap > SIGNIFICANCE * ev.sigma_one_sided)
    )
    return disagrees, kinky


def _between(g, a, b, slack):
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return (g >= lo - slack) & (g <= hi + slack)


def confirm(
    first: Evidence, second: Evidence, g: np.ndarray, rtol: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Status, best numerical value and noise of candidates seen at two steps."""
    c1, c2 = first.central, second.central
    status = np.full(len(g), UNRESOLVED, dtype=np.int8)
    numerical = c2.copy()
    noise = np.maximum(second.sigma, np.abs(c1 - c2) / SIGNIFICANCE)

    finite = first.finite & second.finite
    agrees = finite & (np.abs(c2 - g) <= tolerance(second, g, rtol))

    # A one-sided difference is off by about J''·h/2 on a smooth side; how much
    # it moves between the two steps measures that, and widens the interval.
    curvature = np.abs(first.left - second.left) + np.abs(first.right - second.right)
    slack1 = SIGNIFICANCE * first.sigma_one_sided + rtol * np.abs(g) + 2 * curvature
    slack2 = SIGNIFICANCE * second.sigma_one_sided + rtol * np.abs(g) + curvature
    gap1 = np.abs(first.right - first.left)
    gap2 = np.abs(second.right - second.left)
    kink = (
        finite
        & _between(g, first.left, first.right, slack1)
        & _between(g, second.left, second.right, slack2)
        & (gap2 > SIGNIFICANCE * second.sigma_one_sided)
        & (gap1 < KINK_SHRINK * gap2)
    )
    stable = np.abs(c1 - c2) <= 0.5 * np.abs(c2 - g)
    disagrees = finite & ~agrees & ~kink & stable

    status[agrees] = AGREES
    status[disagrees] = DISAGREES
    status[kink] = KINK
    numerical[kink] = c1[kink]
    settled = (agrees | disagrees) & ~kink
    noise[settled] = second.sigma[settled]
    return status, numerical, noise


def _norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(x)))) if len(x) else 0.0


def relative_error(numerical: np.ndarray, analytic: np.ndarray) -> float:
    """``‖g_num − g‖₂ / (‖g_num‖₂ + ‖g‖₂)``, 0 where both are zero."""
    denom = _norm(numerical) + _norm(analytic)
    return _norm(numerical - analytic) / denom if denom else 0.0


@dataclasses.dataclass(frozen=True)
class LeafJudgement:
    verdict: Verdict
    relative_error: float
    resolution: float
    kinks: int
    disagreeing: int
    unresolved: int
    note: str


def judge_leaf(
    g: np.ndarray,
    numerical: np.ndarray,
    noise: np.ndarray,
    status: np.ndarray,
    tol: Tolerances,
    shape: tuple[int, ...] | None,
    directional: np.ndarray | None = None,
) -> LeafJudgement:
    """The verdict of one leaf from the evidence of its probes.

    ``directional`` marks the probes that are directions rather than single
    coordinates, so that the note counts each kind by its own name.
    """
    keep = status != KINK
    gk, ck = g[keep], numerical[keep]
    finite = np.isfinite(ck)
    err = relative_error(ck[finite], gk[finite])
    scale = _norm(ck[finite]) + _norm(gk[finite])
    resolution = SIGNIFICANCE * _norm(noise[keep][finite]) / scale if scale else 0.0
    kinks = int(np.sum(status == KINK))
    bad = status == DISAGREES
    n_bad = int(np.sum(bad))
    n_unresolved = int(np.sum(status == UNRESOLVED))
    note = describe(g[keep], numerical[keep], shape if keep.all() else None)

    if n_bad:
        rel = np.abs(numerical[bad] - g[bad]) / (
            np.abs(numerical[bad]) + np.abs(g[bad])
        )
        worst = max(err, float(np.max(rel)))
        verdict = Verdict.WRONG if worst > tol.wrong else Verdict.SUSPECT
        if not note:
            note = _count_disagreeing(bad, directional)
    elif not finite.all():
        verdict = Verdict.UNRESOLVED
        note = f"the loss is not finite at θ±ε for {int(np.sum(~finite))} entries"
    elif err <= tol.correct:
        verdict = Verdict.KINKS if kinks else Verdict.CORRECT
        note = ""
    elif err <= tol.kinks:
        # No coordinate disagrees at two steps: the small error is noise or
        # truncation, and the leaf is resolved to better than tol.kinks.
        verdict = Verdict.KINKS if kinks else Verdict.CORRECT
        note = f"agrees to {err:.0e}, the finite-difference noise here"
    else:
        verdict = Verdict.UNRESOLVED
        note = (
            f"gradient too small to resolve: the finite-difference noise is "
            f"{resolution:.0e} of its size"
        )
    return LeafJudgement(verdict, err, resolution, kinks, n_bad, n_unresolved, note)


def describe(g: np.ndarray, c: np.ndarray, shape: tuple[int, ...] | None) -> str:
    """A short guess at what is wrong when a leaf's gradient disagrees."""
    gn, cn = _norm(g), _norm(c)
    if cn == 0 or relative_error(c, g) < 1e-3:
        return ""
    if gn == 0:
        return "analytic gradient is zero"
    alpha = float(np.dot(g, c) / np.dot(c, c))
    residual = _norm(g - alpha * c) / gn
    if residual < 1e-3:
        if abs(alpha + 1) < 1e-3:
            return "sign flipped"
        return f"scaled by {alpha:.4g}"
    if shape is not None and len(shape) == 2 and shape[0] == shape[1]:
        ct = c.reshape(shape).T.reshape(-1)
        if relative_error(ct, g) < 1e-3:
            return "transposed"
    return ""


def _count_disagreeing(bad: np.ndarray, directional: np.ndarray | None) -> str:
    """'k of n entries (and j of m directions) disagree', confirmed ones only."""
    if directional is None:
        directional = np.zeros(len(bad), bool)
    parts = []
    for mask, noun in ((~directional, "entries"), (directional, "directions")):
        if mask.any():
            parts.append(f"{int(np.sum(bad & mask))} of {int(np.sum(mask))} {noun}")
    return " and ".join(parts) + " disagree"

"""Measuring one method: repeated timing, peak memory, and the row it produces.

Every method of ``run.py`` is measured the same way: a sampler thread records
the resident set size of the process while the method runs (warm-up and timed
runs together), and the method returns a ``Result``, one row of a table.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

MB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")
# Runs are repeated until both counts are reached: at least ``repeats`` runs
# and ``min_time`` seconds of timed work, but never more than this many runs.
MAX_RUNS = 21


def busy_seconds() -> float:
    """CPU seconds all processes of the machine have spent busy, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICKS


def own_seconds() -> float:
    """CPU seconds this process has used (user and system, all threads)."""
    t = os.times()
    return t.user + t.system


def rss_bytes() -> int:
    """The resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """Samples the process RSS in a background thread while the block runs.

    It also records how busy the machine was meanwhile: the CPU time other
    processes used, as a number of cores, and the load average at the end.

    Attributes:
        before: RSS when the block was entered, in bytes.
        peak: the largest RSS seen inside the block, in bytes.
        others_cores: CPU seconds used by other processes per wall second.
        load: the 1-minute load average when the block ended.

    Example:
        >>> with PeakRSS() as mem:
        ...     data = bytearray(50 << 20)
        >>> mem.delta_mb >= 0
        True
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.before = 0
        self.peak = 0
        self.others_cores = float("nan")
        self.load = float("nan")
        self._start = (0.0, 0.0, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.before = rss_bytes()
        self.peak = self.before
        self._start = (time.perf_counter(), busy_seconds(), own_seconds())
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        wall, busy, own = (
            now - then
            for now, then in zip(
                (time.perf_counter(), busy_seconds(), own_seconds()),
                self._start,
                strict=True,
            )
        )
        self.others_cores = max(busy - own, 0.0) / wall if wall > 0 else 0.0
        self.load = os.getloadavg()[0]

    @property
    def delta_mb(self) -> float:
        """Peak above the RSS before the block, in MB."""
        return (self.peak - self.before) / MB

    @property
    def peak_mb(self) -> float:
        """The absolute peak, in MB."""
        return self.peak / MB


@dataclasses.dataclass
class Timing:
    """The timed runs of a method after its warm-up.

    Attributes:
        seconds: the wall time of each timed run.
        values: what each run returned.
    """

    seconds: list[float]
    values: list[Any]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """Slowest over fastest run."""
        return max(self.seconds) / min(self.seconds) if min(self.seconds) else 1.0


def repeat(
    run: Callable[[], tuple[float, Any]],
    repeats: int,
    min_time: float,
    max_time: float = float("inf"),
) -> Timing:
    """Calls ``run`` until it ran ``repeats`` times and for ``min_time`` seconds.

    Args:
        run: returns ``(seconds, value)``: the time the run counts for (so a
            method can leave out part of its own work, such as compilation)
            and whatever it wants to keep.
        repeats: the least number of runs.
        min_time: the least total of the returned seconds; cheap methods are
            run more often (up to ``MAX_RUNS``) so their median is steadier.
        max_time: once the returned seconds add up to this, no further run
            starts, even below ``repeats``; it keeps slow methods practical.

    Returns:
        The seconds and values of every run.
    """
    timing = Timing([], [])
    while len(timing.seconds) < MAX_RUNS and (
        len(timing.seconds) < repeats or sum(timing.seconds) < min_time
    ):
        if timing.seconds and sum(timing.seconds) >= max_time:
            break
        seconds, value = run()
        timing.seconds.append(seconds)
        timing.values.append(value)
    return timing


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """``(wall seconds, result)`` of one call."""
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


@dataclasses.dataclass
class Result:
    """One row: one method measured on one workload.

    Attributes:
        workload: "W1" ... "W5".
        method: the method's name (see ``run.METHODS``).
        checked: coordinates (or directions, see ``unit``) checked in one run.
        unit: "coords" or "directions".
        seconds: median wall time of a warm run, compilation excluded; for an
            extrapolated row, the estimate for every coordinate.
        extrapolated: ``seconds`` and the rate were estimated from a subset
            of ``subset`` coordinates.
        subset: coordinates actually checked when extrapolated.
        runs: timed runs behind the median.
        spread: slowest over fastest timed run.
        cold_seconds: the first call, compilation included.
        compile_seconds: compilation (see the README for each method's
            definition).
        evaluations: loss evaluations in one run.
        rss_delta_mb: peak RSS above the RSS before the method started.
        rss_peak_mb: the absolute peak RSS while the method ran.
        others_cores: CPU used by other processes while the method ran, in
            cores (of ``os.cpu_count()``).
        load: the 1-minute load average when the method ended (it counts
            this process's threads too).
        rel_error: ``‖g_num − g‖ / (‖g_num‖ + ‖g‖)`` as the method reports or
            as computed here (for M2, its projection's relative difference).
        outcome: the method's own verdict: a jaxcheck verdict, "passes",
            "fails", or what went wrong.
        notes: remarks printed under the table.
        skipped: why the method did not run, or "".
    """

    workload: str
    method: str
    checked: int | None = None
    unit: str = "coords"
    seconds: float | None = None
    extrapolated: bool = False
    subset: int | None = None
    runs: int = 0
    spread: float | None = None
    cold_seconds: float | None = None
    compile_seconds: float | None = None
    evaluations: int | None = None
    rss_delta_mb: float | None = None
    rss_peak_mb: float | None = None
    others_cores: float | None = None
    load: float | None = None
    rel_error: float | None = None
    outcome: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: str = ""

    @property
    def rate(self) -> float | None:
        """Checked coordinates (or directions) per second."""
        if self.checked is None or not self.seconds:
            return None
        return self.checked / self.seconds

    def record_memory(self, mem: PeakRSS) -> None:
        self.rss_delta_mb = mem.delta_mb
        self.rss_peak_mb = mem.peak_mb
        self.others_cores = mem.others_cores
        self.load = mem.load

    def record_timing(self, timing: Timing) -> None:
        self.seconds = timing.median
        self.runs = len(timing.seconds)
        self.spread = timing.spread

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rate"] = self.rate
        return d

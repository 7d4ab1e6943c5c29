"""The memory of a full check of a large model, started and stopped early.

A full check of the 10-million-parameter workload W5 would take many hours
on a CPU, but its memory is set by its first chunks: every chunk has the same
size, chosen from ``memory_budget``. ``measure`` starts such a check in a
child process, samples the child's resident set size from outside, and stops
the child after a fixed time; the tqdm progress the child prints says how far
it got, from which the time for every coordinate is estimated.

Run by ``run.py``; by hand::

    python benchmarks/memory.py W5 --seconds 20 --budget 268435456
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

MB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PROGRESS = re.compile(r"(\d+)/(\d+)")


@dataclasses.dataclass
class Memory:
    """A full check run for a fixed time in a child process.

    Attributes:
        workload: "W1" ... "W5".
        budget: the ``memory_budget`` passed, in bytes (None: jaxcheck's
            default, derived from the machine).
        default_budget: jaxcheck's default budget on this machine, in bytes.
        seconds: how long the check ran before it was stopped (or finished).
        finished: whether the check ended by itself.
        ready_mb: the child's RSS after building the model, before the check
            started.
        peak_mb: the child's largest RSS while the check ran.
        done: loss evaluations done when it was stopped (from the progress).
        total: loss evaluations of the whole check (from the progress).
        load: the 1-minute load average when it was stopped.
        error: what went wrong, or "".
    """

    workload: str
    budget: int | None
    default_budget: int = 0
    seconds: float = 0.0
    finished: bool = False
    ready_mb: float = float("nan")
    peak_mb: float = float("nan")
    done: int = 0
    total: int = 0
    load: float = float("nan")
    error: str = ""

    @property
    def check_mb(self) -> float:
        """Peak above the RSS before the check: what the check itself used."""
        return self.peak_mb - self.ready_mb

    @property
    def estimate_seconds(self) -> float | None:
        """The time every evaluation would take at the rate reached."""
        if not self.done or not self.total:
            return None
        return self.seconds * self.total / self.done


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE / MB
    except (OSError, ValueError, IndexError):
        return float("nan")


def measure(workload: str, budget: int | None, seconds: float) -> Memory:
    """Runs a full check of ``workload`` in a child for ``seconds``.

    Args:
        workload: the key of a workload in ``workloads.WORKLOADS``.
        budget: ``memory_budget`` in bytes, or None for jaxcheck's default.
        seconds: when to stop the check if it has not finished.

    Returns:
        A ``Memory``.
    """
    result = Memory(workload, budget)
    command = [sys.executable, __file__, "--child", workload]
    if budget is not None:
        command += ["--budget", str(budget)]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"jaxcheck-memory-{os.getpid()}"
    with open(log, "w+") as err:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1
        )
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        if len(ready) != 2 or ready[0] != "ready":
            child.kill()
            child.wait()
            err.seek(0)
            result.error = (err.read().strip().splitlines() or ["no output"])[-1]
            return result
        result.default_budget = int(ready[1])
        result.ready_mb = _rss_mb(child.pid)
        peak = result.ready_mb
        start = time.perf_counter()
        while child.poll() is None and time.perf_counter() - start < seconds:
            peak = max(peak, _rss_mb(child.pid))
            time.sleep(0.01)
        result.seconds = time.perf_counter() - start
        result.finished = child.poll() is not None
        result.load = os.getloadavg()[0]
        if not result.finished:
            child.kill()
        child.wait()
        result.peak_mb = peak
        err.seek(0)
        found = _PROGRESS.findall(err.read())
    log.unlink(missing_ok=True)
    if found:
        result.done, result.total = (int(x) for x in found[-1])
    return result


def _child(workload: str, budget: int | None) -> None:
    """Builds the model, says "ready", and runs the full check."""
    from workloads import WORKLOADS

    import jaxcheck
    from jaxcheck.finite_diff import device_memory_budget

    example = WORKLOADS[workload].build()
    print("ready", device_memory_budget(), flush=True)
    jaxcheck.check_grads(
        example.fn,
        example.params,
        *example.args,
        mode="full",
        memory_budget=budget,
        progress=True,
        **example.check_kwargs(),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload")
    p.add_argument("--budget", type=int, help="memory_budget in bytes")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.workload, args.budget)
        return
    print(measure(args.workload, args.budget, args.seconds))


if __name__ == "__main__":
    main()

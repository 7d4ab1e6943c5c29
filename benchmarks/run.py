"""Benchmarks jaxcheck against the alternatives on the same seeded models.

Run by hand from the repository root (never by the test suite)::

    python benchmarks/run.py --quick                  # smoke run, under 2 minutes
    python benchmarks/run.py                          # everything (long)
    python benchmarks/run.py --workloads W1,W4 --methods full,M1,M3
    python benchmarks/run.py --write BENCHMARKS.md    # also write Markdown

Every method runs in this one process on the models of ``workloads.py``: for
each (workload, method) it reports the median warm run time, the cold first
call, compile time, peak memory, the relative error and the time relative to
the naive loop M1. See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from harness import Result
from memory import Memory, measure
from methods import Options, run_check_grads, run_jaxcheck, run_naive_loop
from torch_models import run_gradcheck, torch_version
from workloads import COORDINATE_METHODS, WORKLOADS, Workload, choose_corruption

import jaxcheck
from jaxcheck.models import Example

METHODS: dict[str, str] = {
    "full": "jaxcheck full",
    "sample": "jaxcheck sample",
    "directional": "jaxcheck directional",
    "corrupted": "jaxcheck directional, corrupted entry",
    "M1": "M1 naive jitted loop",
    "M2": "M2 jax check_grads",
    "M3-full": "M3 torch gradcheck",
    "M3-fast": "M3 gradcheck fast_mode",
}
ALIASES: dict[str, tuple[str, ...]] = {
    "all": COORDINATE_METHODS,
    "jaxcheck": ("full", "sample", "directional"),
    "M3": ("M3-full", "M3-fast"),
}
# What --quick runs: W4 whole, and the cheaper rows of W1 with the slow
# baselines limited to a subset of coordinates.
QUICK_WORKLOADS = ("W4", "W1")
QUICK_METHODS = {
    "W1": ("full", "directional", "corrupted", "M1", "M2", "M3-full", "M3-fast"),
}
QUICK_M1_COORDS = 1000
QUICK_TORCH_COORDS = 300
# The memory table: full checks of MEMORY_WORKLOAD with these budgets (None:
# jaxcheck's default), each stopped after MEMORY_SECONDS.
MEMORY_WORKLOAD = "W5"
MEMORY_BUDGETS = (None, 256 << 20)
MEMORY_SECONDS = 40.0
COLUMNS = (
    "method",
    "checked",
    "coords/s",
    "time",
    "runs",
    "cold",
    "compile s",
    "evals",
    "ΔRSS MB",
    "peak RSS MB",
    "rel.err",
    "×M1",
    "others' CPU",
    "load",
    "outcome",
)
LEGEND = """\
- **checked**: coordinates compared in one run (a/b: a of b, the rest
  extrapolated), or random directions ("dir").
- **coords/s**: checked coordinates (or directions) per second of warm run.
- **time**: median wall time of the warm runs, compilation excluded (for
  jaxcheck `report.seconds - report.compile_seconds`); every method's time
  includes its analytic gradient. "~" marks a time extrapolated from a subset.
- **runs**: timed runs behind the median (at least `--repeats`, more for
  cheap methods, up to 21; none starts once they add up to `--max-time`,
  and a jaxcheck check whose first run took longer is timed by it alone).
- **cold**: the first call, compilation included (jaxcheck `report.seconds`,
  M2 its first `check_grads` call).
- **compile s**: jaxcheck `report.compile_seconds` of the first call; M1 and
  M2 the first call minus a warm one; torch compiles nothing.
- **evals**: loss evaluations in one run (jaxcheck `report.evaluations`).
- **ΔRSS MB / peak RSS MB**: the process RSS, sampled every 2 ms while the
  method ran (warm-up and timed runs), peak above the RSS before it started,
  and the absolute peak (which includes earlier methods' memory).
- **rel.err**: ‖g_num − g‖ / (‖g_num‖ + ‖g‖) over the compared coordinates
  (jaxcheck `report.relative_error`, kinks excluded); for M2 the relative
  difference |a − b| / |b| of its single projection, as check_grads prints it.
- **×M1**: time over M1's time on the same workload (below 1: faster).
- **others' CPU**: CPU time other processes used while the method ran, in
  cores (of 2), from /proc/stat less this process's own CPU time. The CPU is
  shared; rows measured while it is well above 0 are slower than they would
  be on an idle machine.
- **load**: the 1-minute load average when the method ended (this process's
  own threads count too).
- **outcome**: jaxcheck's verdict, or whether check_grads / gradcheck passed.

jaxcheck uses its default steps (∛ε·max(|θᵢ|, 1), about 6e-6); the baselines
use eps=1e-6. Everything is float64. Torch runs with one intra-op thread
(`--torch-threads`), which is faster than two on these models."""


# -- running -----------------------------------------------------------------


def _run_one(workload: Workload, example: Example, method: str, opts: Options):
    if method in ("full", "sample", "directional"):
        return run_jaxcheck(workload, example, method, opts)
    if method == "corrupted":
        corruption = choose_corruption(example, opts.corrupt_factor)
        return run_jaxcheck(workload, example, "directional", opts, corruption)
    if method == "M1":
        return run_naive_loop(workload, example, opts)
    if method == "M2":
        return run_check_grads(workload, example, opts)
    return run_gradcheck(workload, example, opts, fast=method == "M3-fast")


def run_method(
    workload: Workload, example: Example, method: str, opts: Options
) -> Result:
    """Measures ``method`` on ``workload``; an error becomes a skipped row."""
    gc.collect()
    jax.clear_caches()
    try:
        return _run_one(workload, example, method, opts)
    except Exception as e:  # one broken method must not lose the others' rows
        return Result(workload.key, method, skipped=f"error: {type(e).__name__}: {e}")


def _warm_up_jax() -> None:
    """Pays JAX's one-time start-up costs before the first method is timed."""
    with jax.enable_x64(True):
        jax.jit(lambda x: jnp.tanh(x) @ x)(jnp.ones((4, 4))).block_until_ready()


# -- formatting --------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def _rate(rate: float) -> str:
    """A rate with at least two significant digits below 100."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.2g}"


def _num(x: float | None, spec: str) -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, spec)


def cells(r: Result, m1: Result | None) -> list[str]:
    """One row of a table, as text."""
    name = METHODS.get(r.method, r.method)
    if r.skipped:
        return [name] + ["–"] * (len(COLUMNS) - 2) + [f"skipped: {r.skipped}"]
    approx = "~" if r.extrapolated else ""
    unit = " dir" if r.unit == "directions" else ""
    if r.extrapolated and r.subset is not None:
        checked = f"{r.subset:,}/{r.checked:,}"
    else:
        checked = _num(r.checked, ",") + unit
    rate = r.rate
    rate_text = "–" if rate is None else f"{approx}{_rate(rate)}{unit}"
    ratio = "–"
    if m1 is not None and not m1.skipped and m1.seconds and r.seconds:
        tilde = "~" if r.extrapolated or m1.extrapolated else ""
        ratio = f"{tilde}{r.seconds / m1.seconds:.3g}"
    return [
        name,
        checked,
        rate_text,
        approx + fmt_time(r.seconds),
        str(r.runs),
        fmt_time(r.cold_seconds),
        _num(r.compile_seconds, ".2f"),
        _num(r.evaluations, ","),
        _num(r.rss_delta_mb, ",.0f"),
        _num(r.rss_peak_mb, ",.0f"),
        _num(r.rel_error, ".1e"),
        ratio,
        _num(r.others_cores, ".2f"),
        _num(r.load, ".1f"),
        r.outcome or "–",
    ]


def _rows(results: Sequence[Result]) -> list[list[str]]:
    m1 = next((r for r in results if r.method == "M1"), None)
    return [cells(r, m1) for r in results]


def text_table(results: Sequence[Result]) -> str:
    """The results of one workload as an aligned plain-text table."""
    rows = [list(COLUMNS), *_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    left = {0, len(COLUMNS) - 1}
    lines = []
    for row in rows:
        parts = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def markdown_table(results: Sequence[Result]) -> str:
    """The results of one workload as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    return "\n".join(lines)


def notes(results: Sequence[Result]) -> list[str]:
    return [n for r in results for n in r.notes]


def heading(workload: Workload, example: Example) -> str:
    return (
        f"{workload.key}: {example.name} ({example.description}), n = {example.size:,}"
    )


def memory_table(rows: Sequence[Memory]) -> str:
    """The early-stopped full checks as a Markdown table."""
    head = (
        "| memory_budget | ran | evaluations done | est. full check | RSS before "
        "MB | peak RSS MB | check's peak MB | load | outcome |"
    )
    lines = [head, "|---" * 9 + "|"]
    for m in rows:
        budget = m.budget if m.budget is not None else m.default_budget
        label = f"{budget / (1 << 20):,.0f} MB" + (
            " (default)" if m.budget is None else ""
        )
        if m.error:
            lines.append(f"| {label} |" + " – |" * 7 + f" error: {m.error} |")
            continue
        done = f"{m.done:,} of {m.total:,}" if m.total else "none reported"
        estimate = m.estimate_seconds
        est = "–" if estimate is None else f"~{estimate / 3600:,.0f} h"
        outcome = "finished" if m.finished else "stopped"
        lines.append(
            f"| {label} | {m.seconds:.0f} s | {done} | {est} | {m.ready_mb:,.0f} | "
            f"{m.peak_mb:,.0f} | {m.check_mb:,.0f} | {m.load:.1f} | {outcome} |"
        )
    return "\n".join(lines)


MEMORY_TEXT = """\
A full check of the 10-million-parameter model would take far too long to
finish here, so each one runs in a child process for a fixed time and is
then stopped; the child's RSS is sampled from outside every 10 ms.
"evaluations done" is what its progress bar had reported by then, and the
estimate scales the time to every evaluation. "check's peak" is the peak
above the RSS before the check started (the model, its data and JAX)."""


# -- the machine ---------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    """git's output in the repository jaxcheck is imported from, or ""."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(jaxcheck.__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.strip()


def machine(torch_threads: int | None = None) -> dict[str, str]:
    """What the numbers were measured on, as label → text."""
    import jaxlib

    ram = _ram_gib()
    torch = torch_version()
    if torch is not None:
        import torch as torch_module

        threads = torch_module.get_num_threads()
        used = torch_threads or threads
        torch += f" (default {threads} threads; M3 runs with {used})"
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--", "."):
        commit += " with uncommitted changes in jaxcheck/"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "RAM": "unknown" if ram is None else f"{ram:.1f} GiB",
        "JAX backend": f"{jax.default_backend()} ({len(jax.devices())} device(s))",
        "Python": platform.python_version(),
        "jax / jaxlib": f"{jax.__version__} / {jaxlib.__version__}",
        "numpy": np.__version__,
        "torch": torch or "not installed (M3 rows skipped)",
        "jaxcheck": f"{jaxcheck.__version__}, commit {commit or 'unknown'}",
        "load average (1, 5, 15 min) at start": load,
    }


# -- the command line ------------------------------------------------------------


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _methods(text: str | None) -> list[str] | None:
    names = _split(text)
    if not names:
        return None
    out: list[str] = []
    for name in names:
        expanded = ALIASES.get(name, (name,))
        for m in expanded:
            if m not in METHODS:
                raise SystemExit(
                    f"Unknown method {m!r}; expected some of {sorted(METHODS)} or "
                    f"{sorted(ALIASES)}."
                )
            if m not in out:
                out.append(m)
    return out


def plan(args: argparse.Namespace) -> list[tuple[Workload, list[str], list[str]]]:
    """``(workload, methods to run, methods asked for but not allowed)``."""
    keys = _split(args.workloads) or list(QUICK_WORKLOADS if args.quick else WORKLOADS)
    unknown = [k for k in keys if k not in WORKLOADS]
    if unknown:
        raise SystemExit(f"Unknown workload(s) {unknown}; expected {list(WORKLOADS)}.")
    asked = _methods(args.methods)
    out = []
    for key in keys:
        w = WORKLOADS[key]
        chosen = asked or list(
            QUICK_METHODS.get(key, w.default) if args.quick else w.default
        )
        run = [m for m in COORDINATE_METHODS if m in chosen and m in w.allowed]
        refused = [m for m in chosen if m not in w.allowed] if asked else []
        out.append((w, run, refused))
    return out


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="methods: "
        + ", ".join(f"{k} ({v})" for k, v in METHODS.items())
        + "; aliases: "
        + ", ".join(f"{k} = {','.join(v)}" for k, v in ALIASES.items()),
    )
    p.add_argument("--workloads", help="comma-separated, e.g. W1,W4 (default: all)")
    p.add_argument("--methods", help="comma-separated method names or aliases")
    p.add_argument("--repeats", type=int, default=3, help="least timed runs (3)")
    p.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        help="least total seconds of timed runs; cheap methods repeat (1.0)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {','.join(QUICK_WORKLOADS)}, baselines on W1 limited to "
        "a subset of coordinates",
    )
    p.add_argument(
        "--m1-coords",
        type=int,
        help="coordinates M1 loops over, the time extrapolated (default: all)",
    )
    p.add_argument(
        "--torch-coords",
        type=int,
        help="coordinates torch's full gradcheck checks, the time extrapolated "
        "(default: all, 2000 on W3; 0 means all)",
    )
    p.add_argument(
        "--corrupt-factor",
        type=float,
        default=1.05,
        help="factor applied to the corrupted gradient entry (1.05)",
    )
    p.add_argument(
        "--max-time",
        type=float,
        default=30.0,
        help="no timed run starts after this many seconds of them (30)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for M3; 0: torch's default (1)",
    )
    p.add_argument(
        "--memory-seconds",
        type=float,
        help="seconds each early-stopped full check of W5 runs for the memory "
        f"table, when W5 is run (default {MEMORY_SECONDS:g}; 0: none)",
    )
    p.add_argument("--write", metavar="PATH", help="write the results as Markdown")
    p.add_argument("--json", metavar="PATH", help="write the raw results as JSON")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def options(args: argparse.Namespace) -> Options:
    m1, torch = args.m1_coords, args.torch_coords
    if args.quick:
        m1 = QUICK_M1_COORDS if m1 is None else m1
        torch = QUICK_TORCH_COORDS if torch is None else torch
    return Options(
        repeats=args.repeats,
        min_time=args.min_time,
        m1_coords=m1,
        torch_coords=torch,
        corrupt_factor=args.corrupt_factor,
        max_time=args.max_time,
        torch_threads=args.torch_threads or None,
    )


def command_line(argv: Sequence[str] | None) -> str:
    words = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python benchmarks/run.py", *words])


def markdown(
    info: dict[str, str],
    sections: list[tuple[str, list[Result]]],
    command: str,
    total: float,
    memory: Sequence[Memory] = (),
) -> str:
    """The whole report as Markdown."""
    lines = [
        "# Benchmarks",
        "",
        "jaxcheck against the alternatives on the same seeded models, all in one "
        "process. M1 is a Python loop of jitted ±ε evaluations over the raveled "
        "parameters, M2 `jax.test_util.check_grads(order=1, modes=['rev'])`, M3 "
        "`torch.autograd.gradcheck` on a float64 torch replica with the same "
        "weights and data.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        f"- total benchmark time: {total:.0f} s",
        "",
        "## How to reproduce",
        "",
        f"`{command}` (from the repository root; see benchmarks/README.md).",
        "",
        "## Columns",
        "",
        LEGEND,
    ]
    for title, results in sections:
        lines += ["", f"## {title}", "", markdown_table(results)]
        extra = notes(results)
        if extra:
            lines += ["", *[f"- {n}" for n in extra]]
    if memory:
        title = f"Memory of a full check of {MEMORY_WORKLOAD}, stopped early"
        lines += ["", f"## {title}", "", MEMORY_TEXT, "", memory_table(memory)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    opts = options(args)
    todo = plan(args)
    info = machine(opts.torch_threads)
    print("\n".join(f"{k}: {v}" for k, v in info.items()))
    _warm_up_jax()

    start = time.perf_counter()
    sections: list[tuple[str, list[Result]]] = []
    for workload, methods, refused in todo:
        example = workload.build()
        title = heading(workload, example)
        print(f"\n{title}", flush=True)
        results = []
        for method in methods:
            print(f"  {method} ...", end="", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            results.append(run_method(workload, example, method, opts))
            print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        for method in refused:
            results.append(
                Result(
                    workload.key,
                    method,
                    skipped=f"not run on {workload.key} (only "
                    f"{', '.join(workload.allowed)})",
                )
            )
        print(text_table(results))
        for n in notes(results):
            print(f"  note: {n}")
        sections.append((title, results))
    memory: list[Memory] = []
    seconds = args.memory_seconds
    if seconds is None:
        seconds = 0.0 if args.quick else MEMORY_SECONDS
    if seconds > 0 and any(w.key == MEMORY_WORKLOAD for w, _, _ in todo):
        print(f"\nfull check of {MEMORY_WORKLOAD}, stopped after {seconds:g} s")
        for budget in MEMORY_BUDGETS:
            memory.append(measure(MEMORY_WORKLOAD, budget, seconds))
        print(memory_table(memory))
    total = time.perf_counter() - start
    print(f"\ntotal {total:.0f} s")

    if args.write:
        text = markdown(info, sections, command_line(argv), total, memory)
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"wrote {args.write}")
    if args.json:
        payload = {
            "machine": info,
            "command": command_line(argv),
            "options": dataclasses.asdict(opts),
            "results": [r.to_dict() for _, rs in sections for r in rs],
            "memory": [dataclasses.asdict(m) for m in memory],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=_json))
        print(f"wrote {args.json}")
    return 0


def _json(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


if __name__ == "__main__":
    sys.exit(main())

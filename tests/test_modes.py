"""Sampled, directional and automatic modes; memory, grouping, devices, progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck import models
from jaxcheck.finite_diff import Engine
from jaxcheck.problem import build
from tests import zoo

ROOT = Path(__file__).resolve().parent.parent


def _one_entry_bug(example, layer, index, factor=1.05):
    def corrupt(g):
        g = [dict(x) for x in g]
        g[layer]["w"] = g[layer]["w"].at[index].multiply(factor)
        return g

    return zoo.corrupt_gradient(example.fn, corrupt)


@pytest.fixture(scope="module")
def mlp():
    return models.mlp_classifier((16, 64, 32, 4), batch=8)


def test_directional_passes_a_correct_model(mlp):
    report = jc.check_grads(mlp.fn, mlp.params, *mlp.args, mode="directional")
    assert report.passed and report.mode == "directional"
    assert report.checked == 0 and report.size == mlp.size
    assert all(leaf.directions == 4 for leaf in report.leaves)
    assert len(report.directions) == 20  # listed: 6 leaves × 4 + 1 whole, capped
    assert report.evaluations < 200


def test_directional_finds_and_locates_one_wrong_entry(mlp):
    bad = _one_entry_bug(mlp, layer=1, index=(37, 5))
    report = jc.check_grads(bad, mlp.params, *mlp.args, mode="directional")
    assert report.verdict is jc.Verdict.WRONG
    assert (report.worst[0].path, report.worst[0].index) == ("[1]['w']", (37, 5))
    assert {d.path for d in report.directions if d.status == "disagrees"} <= {
        "[1]['w']",
        "(all leaves)",
    }
    assert any("bisection" in note for note in report.notes)
    # Bisection costs O(log n) probes, not O(n): far fewer than the 2048 entries.
    assert report.evaluations < 600


def test_directional_without_localisation_still_fails(mlp):
    bad = _one_entry_bug(mlp, layer=1, index=(37, 5))
    report = jc.check_grads(
        bad, mlp.params, *mlp.args, mode="directional", localize=False
    )
    assert not report.passed
    assert report.worst == ()
    assert report.directions[0].status == "disagrees"
    # No coordinate was checked, so the note counts directions, not entries.
    (leaf,) = [leaf for leaf in report.leaves if not leaf.verdict.passed]
    assert leaf.path == "[1]['w']" and leaf.checked == 0
    assert leaf.note.endswith("directions disagree") and "entries" not in leaf.note


def test_a_spread_out_bug_gives_examples_from_its_leaf(mlp):
    def corrupt(g):
        g = [dict(x) for x in g]
        g[0]["w"] = 1.05 * g[0]["w"]
        return g

    bad = zoo.corrupt_gradient(mlp.fn, corrupt)
    report = jc.check_grads(bad, mlp.params, *mlp.args, mode="directional")
    assert report.verdict is jc.Verdict.WRONG
    assert report.worst and {c.path for c in report.worst} == {"[0]['w']"}
    assert all(
        c.numerical == pytest.approx(c.analytic / 1.05, rel=1e-6) for c in report.worst
    )


def test_directions_are_reproducible_from_the_seed(mlp):
    a = jc.check_grads(mlp.fn, mlp.params, *mlp.args, mode="directional", seed=3)
    b = jc.check_grads(mlp.fn, mlp.params, *mlp.args, mode="directional", seed=3)
    c = jc.check_grads(mlp.fn, mlp.params, *mlp.args, mode="directional", seed=4)
    assert [d.to_dict() for d in a.directions] == [d.to_dict() for d in b.directions]
    assert [d.seed for d in a.directions] != [d.seed for d in c.directions]


def test_direction_probes_measure_the_directional_derivative():
    """The engine's projection is ⟨g, Δ⟩ for the displacement it made."""
    with jax.enable_x64(True):
        w = jnp.linspace(-1.0, 1.0, 10)
        problem = build(
            lambda w: jnp.sum(w**3),
            w,
            (),
            key=None,
            argnums=0,
            has_aux=False,
            measure_dtype=np.dtype(np.float64),
        )
        engine = Engine(problem)
        _, _, g = engine.value_and_grad()
        f, proj, norm, base = engine.evaluate_directions(
            np.array([2, 2]),
            np.array([6, 6]),
            np.array([7, 7]),
            np.array([1e-3, -1e-3]),
        )
        expected_base = float(jnp.sum(w**3))
    assert norm == pytest.approx([1e-3, 1e-3])
    assert base == pytest.approx([expected_base] * 2)
    # A ±1/2 direction on entries 2..5: the centered difference matches ⟨g, v⟩.
    fd = (f[0] - f[1]) / (norm[0] + norm[1])
    analytic = (proj[0] - proj[1]) / (norm[0] + norm[1])
    assert fd == pytest.approx(analytic, rel=1e-6)
    assert abs(analytic) <= np.linalg.norm(g[2:6])


def test_sample_mode_covers_every_leaf_by_size(mlp):
    report = jc.check_grads(mlp.fn, mlp.params, *mlp.args, mode="sample", samples=300)
    assert report.passed and report.mode == "sample"
    checked = {leaf.path: leaf.checked for leaf in report.leaves}
    sizes = {leaf.path: leaf.size for leaf in report.leaves}
    assert all(checked[p] >= min(8, sizes[p]) for p in sizes)
    assert checked["[0]['w']"] > checked["[2]['w']"] > checked["[2]['b']"]
    assert 250 <= report.checked <= 350
    assert report.checked < report.size


def test_sample_mode_catches_a_leaf_wide_bug(mlp):
    def corrupt(g):
        g = [dict(x) for x in g]
        g[2]["b"] = -g[2]["b"]
        return g

    bad = zoo.corrupt_gradient(mlp.fn, corrupt)
    report = jc.check_grads(bad, mlp.params, *mlp.args, mode="sample", samples=100)
    assert report.verdict is jc.Verdict.WRONG
    assert report.worst[0].path == "[2]['b']"


def test_auto_is_full_when_affordable_and_says_why_when_not(mlp):
    full = jc.check_grads(mlp.fn, mlp.params, *mlp.args)
    assert full.mode == "full" and full.checked == full.size and not full.notes

    bad = _one_entry_bug(mlp, layer=1, index=(37, 5))
    scaled = jc.check_grads(
        bad, mlp.params, *mlp.args, max_evaluations=1000, samples=200
    )
    assert scaled.mode == "directional+sample"
    assert any("max_evaluations=1,000" in note for note in scaled.notes)
    assert scaled.verdict is jc.Verdict.WRONG
    assert (scaled.worst[0].path, scaled.worst[0].index) == ("[1]['w']", (37, 5))


def test_auto_fits_the_sample_to_the_time_budget(mlp):
    report = jc.check_grads(
        mlp.fn, mlp.params, *mlp.args, max_evaluations=100, time_budget=1e-3
    )
    assert report.passed
    # Nothing fits in a millisecond: every leaf still gets its minimum of 8.
    assert all(leaf.checked >= min(8, leaf.size) for leaf in report.leaves)
    assert report.checked < 100 < jc.check.DEFAULT_SAMPLES
    assert any("time_budget" in note for note in report.notes)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"samples": 0}, "samples must be a positive integer"),
        ({"directions": -1}, "directions must be a positive integer"),
        ({"time_budget": 0}, "time_budget must be a positive number"),
        ({"mode": "fast"}, "mode must be one of"),
    ],
)
def test_mode_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jc.check_grads(lambda w: jnp.sum(w**2), jnp.ones(3), **kwargs)


def test_one_compilation_per_leaf_shape_in_a_deep_net():
    ex = models.deep_mlp(depth=20, width=16, n_out=3)  # above the merge size
    traces = []

    def loss(p, x, y):
        traces.append(1)
        return ex.fn(p, x, y)

    report = jc.check_grads(loss, ex.params, *ex.args, mode="full")
    assert report.passed and len(report.leaves) == 42
    shapes = {leaf.shape for leaf in report.leaves}
    assert len(shapes) == 4  # (16, 16), (16,), (16, 3), (3,)
    # One trace for the gradient, one per leaf shape, however many leaves.
    assert len(traces) == 1 + len(shapes)


def test_the_memory_budget_bounds_each_chunk():
    with jax.enable_x64(True):
        w = jnp.ones((64, 64))
        problem = build(
            lambda p: jnp.sum(jnp.tanh(p["a"] @ p["b"])),
            {"a": w, "b": w},
            (),
            key=None,
            argnums=0,
            has_aux=False,
            measure_dtype=np.dtype(np.float64),
        )
        leaf_bytes = 64 * 64 * 8
        roomy = Engine(problem, memory_budget=1 << 30)
        tight = Engine(problem, memory_budget=4 * leaf_bytes)
        for engine in (roomy, tight):
            engine.value_and_grad()
            engine.evaluate(np.array([0, 4096]), np.zeros(2))
    # Same-shape leaves share a group while it fits in an eighth of the budget.
    assert len(roomy._groups) == 1 and len(tight._groups) == 2
    for group in tight._groups:
        assert group.batch["coordinate"] * group.vector.nbytes <= 4 * leaf_bytes


def test_a_tight_budget_gives_the_same_verdict(mlp):
    bad = _one_entry_bug(mlp, layer=1, index=(3, 4))
    roomy = jc.check_grads(bad, mlp.params, *mlp.args)
    tight = jc.check_grads(bad, mlp.params, *mlp.args, memory_budget=1 << 16)
    assert tight.verdict is roomy.verdict is jc.Verdict.WRONG
    assert tight.worst[0].index == roomy.worst[0].index == (3, 4)


def test_coordinates_in_blocks_give_the_same_report(mlp, monkeypatch):
    """A full check is probed in blocks of coordinates to bound host memory."""
    from jaxcheck import finite_diff, probes

    bad = _one_entry_bug(mlp, layer=1, index=(3, 4))
    whole = jc.check_grads(bad, mlp.params, *mlp.args, mode="full")
    bars = []

    class Progress(finite_diff._Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(finite_diff, "_Progress", Progress)
    monkeypatch.setattr(probes, "COORDINATE_BLOCK", 97)
    blocked = jc.check_grads(bad, mlp.params, *mlp.args, mode="full", progress=False)
    assert blocked.verdict is whole.verdict is jc.Verdict.WRONG
    assert blocked.worst[0].index == whole.worst[0].index == (3, 4)
    assert blocked.checked == whole.checked == mlp.size
    assert blocked.relative_error == pytest.approx(whole.relative_error, rel=1e-9)
    for a, b in zip(blocked.leaves, whole.leaves, strict=True):
        assert (a.path, a.verdict, a.disagreeing) == (b.path, b.verdict, b.disagreeing)
    # One progress bar over every block, not one per block.
    assert len(bars) == 1 and bars[0].total == 2 * mlp.size


def test_progress_bar_only_when_asked(capfd, mlp):
    jc.check_grads(mlp.fn, mlp.params, *mlp.args, progress=False)
    assert "jaxcheck" not in capfd.readouterr().err
    jc.check_grads(mlp.fn, mlp.params, *mlp.args, progress=True)
    assert "jaxcheck" in capfd.readouterr().err


_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, jax
    import jaxcheck as jc
    from jaxcheck import models
    from tests.test_modes import _one_entry_bug
    out = {"devices": len(jax.devices())}
    ex = models.mlp_classifier((8, 16, 4), batch=8, dropout_rate=0.2)
    for mode in ("full", "directional"):
        r = jc.check_grads(ex.fn, ex.params, *ex.args, mode=mode, key=ex.key)
        out[mode] = r.to_dict()
    plain = models.mlp_classifier((8, 16, 4), batch=8)
    bad = _one_entry_bug(plain, layer=0, index=(3, 5), factor=1.1)
    out["bad"] = jc.check_grads(bad, plain.params, *plain.args, mode="directional").to_dict()
    print(json.dumps(out))
    """
)


def _run_devices(count):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    done = subprocess.run(
        [sys.executable, "-c", _DEVICE_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_several_devices_give_the_single_device_results():
    one, four = _run_devices(1), _run_devices(4)
    assert (one["devices"], four["devices"]) == (1, 4)
    for name in ("full", "directional", "bad"):
        a, b = one[name], four[name]
        assert a["verdict"] == b["verdict"]
        assert a["evaluations"] == b["evaluations"]
        assert a["relative_error"] == pytest.approx(
            b["relative_error"], rel=0.5, abs=1e-9
        )
        assert sorted(d["seed"] for d in a["directions"]) == sorted(
            d["seed"] for d in b["directions"]
        )
    assert one["bad"]["verdict"] == "wrong"
    assert one["bad"]["worst"][0]["index"] == four["bad"]["worst"][0]["index"] == [3, 5]

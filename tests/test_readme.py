"""The README's examples run as written and do what the README says."""

from __future__ import annotations

import contextlib
import io

import jax.numpy as jnp

from tests.readme import python_block


def _run(heading: str) -> tuple[dict, str]:
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(python_block(heading), namespace)
    return namespace, out.getvalue()


def test_the_ten_line_example_passes_with_dropout_on():
    namespace, printed = _run("In ten lines")
    report = namespace["report"]
    assert report.passed and report.mode == "full"
    assert {leaf.path for leaf in report.leaves} == {"['w1']", "['b1']", "['w2']"}
    assert printed.startswith("jaxcheck: CORRECT")


def test_the_gradient_health_example_finds_the_vanishing_network():
    namespace, printed = _run("Gradient health")
    assert "Gradient health: VANISHING" in printed
    assert "Backpropagated signal through 150 layers" in printed
    diagnosis = namespace["flow"].diagnose(
        namespace["loss"], namespace["params"], jnp.ones((8, 16))
    )
    assert diagnosis.verdict == "vanishing" and 1e-17 < diagnosis.ratio < 1e-14

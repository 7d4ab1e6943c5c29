"""What pytest prints when ``assert_grads`` (or ``assert report.passed``) fails."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxcheck as jc
from tests import readme

WRONG_TESTS = """

import jax


@jax.custom_vjp
def square(x):
    return x**2


square.defvjp(lambda x: (x**2, x), lambda x, g: (3 * x * g,))


def wrong_loss(params, x):
    return jnp.sum(square(x @ params["w"]))


def test_wrong_gradient():
    def loss(params, x):
        return jnp.sum(square(x @ params["w"]))

    jc.assert_grads(loss, {"w": jnp.full((3, 2), 0.1)}, jnp.ones((4, 3)))


def test_plain_assert():
    report = jc.check_grads(wrong_loss, {"w": jnp.full((3, 2), 0.1)}, jnp.ones((4, 3)))
    assert report.passed
"""


def test_readme_pattern_and_failure_output(tmp_path):
    text = readme.section("In a test suite")
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.DOTALL)
    example = next(code for lang, code in blocks if lang == "python")
    shown = next(code for lang, code in blocks if lang == "")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_example.py").write_text(example + WRONG_TESTS)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rN"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout
    assert "2 failed, 2 passed" in out, out
    # The README's excerpt is what pytest prints (the resolution column aside).
    lines = [line.rstrip() for line in out.splitlines()]
    for line in shown.splitlines():
        if line == "..." or "scaled by 1.5" in line:
            continue
        assert line.rstrip() in lines, line
    # The failure is shown at the test's line, without the frame of
    # assert_grads and the parameter arrays it was called with.
    assert "jaxcheck/check.py" not in out and "params = " not in out
    assert "Array(" not in out
    # A plain assert on a report prints its one-line repr.
    assert (
        "where False = GradCheckReport(WRONG, relative error 2.00e-01, 6 of 6 "
        "coordinates, mode full, worst at ['w'][0, 1]).passed" in out
    )
    assert "LeafReport(" not in out


def test_summary_and_repr_name_the_worst_entry():
    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, g: (-2 * g,))

    def loss(w):
        return jnp.sum(jnp.sin(double(w)))

    with pytest.raises(jc.GradCheckError) as info:
        jc.assert_grads(loss, jnp.linspace(0.0, 1.0, 3))
    report = info.value.report
    first, rest = str(info.value).split("\n", 1)
    assert first == report.summary() and rest == str(report)
    worst = report.worst[0]
    assert first.startswith(f"WRONG (relative error 1.00e+00) at {worst.location}: ")
    assert f"analytic {worst.analytic:+.6e}" in first
    assert "\n" not in repr(report)
    assert repr(report).endswith(f"mode full, worst at {worst.location})")

"""``jaxcheck check FILE.py:FACTORY``: reports, JSON, exit status and errors."""

import json
import subprocess
import sys

import pytest

from jaxcheck.cli import main

FACTORIES = """
import jax
import jax.numpy as jnp


def loss(params, x):
    return jnp.sum(jnp.tanh(x @ params["w"] + params["b"]) ** 2)


def data():
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.zeros(4)}
    return params, jnp.linspace(0.0, 1.0, 6).reshape(2, 3)


def good():
    params, x = data()
    return {"fn": loss, "params": params, "args": (x,)}


@jax.custom_vjp
def wrong_entry(w):
    return w


wrong_entry.defvjp(lambda w: (w, None), lambda _, g: (g.at[2, 1].multiply(-1.0),))


def wrong():
    params, x = data()
    return lambda p, x: loss({**p, "w": wrong_entry(p["w"])}, x), params, (x,)


def broken():
    raise RuntimeError("the data set is not downloaded")


def not_a_model():
    return 3


def nothing_to_check():
    return lambda n: jnp.sum(jnp.arange(n) * 1.0), 3
"""


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "models.py"
    path.write_text(FACTORIES)
    return path


def test_passing_check_prints_the_table(factories, capsys):
    assert main(["check", f"{factories}:good"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("jaxcheck: CORRECT")
    assert "['w']" in out and "['b']" in out


def test_json_with_mode_seed_and_eps(factories, capsys):
    argv = ["check", f"{factories}:good", "--json", "--mode", "sample"]
    assert main([*argv, "--seed", "3", "--eps", "1e-6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"verdict", "passed", "leaves", "worst", "unchecked", "mode"} <= set(report)
    assert report["passed"] is True and report["verdict"] == "correct"
    assert report["mode"] == "sample" and report["step_rule"] == "absolute"
    assert report["eps"] == pytest.approx(1e-6)
    assert [leaf["path"] for leaf in report["leaves"]] == ["['b']", "['w']"]


def test_wrong_gradient_exits_1_and_names_the_leaf(factories, capsys):
    assert main(["check", f"{factories}:wrong", "--json", "--mode", "full"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and report["verdict"] == "wrong"
    assert (report["worst"][0]["path"], report["worst"][0]["index"]) == (
        "['w']",
        [2, 1],
    )
    failing = [
        leaf["path"] for leaf in report["leaves"] if leaf["verdict"] != "correct"
    ]
    assert failing == ["['w']"]


@pytest.mark.parametrize(
    "target, extra, message",
    [
        ("no-colon", [], "expected FILE.py:FACTORY"),
        ("missing.py:good", [], "no such file: missing.py"),
        ("{file}:absent", [], "has no callable named 'absent'; callables defined"),
        ("{file}:broken", [], "raised RuntimeError: the data set is not downloaded"),
        ("{file}:not_a_model", [], "the factory must return a jaxcheck.models"),
        ("{file}:nothing_to_check", [], "cannot check"),
        ("{file}:good", ["--eps", "-1"], "eps must be a positive, finite step"),
    ],
)
def test_usage_errors_exit_2(factories, capsys, target, extra, message):
    assert main(["check", target.format(file=factories), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "jaxcheck: error: " in captured.err and message in captured.err


def test_bad_mode_is_rejected_by_the_parser(factories, capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", f"{factories}:good", "--mode", "fast"])
    assert info.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_python_dash_m_exit_status(factories):
    run = subprocess.run(
        [sys.executable, "-m", "jaxcheck", "check", f"{factories}:wrong"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert run.stdout.startswith("jaxcheck: WRONG")
    assert "['w'][2, 1]" in run.stdout

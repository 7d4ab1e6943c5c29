"""The command line: ``jaxcheck demo`` and ``jaxcheck check FILE.py:FACTORY``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxcheck import flow, models
from jaxcheck.check import MODES, check_grads
from jaxcheck.models import Example


def _rule(title: str) -> str:
    return f"\n{'=' * 78}\n{title}\n{'=' * 78}"


def demo(out=sys.stdout) -> int:
    """Checks the built-in models and prints what jaxcheck finds."""
    cases = [
        (
            models.mlp_classifier(dropout_rate=0.1),
            "A correct gradient: an MLP with dropout switched on. The same key "
            "drives the analytic gradient and every ±ε evaluation, so dropout's "
            "own backward pass is checked too.",
        ),
        (
            models.buggy_layer("transposed"),
            "A wrong gradient: a custom_vjp dense layer whose backward pass "
            "returns the weight gradient transposed. The report names the leaf "
            "and the entries.",
        ),
        (
            models.buggy_layer("one_entry"),
            "A subtler bug: one entry of a weight gradient is 10% off. The leaf's "
            "overall error is small, but that coordinate is confirmed at two step "
            "sizes and located.",
        ),
    ]
    large = models.with_wrong_entry(
        models.mlp_classifier((512, 1024, 512, 10), batch=16), 1, (300, 77)
    )
    cases.append(
        (
            large,
            "A large model, one wrong entry among a million: directional mode checks "
            "a few random directions per leaf (2 evaluations each, not 2 per "
            "parameter), then bisects the failing leaf down to the entry.",
            {"mode": "directional"},
        )
    )
    for example, story, *options in cases:
        print(_rule(f"{example.name} ({example.size:,} parameters)"), file=out)
        print(story, file=out)
        print(file=out)
        kwargs = {**example.check_kwargs(), **(options[0] if options else {})}
        report = check_grads(example.fn, example.params, *example.args, **kwargs)
        print(report, file=out)

    print(_rule("Gradient health: 150 layers, one row per initialisation"), file=out)
    print(
        "Right is not the same as healthy. For freshly initialised 150-layer "
        "networks, the ratio of the backpropagated signal at the input to the "
        "one at the output, for three seeds, beside the mean-field prediction. "
        "The weight-gradient column shows why looking only at weight gradients "
        "misses the effect in linear nets.",
        file=out,
    )
    print(file=out)
    print(flow.seed_experiment(), file=out)
    return 0


class UsageError(Exception):
    """A command line that cannot be carried out; exit status 2."""


def _load_factory(spec: str):
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UsageError(
            f"expected FILE.py:FACTORY (for example models.py:make_loss); got {spec!r}"
        )
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"no such file: {file} (from {spec!r})")
    module_spec = importlib.util.spec_from_file_location(file.stem, file)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"{file} cannot be imported as a Python module; give a .py")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(file.resolve().parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        traceback.print_exc()
        raise UsageError(
            f"importing {file} raised {type(error).__name__}: {error}"
        ) from error
    finally:
        sys.path.pop(0)
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(
            k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
        )
        raise UsageError(
            f"{file} has no callable named {name!r}; callables defined there: "
            f"{', '.join(found) or 'none'}"
        )
    return factory


_SHAPES = (
    "a jaxcheck.models.Example, a dict with fn and params (and optionally args, "
    "key), or a tuple (fn, params, args)"
)


def _as_example(made: Any) -> Example:
    if isinstance(made, Example):
        return made
    if isinstance(made, dict):
        missing = [k for k in ("fn", "params") if k not in made]
        if missing:
            raise UsageError(
                f"the factory returned a dict without {' and '.join(missing)}; "
                f"it must return {_SHAPES}"
            )
        return Example(
            name=made.get("name", "model"),
            fn=made["fn"],
            params=made["params"],
            args=tuple(made.get("args", ())),
            key=made.get("key"),
        )
    if isinstance(made, tuple) and len(made) >= 2:
        fn, params, *rest = made
        args = tuple(rest[0]) if rest else ()
        return Example(name="model", fn=fn, params=params, args=args)
    raise UsageError(f"the factory must return {_SHAPES}; got {type(made).__name__}")


def check(
    spec: str,
    as_json: bool = False,
    out=None,
    *,
    mode: str = "auto",
    eps: float | None = None,
    seed: int = 0,
) -> int:
    """Checks the model a factory in a file returns.

    Args:
        spec: ``FILE.py:FACTORY``; ``FACTORY()`` returns the loss to check (see
            ``jaxcheck check --help``).
        as_json: print the report as JSON instead of the table.
        out: where the report goes; None is ``sys.stdout``.
        mode: the ``mode`` of ``check_grads``.
        eps: the ``eps`` of ``check_grads``; None chooses the step.
        seed: the ``seed`` of ``check_grads`` (sampling and directions).

    Returns:
        0 when the check passes, 1 when it does not.

    Raises:
        UsageError: the spec, the file, the factory or what it returned cannot
            be used, or ``check_grads`` refused the loss.

    Example:
        >>> import io, pathlib, tempfile
        >>> from jaxcheck.cli import check
        >>> source = "import jax.numpy as jnp\\n\\ndef make():\\n"
        >>> source += "    return lambda w: jnp.sum(w ** 2), jnp.ones(3)\\n"
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     file = pathlib.Path(folder) / "model.py"
        ...     _ = file.write_text(source)
        ...     check(f"{file}:make", as_json=True, out=io.StringIO())
        0
    """
    factory = _load_factory(spec)
    try:
        made = factory()
    except Exception as error:
        traceback.print_exc()
        raise UsageError(
            f"the factory {spec} raised {type(error).__name__}: {error}"
        ) from error
    example = _as_example(made)
    out = sys.stdout if out is None else out
    try:
        report = check_grads(
            example.fn,
            example.params,
            *example.args,
            **example.check_kwargs(),
            mode=mode,
            eps=eps,
            seed=seed,
        )
    except (TypeError, ValueError, FloatingPointError) as error:
        raise UsageError(f"cannot check {spec}: {error}") from error
    if as_json:
        json.dump(report.to_dict(), out, indent=2)
        print(file=out)
    else:
        print(report, file=out)
    return 0 if report.passed else 1


_CHECK_HELP = """\
FACTORY is a function of no arguments in FILE.py that returns the loss to
check: a jaxcheck.models.Example, a dict {"fn": ..., "params": ..., "args":
(...), "key": ...} (args and key optional), or a tuple (fn, params, args).

exit status: 0 when the check passes, 1 when it does not, 2 when the command
cannot be carried out (bad FILE.py:FACTORY, missing file, a factory that
raises, a loss that cannot be checked).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status.

    Example:
        >>> from jaxcheck.cli import main
        >>> main(["check", "no/such/file.py:make"])  # the message goes to stderr
        2
    """
    parser = argparse.ArgumentParser(
        prog="jaxcheck",
        description="Check that JAX gradients are right, and healthy.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="check the built-in models and print the reports")
    p_check = sub.add_parser(
        "check",
        help="check the model returned by FACTORY in FILE.py",
        description="Check the gradient of the loss that FACTORY in FILE.py returns.",
        epilog=_CHECK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_check.add_argument("target", metavar="FILE.py:FACTORY")
    p_check.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="what to check: every coordinate (full), a sample, random "
        "directions, or auto (full when affordable); default auto",
    )
    p_check.add_argument(
        "--eps",
        type=float,
        default=None,
        help="finite-difference step; default: chosen per coordinate",
    )
    p_check.add_argument(
        "--seed", type=int, default=0, help="seed of sampling and directions"
    )
    p_check.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    try:
        return check(
            args.target, args.json, mode=args.mode, eps=args.eps, seed=args.seed
        )
    except UsageError as error:
        print(f"jaxcheck: error: {error}", file=sys.stderr)
        return 2

"""The command line: ``jaxcheck demo`` and ``jaxcheck check FILE.py:FACTORY``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxcheck import flow, models
from jaxcheck.check import check_grads
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


def _load_factory(spec: str):
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise SystemExit(
            f"expected FILE.py:FACTORY (for example models.py:make_loss); got {spec!r}"
        )
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"no such file: {file}")
    module_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(file.resolve().parent))
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise SystemExit(f"{file} has no callable named {name!r}")
    return factory


def _as_example(made: Any) -> Example:
    if isinstance(made, Example):
        return made
    if isinstance(made, dict):
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
    raise SystemExit(
        "the factory must return a jaxcheck.models.Example, a dict with fn, params "
        "(and optionally args, key), or a tuple (fn, params, args); got "
        f"{type(made).__name__}"
    )


def check(spec: str, as_json: bool, out=sys.stdout) -> int:
    """Checks the model a factory in a file returns; exit 0 when it passes."""
    example = _as_example(_load_factory(spec)())
    report = check_grads(
        example.fn, example.params, *example.args, **example.check_kwargs()
    )
    if as_json:
        json.dump(report.to_dict(), out, indent=2)
        print(file=out)
    else:
        print(report, file=out)
    return 0 if report.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jaxcheck",
        description="Check that JAX gradients are right, and healthy.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="check the built-in models and print the reports")
    p_check = sub.add_parser(
        "check", help="check the model returned by FACTORY in FILE.py"
    )
    p_check.add_argument("target", metavar="FILE.py:FACTORY")
    p_check.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return check(args.target, args.json)

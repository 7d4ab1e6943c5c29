"""The demonstration the README's first set-up command runs."""

from __future__ import annotations

import io

from jaxcheck import cli


def test_demo_shows_passing_and_failing_reports_and_the_depth_table():
    out = io.StringIO()
    assert cli.demo(out) == 0
    text = out.getvalue()

    assert "jaxcheck: CORRECT" in text
    assert text.count("jaxcheck: WRONG") >= 2
    # The one-entry bug in the million-parameter model is located to its entry.
    assert "[1]['w'][300, 77]" in text
    # The depth table has one row per scheme, with the expected verdicts.
    rows = {
        line.split("  ")[1].strip(): line.split()[-1]
        for line in text.splitlines()
        if line.startswith("  ")
        and line.split()[-1] in {"healthy", "vanishing", "exploding"}
    }
    assert rows["linear, gain 1.1"] == "exploding"
    assert rows["linear, gain 0.9"] == "vanishing"
    assert rows["tanh, LeCun"] == "healthy"
    assert rows["ReLU, He"] == "healthy"
    assert rows["ReLU, LeCun"] == "vanishing"
    assert "1.62e+06" in text and "1.37e-07" in text  # 1.1**150 and 0.9**150

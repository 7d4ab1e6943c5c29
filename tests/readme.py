"""Reading the README's code blocks, so that tests can run them as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section(heading: str) -> str:
    """The text under ``## heading``, up to the next second-level heading."""
    return README.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def python_block(heading: str) -> str:
    """The first python code block under ``## heading``."""
    return re.search(r"```python\n(.*?)```", section(heading), re.DOTALL).group(1)

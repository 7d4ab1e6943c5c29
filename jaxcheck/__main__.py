"""``python -m jaxcheck``: the command line."""

from jaxcheck.cli import main

raise SystemExit(main())

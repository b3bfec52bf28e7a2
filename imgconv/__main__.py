"""``python -m imgconv``: the command line (see :mod:`imgconv.cli`)."""
from .cli import main

raise SystemExit(main())

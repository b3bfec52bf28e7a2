"""``python -m imgconv.bench``: the same as ``python -m imgconv bench``."""
import sys

from ..cli import main

raise SystemExit(main(["bench", *sys.argv[1:]]))

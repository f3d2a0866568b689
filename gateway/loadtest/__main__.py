"""``python -m gateway.loadtest ARGS`` is ``gateway loadtest ARGS``."""

import sys

from gateway.loadtest.cli import main

raise SystemExit(main(sys.argv[1:]))

"""``python -m gateway.loadtest ARGS`` is ``gateway loadtest ARGS``."""

import sys

from gateway.loadtest import require_extra

if (problem := require_extra()) is not None:
    print(problem, file=sys.stderr)
    raise SystemExit(2)

from gateway.loadtest.cli import main  # noqa: E402

raise SystemExit(main(sys.argv[1:]))

"""``python -m gateway`` is the ``gateway`` CLI."""

from gateway.cli import main

raise SystemExit(main())

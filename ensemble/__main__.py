"""``python -m ensemble``: the same as the ``blur-detect`` command."""
from .cli import main

raise SystemExit(main())

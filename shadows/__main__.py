"""``python -m shadows``: the ``shadows`` command (see :mod:`shadows.cli`)."""

import sys

from .cli import main

sys.exit(main())

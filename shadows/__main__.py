"""``python -m shadows``: the ``shadows`` command (see :mod:`shadows.cli`)."""

import sys

from shadows.cli import main

sys.exit(main())

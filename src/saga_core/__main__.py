"""``python -m saga_core``: the ``saga`` command."""

import sys

from ._cli import main

sys.exit(main())

"""``python -m uca_model <command> ...`` -- the same as the ``uca`` console script."""

import sys

from .cli import main

sys.exit(main())

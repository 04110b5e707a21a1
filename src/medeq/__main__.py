"""``python -m medeq``: the same as the ``medeq`` command."""

import sys

from .cli import main

sys.exit(main())

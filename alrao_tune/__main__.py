"""``python -m alrao_tune``: the ``alrao-tune`` command line."""

import sys

from alrao_tune.cli import main

sys.exit(main())

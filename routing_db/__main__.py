"""``python -m routing_db`` is the ``routing-db`` command."""

import sys

from ._cli import main

sys.exit(main())

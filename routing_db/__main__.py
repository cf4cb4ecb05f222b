"""``python -m routing_db`` is the ``routing-db`` command."""

import sys

from ._cli.main import main

sys.exit(main())

"""``python -m vlmd``: the same as the ``vlmd`` command."""

import sys

from vlmd.cli.main import main

sys.exit(main())

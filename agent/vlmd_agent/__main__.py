"""``python -m vlmd_agent``: the same as ``vlmd-agent``."""

import sys

from vlmd_agent.cli import main

if __name__ == "__main__":
    sys.exit(main())

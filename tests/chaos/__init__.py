"""Chaos: runs survive `kill -9` of vlmd, of their agents and wrappers, and lose nothing.

`python -m tests.chaos --folder DIR --json FILE [options]` does the chaos in a child process of
its own (it must be the child subreaper of the agents a killed vlmd leaves) and writes a
`Record` of what it did and found; `tests/test_chaos.py` asserts each property of that record,
and `scripts/chaos` is the command that runs those tests with its options.
"""

from tests.chaos.options import Options as Options
from tests.chaos.options import add_options as add_options
from tests.chaos.options import parse_options as parse_options
from tests.chaos.record import FAULT_KINDS as FAULT_KINDS
from tests.chaos.record import Record as Record
from tests.chaos.record import RunRecord as RunRecord

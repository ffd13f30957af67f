"""vlmd: evaluate vision-language models and record what every answer cost, live.

The public face of the package; everything else is an implementation detail.
"""

from vlmd.config import Config as Config
from vlmd.config import ConfigError as ConfigError
from vlmd.daemon.serve import Daemon as Daemon
from vlmd.daemon.serve import serve as serve
from vlmd.live.feed import Feed as Feed
from vlmd.live.state import Live as Live
from vlmd.projections.summary import summarize as summarize
from vlmd.projections.tracker import Tracker as Tracker
from vlmd.store.log import Appended as Appended
from vlmd.store.log import Event as Event
from vlmd.store.log import EventLog as EventLog

__version__ = "0.1.0"
